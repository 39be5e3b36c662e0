"""Origin checks: the pure decision, the middleware in memory, and over real sockets."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.middleware.origin import OriginCheckMiddleware, OriginRules, origin_allowed
from gateway.middleware.origin import origin_refusal as refusal
from gateway.tls import CertificatePair
from tests.middleware.asgi import run
from tests.proxy.ws_servers import tls_bridge

# The pure decision --------------------------------------------------------------------------


def allowed(origin: str | None, allow: list[str], **context: Any) -> bool:
    context.setdefault("allow_missing", True)
    context.setdefault("scheme", "wss")
    context.setdefault("host", "gateway.example")
    return origin_allowed(origin, allow=allow, **context)


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://app.example.com", True),
        ("https://app.example.com:443", True),
        ("HTTPS://App.Example.COM", True),
        ("https://app.example.com:8443", False),
        ("http://app.example.com", False),
        ("https://app.example.com.evil.org", False),
        ("https://evil.app.example.com", False),
    ],
)
def test_exact_origin_with_default_port_normalised(origin: str, expected: bool) -> None:
    assert allowed(origin, ["https://app.example.com"]) is expected


def test_exact_origin_with_explicit_port() -> None:
    assert allowed("http://localhost:8080", ["http://localhost:8080"])
    assert allowed("http://localhost", ["http://localhost:80"])
    assert not allowed("http://localhost:8081", ["http://localhost:8080"])


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://a.example.com", True),
        ("https://a.b.example.com", True),
        ("https://example.com", False),  # not the apex
        ("https://evilexample.com", False),
        ("http://a.example.com", False),
        ("https://a.example.com:8443", False),
        ("https://a.example.com.evil.org", False),
    ],
)
def test_wildcard_matches_subdomains_at_any_depth_but_not_the_apex(
    origin: str, expected: bool
) -> None:
    assert allowed(origin, ["https://*.example.com"]) is expected


@pytest.mark.parametrize(
    ("origin", "scheme", "host", "expected"),
    [
        ("https://gateway.example:8443", "wss", "gateway.example:8443", True),
        ("https://gateway.example", "wss", "gateway.example", True),
        ("https://gateway.example:443", "wss", "gateway.example", True),
        ("https://gateway.example", "wss", "gateway.example:443", True),
        ("http://localhost:8080", "ws", "localhost:8080", True),
        ("https://localhost:8443", "https", "LOCALHOST:8443", True),
        ("http://gateway.example:8443", "wss", "gateway.example:8443", False),
        ("https://gateway.example:8443", "wss", "gateway.example", False),
        ("https://other.example", "wss", "gateway.example", False),
        ("https://[::1]:8443", "wss", "[::1]:8443", True),
        ("https://gateway.example", "wss", None, False),
    ],
)
def test_same_origin_compares_with_the_scheme_and_host_the_client_used(
    origin: str, scheme: str, host: str | None, expected: bool
) -> None:
    assert allowed(origin, ["same-origin"], scheme=scheme, host=host) is expected


def test_any_origin_but_not_null() -> None:
    assert allowed("https://anything.example", ["*"])
    assert not allowed("null", ["*"])
    assert allowed("null", ["null"])
    assert refusal("null", allow=["*"], allow_missing=True, scheme="wss", host=None) == (
        "Origin null not allowed"
    )


def test_missing_origin_follows_allow_missing() -> None:
    assert allowed(None, ["https://app.example.com"], allow_missing=True)
    assert not allowed(None, ["*"], allow_missing=False)
    assert refusal(None, allow=["*"], allow_missing=False, scheme="wss", host=None) == (
        "Origin header required"
    )


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "app.example.com",
        "https://",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://user@app.example.com",
        "https://app.example.com:99999",
        "https://app.example.com:x",
        "https://app .example.com",
        "https://*.example.com",
        "https://app.example.com, https://other.example",
        "https://app.example.com?x",
    ],
)
def test_malformed_origins_are_refused_even_with_a_wildcard(origin: str) -> None:
    assert refusal(origin, allow=["*"], allow_missing=True, scheme="wss", host=None) == (
        "malformed Origin header"
    )


@pytest.mark.parametrize(
    "entry", ["example.com", "https://*.", "https://a.*.com", "https://a.com/x", "https://a.com:0"]
)
def test_bad_allowlist_entries_are_configuration_errors(entry: str) -> None:
    with pytest.raises(ValueError, match="origins"):
        OriginRules.parse([entry])


# The middleware in memory -------------------------------------------------------------------


class Recorder:
    """An ASGI app that records whether it was reached."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1


