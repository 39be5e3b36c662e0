"""Unit tests for the pure rules of the WebSocket bridge."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidMessage,
    InvalidStatus,
    InvalidUpgrade,
)
from websockets.frames import Close
from websockets.http11 import Response

from gateway.proxy.forwarding import ForwardingOptions
from gateway.proxy.websocket import WebSocketProxy
from gateway.proxy.websocket_rules import (
    accept_headers,
    backend_target,
    handshake_headers,
    is_websocket_upgrade,
    map_backend_error,
    relay_client_close,
    utf8_size,
    wire_max_size,
)


def scope(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "websocket",
        "scheme": "wss",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("203.0.113.7", 50000),
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"upgrade", b"websocket"), (b"connection", b"Upgrade")], True),
        ([(b"Upgrade", b"WebSocket"), (b"Connection", b"keep-alive, upgrade")], True),
        ([(b"upgrade", b"h2c, websocket"), (b"connection", b"upgrade")], True),
        ([(b"upgrade", b"h2c"), (b"connection", b"Upgrade")], False),
        ([(b"upgrade", b"websocket")], False),
        ([(b"connection", b"upgrade")], False),
        ([], False),
    ],
)
def test_only_websocket_upgrades_are_recognised(
    headers: list[tuple[bytes, bytes]], expected: bool
) -> None:
    assert is_websocket_upgrade(headers) is expected


@pytest.mark.parametrize(
    ("overrides", "base", "expected"),
    [
        ({}, b"", "/ws"),
        ({"query_string": b"a=1&a=2&t=%20"}, b"", "/ws?a=1&a=2&t=%20"),
        ({"raw_path": b"/x;p=1/%2F..%2f"}, b"", "/x;p=1/%2F..%2f"),
        ({"raw_path": b"/pub/ws", "path": "/pub/ws", "root_path": "/pub"}, b"", "/ws"),
        ({"raw_path": b"/pub", "path": "/pub", "root_path": "/pub"}, b"/base", "/base/"),
        ({"raw_path": b"/ws"}, b"/base/", "/base/ws"),
        ({"raw_path": None, "path": "/caf\u00e9 x"}, b"", "/caf%C3%A9%20x"),
    ],
)
def test_backend_target_keeps_the_raw_path_below_the_mount(
    overrides: dict[str, Any], base: bytes, expected: str
) -> None:
    assert backend_target(scope(**overrides), base) == expected


@pytest.mark.parametrize("raw_path", [b"/a b", b"/a\r\nX-Evil: 1", b"/\x7f"])
def test_backend_target_refuses_bytes_that_would_break_the_request_line(raw_path: bytes) -> None:
    with pytest.raises(ValueError, match="request line"):
        backend_target(scope(raw_path=raw_path))


def test_handshake_headers_drop_per_leg_headers_and_add_forwarding() -> None:
    incoming = [
        (b"Host", b"public.example:8443"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Sec-WebSocket-Key", b"abc"),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
        (b"Sec-WebSocket-Protocol", b"chat"),
        (b"Cookie", b"sid=1"),
        (b"Authorization", b"Bearer t"),
        (b"Origin", b"https://public.example:8443"),
        (b"User-Agent", b"browser"),
        (b"X-Forwarded-For", b"6.6.6.6"),
    ]
    headers = dict(
        handshake_headers(
            scope(headers=incoming), upstream_host=b"backend:8080", options=ForwardingOptions()
        )
    )
    assert headers == {
        b"host": b"public.example:8443",
        b"cookie": b"sid=1",
        b"authorization": b"Bearer t",
        b"origin": b"https://public.example:8443",
        b"user-agent": b"browser",
        b"x-forwarded-for": b"203.0.113.7",
        b"x-real-ip": b"203.0.113.7",
        b"x-forwarded-proto": b"https",
        b"x-forwarded-host": b"public.example:8443",
    }


def test_handshake_headers_can_replace_host() -> None:
    headers = handshake_headers(
        scope(headers=[(b"host", b"public.example")]),
        upstream_host=b"backend:8080",
        options=ForwardingOptions(host="internal.example"),
    )
    assert (b"host", b"internal.example") in headers


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (1000, "bye", (1000, "bye")),
        (1001, "", (1001, "")),
        (1009, "too big", (1009, "too big")),
        (1012, "", (1012, "")),
        (4000, "app", (4000, "app")),
        (4999, "app", (4999, "app")),
        (1005, "", (1000, "")),
        (1006, "", (1001, "client went away")),
        (1015, "", (1001, "client went away")),
    ],
)
def test_client_close_codes_relayed_and_non_wire_codes_mapped(
    code: int, reason: str, expected: tuple[int, str]
) -> None:
    assert relay_client_close(code, reason) == expected


@pytest.mark.parametrize(
    ("exc", "close"),
    [
        (ConnectionClosedOK(Close(1000, "bye"), Close(1000, "bye"), True), (1000, "bye")),
        (ConnectionClosedError(Close(4000, "app"), Close(4000, "app"), True), (4000, "app")),
        (ConnectionClosedOK(Close(1005, ""), None), (1000, "")),
        (ConnectionClosedError(None, None), (1011, "backend connection lost")),
        (ConnectionClosedError(None, Close(1011, "ping")), (1011, "backend connection lost")),
        (ConnectionClosedError(Close(1009, ""), Close(1009, ""), False), (1009, "message too big")),
        (ConnectionClosedError(None, Close(1002, "bad frame")), (1014, "bad gateway")),
        (ConnectionClosedError(None, Close(1007, "bad utf-8")), (1014, "bad gateway")),
    ],
)  # fmt: skip
def test_backend_close_becomes_a_client_close(exc: Exception, close: tuple[int, str]) -> None:
    failure = map_backend_error(exc)
    assert (failure.close_code, failure.reason) == close
    assert failure.close_code not in (1005, 1006, 1015)


def test_backend_refusal_keeps_status_headers_and_body() -> None:
    response = Response(
        401,
        "Unauthorized",
        Headers(
            [
                ("Content-Type", "application/json"),
                ("WWW-Authenticate", "Bearer"),
                ("Content-Length", "15"),
                ("Connection", "close"),
                ("Date", "Sun, 29 Nov 2026 11:00:00 GMT"),
            ]
        ),
        b'{"error":"no"}\n',
    )
    failure = map_backend_error(InvalidStatus(response))
    assert failure.status == 401
    assert failure.body == b'{"error":"no"}\n'
    assert failure.headers == (
        (b"content-type", b"application/json"),
        (b"www-authenticate", b"Bearer"),
    )


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (TimeoutError("timed out during opening handshake"), 504),
        (ConnectionRefusedError(111, "Connection refused"), 502),
        (OSError("Name or service not known"), 502),
        (InvalidMessage("did not receive a valid HTTP response"), 502),
        (InvalidUpgrade("Upgrade", "h2c"), 502),
        (RuntimeError("anything else"), 502),
    ],
)
def test_backend_handshake_failures_become_gateway_errors(exc: Exception, status: int) -> None:
    failure = map_backend_error(exc)
    assert failure.status == status
    assert failure.headers == ((b"content-type", b"text/plain; charset=utf-8"),)
    assert failure.body.endswith(b"\n")
    assert b"Connection refused" not in failure.body  # details go to the log only


def test_accept_headers_keep_cookies_and_drop_handshake_headers() -> None:
    headers = Headers(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", "xyz"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
            ("Sec-WebSocket-Protocol", "chat"),
            ("Date", "now"),
            ("Server", "backend"),
            ("Set-Cookie", "a=1"),
            ("X-Backend", "7"),
        ]
    )
    assert accept_headers(headers) == [(b"set-cookie", b"a=1"), (b"x-backend", b"7")]


def test_utf8_size_counts_encoded_bytes() -> None:
    assert utf8_size("abc") == 3
    assert utf8_size("é✓") == 5
    assert utf8_size(b"\x00\x01") == 2


def test_wire_max_size_leaves_room_for_deflate_expansion() -> None:
    assert wire_max_size(1024 * 1024) >= 1024 * 1024 + 1024 * 1024 // 100
    assert wire_max_size(1) > 1


@pytest.mark.parametrize(
    ("upstream", "options", "key"),
    [
        ("ftp://backend", {}, "upstream"),
        ("backend:8080", {}, "upstream"),
        ("http://user:pw@backend", {}, "upstream"),
        ("http://backend/?x=1", {}, "upstream"),
        ("http://backend:99999", {}, "upstream"),
        ("http://backend", {"idle_timeout_s": 0}, "idle_timeout_s"),
        ("http://backend", {"open_timeout_s": -1}, "open_timeout_s"),
        ("http://backend", {"ping_interval_s": 0}, "ping_interval_s"),
        ("http://backend", {"max_message_bytes": 0}, "max_message_bytes"),
        ("http://backend", {"max_queue": 0}, "max_queue"),
    ],
)
def test_bad_configuration_names_the_key(upstream: str, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        WebSocketProxy(upstream, **options)


def test_upstream_schemes_and_pings_off() -> None:
    assert repr(WebSocketProxy("https://backend/base/")) == "WebSocketProxy('https://backend/base')"
    WebSocketProxy("ws://backend:8080", ping_interval_s=None, ping_timeout_s=None)
    WebSocketProxy("wss://backend")
