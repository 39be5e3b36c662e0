"""Access log: pure formatting and redaction, then real requests through uvicorn."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import time
from typing import Any

import httpx
import pytest
import websockets
from starlette.types import Message, Receive, Scope, Send
from websockets.exceptions import InvalidStatus

from gateway.middleware.access_log import (
    AccessLogMiddleware,
    AccessRecord,
    escape_log_value,
    format_combined,
    format_json,
    format_time_local,
    is_sensitive_name,
    redact_query,
    redact_url,
)
from gateway.middleware.auth import BasicAuthMiddleware, hash_password
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.proxy.http import ReverseProxy
from tests.servers import Backend, plain_config, run_server

COMBINED = re.compile(
    r'^(?P<addr>\S+) - (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
    r'rt=(?P<rt>\S+) uht=(?P<uht>\S+) ua="(?P<upstream>[^"]*)" rid=(?P<rid>\S+)$'
)


def record(**changes: Any) -> AccessRecord:
    fields: dict[str, Any] = {
        "time_s": 971_186_136.25,
        "remote_addr": "192.0.2.7",
        "remote_user": None,
        "method": "GET",
        "target": "/api/items?page=2",
        "protocol": "HTTP/1.1",
        "status": 200,
        "body_bytes_sent": 1234,
        "referer": None,
        "user_agent": "curl/8.5.0",
        "request_time_s": 0.0125,
        "upstream_addr": "10.0.0.1:8080",
        "upstream_time_s": 0.0101,
        "request_id": "4f2a",
        "host": "example.com",
    }
    fields.update(changes)
    return AccessRecord(**fields)


# Pure functions


def test_combined_line_is_nginx_combined_with_the_extension() -> None:
    line = format_combined(record())
    stamp = format_time_local(971_186_136.25)
    assert line == (
        f'192.0.2.7 - - [{stamp}] "GET /api/items?page=2 HTTP/1.1" 200 1234 "-" "curl/8.5.0" '
        'rt=0.013 uht=0.010 ua="10.0.0.1:8080" rid=4f2a'
    )
    assert COMBINED.match(line)


def test_combined_line_marks_unknown_fields_with_a_dash() -> None:
    line = format_combined(
        record(
            remote_addr=None,
            user_agent="",
            upstream_addr=None,
            upstream_time_s=None,
            request_id=None,
        )
    )
    match = COMBINED.match(line)
    assert match is not None
    assert match["addr"] == "-"
    assert match["agent"] == "-"
    assert (match["uht"], match["upstream"], match["rid"]) == ("-", "-", "-")


def test_time_local_is_nginx_format_without_locale_names() -> None:
    stamp = format_time_local(971_186_136.0)
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", stamp)
    assert stamp == time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(971_186_136.0))
    assert format_time_local(971_186_136.9) == stamp  # cached per second


def test_escaping_prevents_forged_lines_and_quotes() -> None:
    assert escape_log_value(None) == "-"
    assert escape_log_value("") == "-"
    assert escape_log_value("plain text/1.0") == "plain text/1.0"
    assert escape_log_value('a"b\\c') == "a\\x22b\\x5Cc"
    assert escape_log_value("x\r\n1.2.3.4 - - [fake]") == "x\\x0D\\x0A1.2.3.4 - - [fake]"
    assert escape_log_value("caf\xe9") == "caf\\xE9"  # a Latin-1 decoded header byte
    assert escape_log_value("jürgen€") == "j\\xC3\\xBCrgen\\xE2\\x82\\xAC"  # UTF-8 bytes
    line = format_combined(record(user_agent='evil"\n1.1.1.1 - - [x] "GET / HTTP/1.1" 200'))
    assert "\n" not in line
    assert COMBINED.match(line)


def test_json_line_is_one_object_with_every_field() -> None:
    line = format_json(record(user_agent="bot\n\x00", remote_user="jürgen"))
    assert "\n" not in line
    assert line.isascii()
    data = json.loads(line)
    assert data["status"] == 200
    assert data["body_bytes_sent"] == 1234
    assert data["request_time_s"] == 0.0125
    assert data["upstream_addr"] == "10.0.0.1:8080"
    assert data["upstream_time_s"] == 0.0101
    assert data["request_id"] == "4f2a"
    assert data["user_agent"] == "bot\n\x00"
    assert data["remote_user"] == "jürgen"
    assert data["target"] == "/api/items?page=2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.250[+-]\d\d:\d\d", data["time"])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", b""),
        (b"page=2&sort=name", b"page=2&sort=name"),
        (b"path=%2Fa%2Fb&x=1&x=2", b"path=%2Fa%2Fb&x=1&x=2"),
        (b"token=abc", b"token=***"),
        (b"a=1&api_key=k-123&b=2", b"a=1&api_key=***&b=2"),
        (b"Password=hunter2&user=bob", b"Password=***&user=bob"),
        (b"access-token=x&X-Amz-Signature=ff&X-Amz-Credential=AK", b"access-token=***"
         b"&X-Amz-Signature=***&X-Amz-Credential=***"),
        (b"%74oken=hidden&ok=1", b"%74oken=***&ok=1"),
        (b"session+id=s1", b"session+id=***"),
        (b"code=oauth-code&state=xyz", b"code=***&state=***"),  # OAuth state: a CSRF secret
        (b"secret", b"secret"),  # a bare name carries no value to hide
        (b"jwt=a.b.c&jwt=d.e.f", b"jwt=***&jwt=***"),
    ],
)  # fmt: skip
def test_redact_query(query: bytes, expected: bytes) -> None:
    assert redact_query(query) == expected


def test_sensitive_names_and_custom_words() -> None:
    assert is_sensitive_name("client_secret")
    assert is_sensitive_name("AUTH")
    assert not is_sensitive_name("page")
    assert redact_query(b"pin=1234&page=2", ["pin"]) == b"pin=***&page=2"
    assert redact_query(b"token=1", ["pin"]) == b"token=1"


def test_redact_url_removes_user_info_and_secret_values() -> None:
    assert redact_url("https://app.example/cb?code=xyz&lang=en#top") == (
        "https://app.example/cb?code=***&lang=en#top"
    )
    assert redact_url("https://bob:pw@app.example/x") == "https://***@app.example/x"
    assert redact_url("/relative?token=1") == "/relative?token=***"
    assert redact_url("https://app.example/") == "https://app.example/"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        AccessLogMiddleware(Backend(), format="xml")  # type: ignore[arg-type]


# The middleware without sockets: what only a misbehaving client or app can cause


async def _call(app: Any, scope: Scope, messages: list[Message]) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _scope(kind: str = "http") -> Scope:
    return {
        "type": kind,
        "method": "POST",
        "path": "/upload",
        "raw_path": b"/upload",
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "client": ("::ffff:192.0.2.9", 4000),
        "headers": [],
    }


async def test_client_gone_before_any_answer_is_499(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the disconnect: nothing to answer

    caplog.set_level(logging.INFO, "gateway.access")
    await _call(AccessLogMiddleware(app), _scope(), [{"type": "http.disconnect"}])
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    match = COMBINED.match(line)
    assert match is not None
    assert (match["status"], match["bytes"], match["addr"]) == ("499", "0", "192.0.2.9")


async def test_crashing_app_is_logged_as_500(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    caplog.set_level(logging.INFO, "gateway.access")
    with pytest.raises(RuntimeError):
        await _call(AccessLogMiddleware(app), _scope(), [])
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert '"POST /upload HTTP/1.1" 500 0 ' in line


async def test_nothing_is_formatted_when_the_logger_is_off() -> None:
    calls = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope)

    logging.getLogger("gateway.access.off").setLevel(logging.WARNING)
    middleware = AccessLogMiddleware(app, logger_name="gateway.access.off")
    await _call(middleware, _scope(), [])
    assert calls
    assert "state" not in calls[0]  # passed straight through


# Real requests through uvicorn


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.access"]


def _server_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("gateway", "uvicorn"))
    )


class _ReportsUpstream:
    """What ReverseProxy reports by the convention: target address and header time."""

    def __init__(self, app: Any, address: str) -> None:
        self.app = app
        self.address = address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["upstream"] = self.address
        scope["state"]["upstream_time_s"] = 0.0042
        await self.app(scope, receive, send)


async def test_one_line_per_request_without_credentials(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{backend.port}"
    reverse_proxy = ReverseProxy(f"http://{address}")
    proxy = _ReportsUpstream(reverse_proxy, address)
    users = {"alice": hash_password("pw-Zq81-secret", iterations=1000)}
    auth = BasicAuthMiddleware(proxy, users=users, realm="test")
    app = AccessLogMiddleware(RequestIdMiddleware(auth))
    caplog.set_level(logging.DEBUG)
    secrets = {
        "headers": {
            "cookie": "session=cookie-Vb72-secret",
            "referer": "https://app.example/cb?code=referer-Qx19-secret&lang=en",
            "user-agent": "test-agent/1.0",
        },
        "params": {"page": "2", "access_token": "query-Hh55-secret"},
    }
    async with (
        run_server(plain_config(app)) as port,
        httpx.AsyncClient() as client,
        contextlib.aclosing(reverse_proxy),
    ):
        base = f"http://127.0.0.1:{port}"
        ok = await client.get(
            f"{base}/bytes/777",
            auth=("alice", "pw-Zq81-secret"),
            **secrets,  # type: ignore[arg-type]
        )
        denied = await client.get(f"{base}/echo", auth=("alice", "wrong-Kk40-secret"))
        posted = await client.post(
            f"{base}/echo?x=1", auth=("alice", "pw-Zq81-secret"), content=b"z" * 5000
        )
    assert (ok.status_code, denied.status_code, posted.status_code) == (200, 401, 200)

    lines = _access_lines(caplog)
    assert len(lines) == 3
    first, second, third = (COMBINED.match(line) for line in lines)
    assert first is not None
    assert second is not None
    assert third is not None
    assert first["addr"] == "127.0.0.1"
    assert first["user"] == "alice"
    assert first["request"] == "GET /bytes/777?page=2&access_token=*** HTTP/1.1"
    assert (first["status"], first["bytes"]) == ("200", "777")
    assert first["referer"] == "https://app.example/cb?code=***&lang=en"
    assert first["agent"] == "test-agent/1.0"
    assert first["upstream"] == address
    assert first["uht"] == "0.004"
    assert float(first["rt"]) >= 0
    assert first["rid"] == ok.headers["x-request-id"]
    assert (second["user"], second["status"], second["upstream"]) == ("-", "401", "-")
    assert second["bytes"] == str(len(denied.content))
    assert second["rid"] == denied.headers["x-request-id"]
    assert third["request"] == "POST /echo?x=1 HTTP/1.1"
    assert third["bytes"] == str(len(posted.content))

    # Everything the server side logged (the test's own httpx client logs its URLs).
    everything = _server_text(caplog)
    for secret in ("pw-Zq81-secret", "wrong-Kk40-secret", "cookie-Vb72-secret",
                   "referer-Qx19-secret", "query-Hh55-secret"):  # fmt: skip
        assert secret not in everything
    for user_pass in ("alice:pw-Zq81-secret", "alice:wrong-Kk40-secret"):
        assert base64.b64encode(user_pass.encode()).decode() not in everything
    assert "authorization" not in everything.lower()
    assert "cookie" not in everything.lower()


async def test_json_lines_and_backend_failure(caplog: pytest.LogCaptureFixture) -> None:
    # A port nobody listens on: the proxy answers 502.
    async with run_server(plain_config(Backend())) as dead_port:
        pass
    proxy = ReverseProxy(f"http://127.0.0.1:{dead_port}")
    app = AccessLogMiddleware(RequestIdMiddleware(proxy), format="json")
    caplog.set_level(logging.INFO, "gateway.access")
    async with (
        run_server(plain_config(app)) as port,
        httpx.AsyncClient() as client,
        contextlib.aclosing(proxy),
    ):
        response = await client.get(f"http://127.0.0.1:{port}/x?secret=s-Pp02-secret")
    assert response.status_code == 502
    [line] = _access_lines(caplog)
    data = json.loads(line)
    assert data["status"] == 502
    assert data["body_bytes_sent"] == len(response.content)
    assert data["method"] == "GET"
    assert data["target"] == "/x?secret=***"
    assert data["request_id"] == response.headers["x-request-id"]
    assert data["host"] == f"127.0.0.1:{port}"
    assert "s-Pp02-secret" not in _server_text(caplog)


async def test_websocket_lines_only_for_refused_handshakes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        await receive()
        if scope["path"] == "/refuse":
            start = {"type": "websocket.http.response.start", "status": 429, "headers": []}
            await send(start)
            await send({"type": "websocket.http.response.body", "body": b"slow down\n"})
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hi"})
        await send({"type": "websocket.close", "code": 1000})

    caplog.set_level(logging.INFO, "gateway.access")
    async with run_server(plain_config(AccessLogMiddleware(app))) as port:
        url = f"ws://127.0.0.1:{port}"
        async with websockets.connect(f"{url}/chat?token=ws-Tt33-secret") as ws:
            assert await ws.recv() == "hi"
        with pytest.raises(InvalidStatus):
            async with websockets.connect(f"{url}/refuse?token=ws-Tt33-secret"):
                pass
    [line] = _access_lines(caplog)
    match = COMBINED.match(line)
    assert match is not None
    assert match["request"] == "GET /refuse?token=*** HTTP/1.1"
    assert (match["status"], match["bytes"]) == ("429", "10")
    assert "ws-Tt33-secret" not in _server_text(caplog)
