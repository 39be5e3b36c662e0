"""Header rules: templates, rules, variables, the middleware in memory and over sockets."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway import ReverseProxy
from gateway.middleware.headers import (
    HeaderRules,
    HeadersMiddleware,
    Template,
    apply_rules,
    render,
    request_variables,
    security_headers,
)
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.tls import CertificatePair
from tests.conftest import header_values
from tests.middleware import asgi
from tests.servers import Backend, plain_config, run_server

# Templates ----------------------------------------------------------------------------------

VALUES = {
    "remote_addr": "203.0.113.7",
    "scheme": "https",
    "host": "example.com",
    "http_host": "example.com:8443",
    "request_id": "rid-1",
    "request_uri": "/a%2Fb?x=1",
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("plain", "plain"),
        ("", ""),
        ("$remote_addr", "203.0.113.7"),
        ("for=$remote_addr;proto=$scheme", "for=203.0.113.7;proto=https"),
        ("${host}name", "example.comname"),
        ("$scheme://$http_host$request_uri", "https://example.com:8443/a%2Fb?x=1"),
        ("cost: $5", "cost: $5"),
        ("trailing $", "trailing $"),
        ("$request_id-$request_id", "rid-1-rid-1"),
    ],
)
def test_templates_render_variables_and_keep_literal_dollars(source: str, expected: str) -> None:
    assert render(Template.compile(source), VALUES) == expected


def test_a_template_knows_its_variables() -> None:
    assert Template.compile("$host and ${scheme} and $host").variables == {"host", "scheme"}
    assert Template.compile("nothing").variables == frozenset()


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("$hostname", r"\$hostname"),  # nginx reads the longest name, so do we
        ("${nope}", r"\$\{nope\}"),
        ("$remote_port", r"\$remote_port"),
        ("${}", r"\$\{\}"),
    ],
)
def test_an_unknown_variable_is_a_configuration_error_naming_it(source: str, named: str) -> None:
    with pytest.raises(ValueError, match=rf"^request_set\['x'\]: unknown variable {named}"):
        HeaderRules.compile(set={"x": source}, key="request")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("${host", "unclosed"),
        ("a\r\nx-evil: 1", "control characters"),
        ("nul\x00", "control characters"),
        ("snow \u2603", "not latin-1"),
    ],
)
def test_malformed_templates_are_refused(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Template.compile(source)


def test_a_tab_is_a_legal_header_value_character() -> None:
    assert render(Template.compile("a\tb"), {}) == "a\tb"


# Rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"set": {"bad name": "x"}}, r"response_set: 'bad name' is not a valid header name"),
        ({"add": [("x:y", "x")]}, "response_add"),
        ({"remove": ["Content-Length"]}, "response_remove: Content-Length cannot be changed"),
        ({"set": {"Transfer-Encoding": "x"}}, "frames the body"),
        ({"set": [("X-A", "1"), ("x-a", "2")]}, "response_set: x-a is set twice"),
    ],
)
def test_bad_rules_are_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HeaderRules.compile(key="response", **kwargs)


def test_rules_remove_then_set_then_add() -> None:
    rules = HeaderRules.compile(
        remove=["X-Drop"],
        set={"X-Who": "$remote_addr", "X-Empty": ""},
        add=[("X-Multi", "a"), ("X-Multi", "$request_id"), ("X-Skip", "")],
    )
    headers = [
        (b"host", b"h"),
        (b"x-drop", b"1"),
        (b"X-Drop", b"2"),
        (b"x-who", b"forged"),
        (b"x-empty", b"gone"),
        (b"x-multi", b"kept"),
    ]
    assert apply_rules(headers, rules, VALUES) == [
        (b"host", b"h"),
        (b"x-multi", b"kept"),
        (b"x-who", b"203.0.113.7"),
        (b"x-multi", b"a"),
        (b"x-multi", b"rid-1"),
    ]


def test_empty_rules_are_falsy_and_without_drops_a_name() -> None:
    assert not HeaderRules.compile()
    rules = HeaderRules.compile(set=security_headers(tls=True), remove=["server"])
    plain = rules.without(b"strict-transport-security")
    assert [name for name, _ in plain.set] == [
        b"x-frame-options",
        b"x-content-type-options",
        b"referrer-policy",
    ]
    assert plain.remove == {b"server"}


# Variables ----------------------------------------------------------------------------------


def scope_with(**overrides: Any) -> Scope:
    scope: Scope = {
        "type": "http",
        "scheme": "https",
        "path": "/a/b",
        "raw_path": b"/a%2Fb",
        "query_string": b"x=1&x=2",
        "headers": [(b"host", b"Example.COM:8443")],
        "client": ("198.51.100.1", 40000),
        "server": ("127.0.0.1", 8443),
    }
    scope.update(overrides)
    return scope


def test_request_variables_from_a_scope() -> None:
    names = ["remote_addr", "scheme", "host", "http_host", "request_id", "request_uri"]
    assert request_variables(scope_with(), names) == {
        "remote_addr": "198.51.100.1",
        "scheme": "https",
        "host": "example.com",
        "http_host": "Example.COM:8443",
        "request_id": "",
        "request_uri": "/a%2Fb?x=1&x=2",
    }


def test_remote_addr_honours_a_trusted_proxy_layer_and_request_id_the_state() -> None:
    scope = scope_with(state={"client_ip": "192.0.2.9", "request_id": "r-9"})
    assert request_variables(scope, ["remote_addr", "request_id"]) == {
        "remote_addr": "192.0.2.9",
        "request_id": "r-9",
    }
    # A layer that found no address (None) leaves the peer in charge.
    assert request_variables(scope_with(state={"client_ip": None}), ["remote_addr"]) == {
        "remote_addr": "198.51.100.1"
    }


@pytest.mark.parametrize(
    ("scope_changes", "expected"),
    [
        ({"headers": [(b"host", b"[::1]:8443")]}, {"host": "[::1]", "scheme": "https"}),
        ({"headers": [(b"host", b"[::1]")]}, {"host": "[::1]", "scheme": "https"}),
        ({"headers": [(b"host", b"a.example")]}, {"host": "a.example", "scheme": "https"}),
        ({"headers": [], "scheme": "http"}, {"host": "127.0.0.1", "scheme": "http"}),
        ({"type": "websocket", "scheme": "wss"}, {"host": "example.com", "scheme": "https"}),
        ({"type": "websocket", "scheme": "ws"}, {"host": "example.com", "scheme": "http"}),
    ],
)
def test_host_and_scheme_variants(scope_changes: dict[str, Any], expected: dict[str, str]) -> None:
    assert request_variables(scope_with(**scope_changes), ["host", "scheme"]) == expected


def test_request_uri_without_query_and_without_raw_path() -> None:
    scope = scope_with(query_string=b"")
    del scope["raw_path"]
    assert request_variables(scope, ["request_uri"]) == {"request_uri": "/a/b"}


# The security preset ------------------------------------------------------------------------


def test_security_headers_preset() -> None:
    assert security_headers(tls=True) == {
        "Strict-Transport-Security": "max-age=31536000",
        "X-Frame-Options": "SAMEORIGIN",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "strict-origin-when-cross-origin",
    }
    assert "Strict-Transport-Security" not in security_headers(tls=False)
    custom = security_headers(tls=True, hsts_max_age_s=600, hsts_include_subdomains=True)
    assert custom["Strict-Transport-Security"] == "max-age=600; includeSubDomains"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "600"])
def test_security_headers_refuses_a_bad_max_age(bad: Any) -> None:
    with pytest.raises(ValueError, match="hsts_max_age_s"):
        security_headers(tls=True, hsts_max_age_s=bad)


# The middleware in memory -------------------------------------------------------------------


class Recorder:
    """An ASGI app that records its scope and answers with backend-identifying headers."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        headers = [(b"server", b"Apache/2.4.1"), (b"x-powered-by", b"PHP/8.1")]
        prefix = "http" if scope["type"] == "http" else "websocket.http"
        await send({"type": f"{prefix}.response.start", "status": 200, "headers": headers})
        await send({"type": f"{prefix}.response.body", "body": b""})


