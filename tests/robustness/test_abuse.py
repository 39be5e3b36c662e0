"""Upgrade abuse, open-proxy attempts and path tricks, over raw TLS sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import GatewayFactory, header_values
from tests.proxy.ws_servers import ws_backend
from tests.robustness.helpers import converse, parse_responses, port_of
from tests.servers import Backend, plain_config, raw_server, run_server

pytestmark = pytest.mark.timeout(60)

HOP_BY_HOP = {"upgrade", "connection", "http2-settings", "te", "keep-alive", "proxy-connection"}


@pytest.fixture
async def counting_upstream() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP backend that records every connection (and what it read) and answers nothing."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(b"")
        seen[-1] = await reader.read(65536)

    async with raw_server(handler) as port:
        yield port, seen


# Upgrade: h2c ------------------------------------------------------------------------------


async def test_h2c_upgrade_is_never_forwarded(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    raw, _ = await converse(
        port_of(gateway),
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        client_ssl,
    )
    responses = parse_responses(raw)
    assert [status for status, _, _ in responses] == [200]  # plain HTTP/1.1, never 101
    assert raw.startswith(b"HTTP/1.1 200")
    if backend.requests:
        names = {name for name, _ in backend.requests[0]["headers"]}
        assert not names & HOP_BY_HOP, names


async def test_h2_prior_knowledge_preface_is_refused(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    raw, _ = await converse(
        port_of(gateway),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        client_ssl,
    )
    assert backend.requests == []
    responses = parse_responses(raw)
    assert responses == [] or 400 <= responses[0][0] < 500


async def test_websocket_upgrade_on_http_only_backend_is_not_tunnelled(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """A valid handshake to a backend that speaks no WebSocket: a refusal, never a raw tunnel."""
    raw, _ = await converse(
        port_of(gateway),
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        client_ssl,
    )
    status = parse_responses(raw)[0][0]
    assert status != 101
    assert status >= 400


# WebSocket handshakes refused before any backend is contacted -----------------------------

WS_HEAD = (
    "GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
)
GOOD_KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


@pytest.mark.parametrize(
    ("name", "extra", "statuses"),
    [
        ("bad_key_short", "Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n", {400}),
        (
            "bad_key_not_b64",
            "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!=\r\nSec-WebSocket-Version: 13\r\n",
            {400},
        ),
        ("missing_key", "Sec-WebSocket-Version: 13\r\n", {400}),
        ("two_keys", GOOD_KEY + GOOD_KEY + "Sec-WebSocket-Version: 13\r\n", {400}),
        ("version_8", GOOD_KEY + "Sec-WebSocket-Version: 8\r\n", {400, 426}),
        ("version_missing", GOOD_KEY, {400, 426}),
        ("missing_origin", GOOD_KEY + "Sec-WebSocket-Version: 13\r\n", {403}),
        (
            "cross_site_origin",
            GOOD_KEY + "Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n",
            {403},
        ),
        (
            "lookalike_origin",
            GOOD_KEY
            + "Sec-WebSocket-Version: 13\r\nOrigin: https://localhost.evil.example:{port}\r\n",
            {403},
        ),
        (
            "http_scheme_origin",
            GOOD_KEY + "Sec-WebSocket-Version: 13\r\nOrigin: http://localhost:{port}\r\n",
            {403},
        ),
        ("null_origin", GOOD_KEY + "Sec-WebSocket-Version: 13\r\nOrigin: null\r\n", {403}),
    ],
)
async def test_bad_websocket_handshake_refused_before_backend(
    name: str,
    extra: str,
    statuses: set[int],
    counting_upstream: tuple[int, list[bytes]],
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    upstream_port, seen = counting_upstream
    async with gateway_factory(
        f"http://127.0.0.1:{upstream_port}", origin={"allow_missing": False}
    ) as url:
        port = port_of(url)
        # Sanity: the very same gateway accepts a correct same-origin handshake up to the
        # backend (which answers nothing here, so only the contact is checked).
        head = (WS_HEAD + extra).format(port=port) + "\r\n"
        if name == "missing_origin":
            assert "Origin" not in head
        raw, _ = await converse(port, head.encode(), client_ssl, idle_s=1.0)
    responses = parse_responses(raw)
    assert responses, f"{name}: no answer"
    assert responses[0][0] in statuses, f"{name}: {responses[0][0]} {responses[0][2]!r}"
    assert seen == [], f"{name}: backend contacted"


async def test_same_origin_handshake_reaches_the_backend_when_origin_required(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    """The control case for the refusals above: the same gateway accepts a proper one."""
    from websockets.asyncio.client import connect

    async with ws_backend() as ws, gateway_factory(ws.url, origin={"allow_missing": False}) as url:
        wss = url.replace("https:", "wss:")
        async with connect(f"{wss}/ws", ssl=client_ssl, origin=url) as conn:  # type: ignore[arg-type]
            await conn.send("hi")
            assert await conn.recv() == "hi"
    assert len(ws.handshakes) == 1


# Open proxy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [b"example.com:443", b"127.0.0.1:{backend}", b"localhost:22"],
)
async def test_connect_is_refused_and_never_tunnels(
    target: bytes, gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    target = target.replace(b"{backend}", str(backend.port).encode())
    raw, _ = await converse(
        port_of(gateway),
        b"CONNECT "
        + target
        + b" HTTP/1.1\r\nHost: "
        + target
        + b"\r\n\r\n"
        # If a tunnel opened, this would reach whatever is behind it.
        + b"GET /tunnelled HTTP/1.1\r\nHost: x\r\n\r\n",
        client_ssl,
    )
    responses = parse_responses(raw)
    assert responses, raw[:200]
    assert 400 <= responses[0][0] < 500, raw[:200]
    assert all(r["method"] != "CONNECT" for r in backend.requests), backend.requests
    # A pipelined request after the refusal may be served as an ordinary request on the
    # gateway's own routes (never through a tunnel): it then carries forwarding headers.
    for record in backend.requests:
        assert header_values(record, "x-forwarded-for") == ["127.0.0.1"]


@pytest.fixture
async def two_backends() -> AsyncIterator[tuple[Backend, Backend]]:
    a, b = Backend(), Backend()
    async with run_server(plain_config(a)) as port_a, run_server(plain_config(b)) as port_b:
        a.port, b.port = port_a, port_b
        yield a, b


@pytest.mark.parametrize(
    "target",
    [
        b"http://127.0.0.1:{b}/api/x",
        b"https://evil.example/api/x",
        b"http://169.254.169.254/api/x",
        b"http://127.0.0.1:{b}@evil.example/api/x",
    ],
)
async def test_absolute_form_never_chooses_the_upstream(
    target: bytes,
    two_backends: tuple[Backend, Backend],
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    """Only the path of an absolute-form target matters: ``/api`` goes to A, whatever
    authority the target names (even B's own address)."""
    a, b = two_backends
    routes = [
        {"prefix": "/api", "upstream": f"http://127.0.0.1:{a.port}", "strip_prefix": True},
        {"prefix": "/", "upstream": f"http://127.0.0.1:{b.port}"},
    ]
    target = target.replace(b"{b}", str(b.port).encode())
    async with gateway_factory("unused", routes=routes) as url:
        raw, _ = await converse(
            port_of(url), b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", client_ssl
        )
    status = parse_responses(raw)[0][0]
    assert b.requests == []
    if status == 200:
        assert [r["raw_path"] for r in a.requests] == ["/x"]
    else:
        assert 400 <= status < 500
        assert a.requests == []


# Path tricks ------------------------------------------------------------------------------

# (path sent, backend expected, path that backend receives). The guarantee: a request is
# routed by the prefix of its *decoded* path as uvicorn decodes it (percent-decoding, no
# dot-segment resolution, no slash merging), and the raw path is forwarded untouched except
# for the stripped prefix. The gateway never resolves ``..`` itself: by default it refuses
# a path with a dot segment (400); with ``limits.reject_dot_segments = false`` it forwards
# it as the table says.
PATH_CASES = [
    ("/api/x", "A", "/x"),
    ("/api/%2e%2e/admin", "A", "/%2e%2e/admin"),  # decoded /api/../admin: under /api
    ("/api/../admin", "A", "/../admin"),
    ("/api/..%2Fadmin", "A", "/..%2Fadmin"),
    # One raw segment that decodes to "/api/../admin": routed to A, but the prefix cannot
    # be stripped segment by segment, so A receives the raw path unchanged.
    ("/api%2F..%2Fadmin", "A", "/api%2F..%2Fadmin"),
    ("/%61pi/x", "A", "/x"),  # encoded prefix: decoded /api/x
    ("//api/x", "B", "//api/x"),  # no slash merging: not under /api
    ("//admin", "B", "//admin"),
    ("/x/../api/secret", "B", "/x/../api/secret"),  # no dot resolution: not under /api
    ("/x/%2e%2e/api/secret", "B", "/x/%2e%2e/api/secret"),
    ("/apix/y", "B", "/apix/y"),  # segment boundary
    ("/API/x", "B", "/API/x"),  # case-sensitive
]


DOT_SEGMENT_PATHS = {
    "/api/%2e%2e/admin",
    "/api/../admin",
    "/api/..%2Fadmin",
    "/api%2F..%2Fadmin",
    "/x/../api/secret",
    "/x/%2e%2e/api/secret",
}


async def get_via_api_and_root(
    path: str,
    a: Backend,
    b: Backend,
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
    **settings: Any,
) -> bytes:
    """GET ``path`` (raw) through a gateway routing ``/api`` (stripped) to ``a``, ``/`` to ``b``."""
    routes = [
        {"prefix": "/api", "upstream": f"http://127.0.0.1:{a.port}", "strip_prefix": True},
        {"prefix": "/", "upstream": f"http://127.0.0.1:{b.port}"},
    ]
    async with gateway_factory("unused", routes=routes, **settings) as url:
        raw, _ = await converse(
            port_of(url),
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
            client_ssl,
        )
    return raw


@pytest.mark.parametrize(("path", "which", "received"), PATH_CASES)
async def test_path_tricks_route_by_decoded_prefix_and_forward_raw(
    path: str,
    which: str,
    received: str,
    two_backends: tuple[Backend, Backend],
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    a, b = two_backends
    limits = {"reject_dot_segments": False}
    raw = await get_via_api_and_root(path, a, b, gateway_factory, client_ssl, limits=limits)
    assert parse_responses(raw)[0][0] == 200
    chosen, other = (a, b) if which == "A" else (b, a)
    assert [r["raw_path"] for r in chosen.requests] == [received]
    assert other.requests == []


@pytest.mark.parametrize(("path", "which", "received"), PATH_CASES)
async def test_path_tricks_with_dot_segments_are_refused_by_default(
    path: str,
    which: str,
    received: str,
    two_backends: tuple[Backend, Backend],
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    a, b = two_backends
    raw = await get_via_api_and_root(path, a, b, gateway_factory, client_ssl)
    [(status, _, body)] = parse_responses(raw)
    if path in DOT_SEGMENT_PATHS:
        assert (status, body) == (400, b"400 Bad Request: '.' or '..' segment in the path\n")
        assert a.requests == b.requests == []
    else:
        assert status == 200
        chosen = a if which == "A" else b
        assert [r["raw_path"] for r in chosen.requests] == [received]


@pytest.mark.parametrize("path", ["/x/../ws", "/x/%2E%2E/ws", "/ws/./chat", "/ws%2F..%2Fws"])
async def test_websocket_handshake_with_dot_segment_is_refused_before_the_backend(
    path: str, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async with ws_backend() as ws, gateway_factory(ws.url) as url:
        head = (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        raw, _ = await converse(port_of(url), head.encode(), client_ssl)
    [(status, _, body)] = parse_responses(raw)
    assert (status, body) == (400, b"400 Bad Request: '.' or '..' segment in the path\n")
    assert ws.handshakes == []


async def test_a_route_can_forward_dot_segments_while_the_others_refuse_them(
    two_backends: tuple[Backend, Backend],
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    a, b = two_backends
    routes = [
        {
            "prefix": "/raw",
            "upstream": f"http://127.0.0.1:{a.port}",
            "limits": {"reject_dot_segments": False},
        },
        {"prefix": "/", "upstream": f"http://127.0.0.1:{b.port}"},
    ]
    async with gateway_factory("unused", routes=routes) as url:
        statuses = []
        for path in (b"/raw/x/../%2e/y", b"/other/../raw/y"):
            raw, _ = await converse(
                port_of(url), b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", client_ssl
            )
            statuses.append(parse_responses(raw)[0][0])
    assert statuses == [200, 400]
    assert [r["raw_path"] for r in a.requests] == ["/raw/x/../%2e/y"]
    assert b.requests == []