def ws_scope(*headers: tuple[bytes, bytes], extensions: bool = True) -> Scope:
    return {
        "type": "websocket",
        "scheme": "wss",
        "path": "/ws",
        "headers": [(b"host", b"gateway.example"), *headers],
        "client": ("203.0.113.7", 5000),
        "extensions": {"websocket.http.response": {}} if extensions else {},
    }


async def test_refused_websocket_gets_403_with_reason_and_app_never_runs() -> None:
    inner = Recorder()
    sent = await run(OriginCheckMiddleware(inner), ws_scope((b"origin", b"https://evil.example")))
    assert inner.calls == 0
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 403
    assert (b"content-type", b"text/plain; charset=utf-8") in sent[0]["headers"]
    assert sent[1] == {
        "type": "websocket.http.response.body",
        "body": b"403 Forbidden: Origin not allowed\n",
    }


async def test_refused_websocket_without_the_extension_is_closed_before_accept() -> None:
    inner = Recorder()
    scope = ws_scope((b"origin", b"https://evil.example"), extensions=False)
    assert await run(OriginCheckMiddleware(inner), scope) == [
        {"type": "websocket.close", "code": 1008}
    ]
    assert inner.calls == 0


async def test_allowed_and_missing_origins_reach_the_app() -> None:
    inner = Recorder()
    middleware = OriginCheckMiddleware(inner)
    await run(middleware, ws_scope((b"origin", b"https://gateway.example")))
    await run(middleware, ws_scope())
    assert inner.calls == 2


async def test_two_origin_headers_are_refused() -> None:
    inner = Recorder()
    scope = ws_scope((b"origin", b"https://gateway.example"), (b"origin", b"https://evil.example"))
    sent = await run(OriginCheckMiddleware(inner, allow=["*"]), scope)
    assert sent[1]["body"] == b"403 Forbidden: more than one Origin header\n"
    assert inner.calls == 0


async def test_http_is_checked_only_for_the_listed_methods() -> None:
    inner = Recorder()
    middleware = OriginCheckMiddleware(inner, methods=["post", "DELETE"])

    def http_scope(method: str) -> Scope:
        headers = [(b"host", b"gateway.example"), (b"origin", b"https://evil.example")]
        return {"type": "http", "method": method, "scheme": "https", "headers": headers}

    assert await run(middleware, http_scope("GET")) == []
    sent = await run(middleware, http_scope("POST"))
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 403
    assert inner.calls == 1
    await run(OriginCheckMiddleware(inner), http_scope("POST"))  # no methods: HTTP unchecked
    assert inner.calls == 2


async def test_other_scope_types_pass_through() -> None:
    inner = Recorder()
    await run(OriginCheckMiddleware(inner, allow=[]), {"type": "lifespan"})
    assert inner.calls == 1


# Over real sockets ----------------------------------------------------------------------------


class Ok:
    """A tiny ASGI app: HTTP 200, WebSocket accept-and-close; counts what reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})


async def test_cross_site_requests_refused_over_tls(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    inner = Ok()
    app = OriginCheckMiddleware(inner, allow=["same-origin"], methods=["POST"])
    async with tls_bridge(app, cert_pair) as wss_url:
        https_url = wss_url.replace("wss:", "https:")
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{wss_url}/ws", ssl=client_ssl, origin="https://evil.example"):
                pass
        async with httpx.AsyncClient(verify=client_ssl) as http:
            refused = await http.post(
                f"{https_url}/form", headers={"Origin": "https://evil.example"}, content=b"x"
            )
            accepted = await http.post(
                f"{https_url}/form", headers={"Origin": https_url}, content=b"x"
            )
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"403 Forbidden: Origin not allowed\n"
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "text/plain; charset=utf-8"
    assert refused.text == "403 Forbidden: Origin not allowed\n"
    assert accepted.status_code == 200
    assert inner.calls == 1  # only the same-origin POST reached the app