async def run(app: Any, scope: Scope) -> list[Message]:
    return await asgi.run(app, scope, {"type": "http.request", "body": b""})


async def test_hsts_only_on_tls_scopes() -> None:
    app = HeadersMiddleware(Recorder(), response_set=security_headers(tls=True))
    secure = await run(app, scope_with(scheme="https"))
    plain = await run(app, scope_with(scheme="http"))
    assert (b"strict-transport-security", b"max-age=31536000") in secure[0]["headers"]
    assert not [name for name, _ in plain[0]["headers"] if name == b"strict-transport-security"]
    assert (b"x-frame-options", b"SAMEORIGIN") in plain[0]["headers"]


async def test_hide_backend_and_request_rules_on_a_websocket_handshake() -> None:
    inner = Recorder()
    app = HeadersMiddleware(inner, request_set={"X-Real-Client": "$remote_addr"}, hide_backend=True)
    scope = scope_with(type="websocket", scheme="wss", headers=[(b"x-real-client", b"forged")])
    sent = await run(app, scope)
    assert inner.scopes[0]["headers"] == [(b"x-real-client", b"198.51.100.1")]
    assert scope["headers"] == [(b"x-real-client", b"forged")]  # the caller's scope is intact
    assert sent[0] == {"type": "websocket.http.response.start", "status": 200, "headers": []}


async def test_without_rules_the_app_gets_the_original_scope_and_send() -> None:
    seen: list[tuple[Scope, Send]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, send))

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    async def receive() -> Message:
        raise AssertionError("nothing is received")

    http, lifespan = scope_with(), {"type": "lifespan"}
    await HeadersMiddleware(inner)(http, receive, send)
    await HeadersMiddleware(inner, hide_backend=True)(lifespan, receive, send)
    assert seen == [(http, send), (lifespan, send)]


# Over real sockets --------------------------------------------------------------------------


class IdentifyingBackend:
    """A backend that names its software, as many do."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        headers = [
            (b"server", b"Apache/2.4.1"),
            (b"x-powered-by", b"PHP/8.1"),
            (b"x-frame-options", b"ALLOW-FROM https://old.example"),
            (b"content-length", b"2"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def client_stack(backend: Backend) -> AsyncIterator[str]:
    proxy = ReverseProxy(f"http://127.0.0.1:{backend.port}")
    app = RequestIdMiddleware(
        HeadersMiddleware(
            proxy,
            request_set={
                "X-Client": "$remote_addr",
                "X-Original-URI": "$scheme://$host$request_uri",
                "X-Trace": "$request_id",
                "Cookie": "",
            },
            request_add={"X-Gateway": "edge-1"},
            request_remove=["X-Debug"],
            response_add=[("X-Served-By", "gateway $request_id")],
            response_remove=["Content-Type"],
        )
    )
    try:
        async with run_server(plain_config(app, server_header=False)) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        await proxy.aclose()


async def test_request_and_response_rules_through_a_real_proxy(
    client_stack: str, backend: Backend
) -> None:
    headers = {
        "X-Request-ID": "rid-77",
        "X-Client": "forged",
        "X-Debug": "1",
        "Cookie": "secret=1",
        "X-Gateway": "client-sent",
    }
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{client_stack}/echo/x?q=1", headers=headers)
    record = backend.requests[0]
    port = client_stack.rsplit(":", 1)[1]
    assert header_values(record, "x-client") == ["127.0.0.1"]
    assert header_values(record, "x-original-uri") == ["http://127.0.0.1/echo/x?q=1"]
    assert header_values(record, "x-trace") == ["rid-77"]
    assert header_values(record, "cookie") == []  # set to "" = not passed (nginx)
    assert header_values(record, "x-gateway") == ["client-sent", "edge-1"]
    assert header_values(record, "x-debug") == []
    assert header_values(record, "host") == [f"127.0.0.1:{port}"]
    assert response.status_code == 200
    assert response.headers.get_list("x-served-by") == ["gateway rid-77"]
    assert "content-type" not in response.headers


async def test_hide_backend_and_security_headers_override_the_backend() -> None:
    proxy_target = IdentifyingBackend()
    async with run_server(plain_config(proxy_target, server_header=False)) as backend_port:
        proxy = ReverseProxy(f"http://127.0.0.1:{backend_port}")
        app = HeadersMiddleware(proxy, response_set=security_headers(tls=True), hide_backend=True)
        try:
            async with (
                run_server(plain_config(app, server_header=False)) as port,
                httpx.AsyncClient() as client,
            ):
                response = await client.get(f"http://127.0.0.1:{port}/")
        finally:
            await proxy.aclose()
    assert response.status_code == 200
    assert response.text == "ok"
    assert "server" not in response.headers
    assert "x-powered-by" not in response.headers
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert "strict-transport-security" not in response.headers  # plain HTTP: never HSTS


async def test_hsts_is_sent_over_https_and_not_over_http(
    backend: Backend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    proxy = ReverseProxy(f"http://127.0.0.1:{backend.port}")
    app = HeadersMiddleware(proxy, response_set=security_headers(tls=True, hsts_max_age_s=600))
    tls = {"ssl_certfile": str(cert_pair.certfile), "ssl_keyfile": str(cert_pair.keyfile)}
    limits = httpx.Limits(max_keepalive_connections=0)
    try:
        async with (
            run_server(plain_config(app, **tls)) as tls_port,
            run_server(plain_config(app)) as plain_port,
            httpx.AsyncClient(verify=client_ssl, limits=limits) as client,
        ):
            secure = await client.get(f"https://localhost:{tls_port}/echo")
            plain = await client.get(f"http://127.0.0.1:{plain_port}/echo")
    finally:
        await proxy.aclose()
    assert secure.status_code == plain.status_code == 200
    assert secure.headers.get_list("strict-transport-security") == ["max-age=600"]
    assert "strict-transport-security" not in plain.headers
    for response in (secure, plain):
        assert response.headers["x-frame-options"] == "SAMEORIGIN"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert len(backend.requests) == 2
