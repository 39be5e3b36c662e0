"""The route table: host normalisation, host and path precedence, and a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import connect

from gateway.routing import (
    Route,
    Router,
    RouteTable,
    has_dot_segment,
    match_route,
    normalise_host,
    normalise_host_pattern,
)
from tests.servers import parse_response, plain_config, raw_exchange, run_server


def named(name: str) -> ASGIApp:
    """An app answering its name and the paths it was given, as JSON."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen = {"app": name, "path": scope["path"], "root_path": scope.get("root_path", "")}
        body = json.dumps(seen).encode()
        length = str(len(body)).encode()
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": body.decode()})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", length)],
            }
        )
        await send({"type": "http.response.body", "body": body})

    app.__name__ = name
    return app


def route(prefix: str, name: str, *hosts: str, strip: bool = False) -> Route:
    return Route(prefix, named(name), named(name), strip_prefix=strip, hosts=hosts)


def name_of(found: Route | None) -> str | None:
    return None if found is None or found.http is None else found.http.__name__


# Host normalisation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com:8443", "example.com"),
        ("example.com.", "example.com"),
        ("EXAMPLE.com.:443", "example.com"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]:8443", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]:80", "[2001:db8::1]"),
        (" example.com ", "example.com"),
        ("", ""),
    ],
)
def test_normalise_host(header: str, host: str) -> None:
    assert normalise_host(header) == host


@pytest.mark.parametrize(
    ("pattern", "normal"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "example.com"),
        ("*.Example.com", "*.example.com"),
        ("*.api.example.com", "*.api.example.com"),
        ("localhost", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
    ],
)
def test_normalise_host_pattern(pattern: str, normal: str) -> None:
    assert normalise_host_pattern(pattern) == normal


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "*",
        "*.",
        "**.example.com",
        "example.*",
        "a.*.example.com",
        "*example.com",
        ".example.com",
        "example..com",
        "example.com:8443",
        "[::1]:8443",
        "exa mple.com",
        "user@example.com",
        "example.com/path",
    ],
)
def test_bad_host_patterns_raise_value_error_naming_them(pattern: str) -> None:
    with pytest.raises(ValueError, match="host pattern"):
        normalise_host_pattern(pattern)


def test_route_normalises_and_deduplicates_hosts() -> None:
    made = Route("/", None, None, hosts=("Example.com", "example.com.", "*.Example.com"))
    assert made.hosts == ("example.com", "*.example.com")
    with pytest.raises(ValueError, match=r"example\.com:80"):
        Route("/", None, None, hosts=("example.com:80",))


# Precedence -----------------------------------------------------------------------------


def test_routes_without_hosts_keep_path_prefix_behaviour() -> None:
    table = RouteTable([route("/", "root"), route("/api", "api"), route("/api/v2", "v2")])
    assert name_of(table.match(None, "/")) == "root"
    assert name_of(table.match("any.host", "/api")) == "api"
    assert name_of(table.match(None, "/api/")) == "api"
    assert name_of(table.match(None, "/apix")) == "root"
    assert name_of(table.match(None, "/api/v2/items")) == "v2"
    assert name_of(table.match(None, "/api/v2x")) == "api"
    assert not table.uses_hosts


def test_no_route_matches() -> None:
    table = RouteTable([route("/api", "api"), route("/", "site", "example.com")])
    assert table.match(None, "/other") is None
    assert table.match("other.example", "/other") is None
    assert name_of(table.match("example.com", "/other")) == "site"


def test_exact_host_beats_wildcard_beats_any_host() -> None:
    table = RouteTable(
        [
            route("/", "any"),
            route("/", "wild", "*.example.com"),
            route("/", "exact", "www.example.com"),
        ]
    )
    assert name_of(table.match("www.example.com", "/x")) == "exact"
    assert name_of(table.match("shop.example.com", "/x")) == "wild"
    assert name_of(table.match("example.org", "/x")) == "any"
    assert name_of(table.match(None, "/x")) == "any"


def test_host_rank_comes_before_prefix_length() -> None:
    table = RouteTable(
        [
            route("/very/long/prefix", "any-long"),
            route("/very", "wild-short", "*.example.com"),
            route("/", "exact-root", "www.example.com"),
        ]
    )
    assert name_of(table.match("www.example.com", "/very/long/prefix/x")) == "exact-root"
    assert name_of(table.match("a.example.com", "/very/long/prefix/x")) == "wild-short"


def test_within_a_host_the_longest_prefix_wins() -> None:
    table = RouteTable(
        [
            route("/", "site", "example.com"),
            route("/api", "api", "example.com"),
            route("/api/admin", "admin", "example.com"),
        ]
    )
    assert name_of(table.match("example.com", "/api/admin/users")) == "admin"
    assert name_of(table.match("example.com", "/api/users")) == "api"
    assert name_of(table.match("example.com", "/apiary")) == "site"


def test_a_host_whose_routes_miss_the_path_falls_through() -> None:
    table = RouteTable(
        [
            route("/", "any"),
            route("/shop", "wild-shop", "*.example.com"),
            route("/v2", "exact-v2", "api.example.com"),
        ]
    )
    assert name_of(table.match("api.example.com", "/v2/x")) == "exact-v2"
    assert name_of(table.match("api.example.com", "/shop/cart")) == "wild-shop"
    assert name_of(table.match("api.example.com", "/other")) == "any"


def test_a_route_without_apps_isolates_a_host() -> None:
    closed = Route("/", None, None, hosts=("api.example.com",))
    table = RouteTable([route("/", "any"), route("/v2", "v2", "api.example.com"), closed])
    assert table.match("api.example.com", "/other") is closed
    assert name_of(table.match("www.example.com", "/other")) == "any"


def test_wildcard_matches_subdomains_at_any_depth_but_not_the_apex() -> None:
    table = RouteTable([route("/", "wild", "*.example.com")])
    assert name_of(table.match("a.example.com", "/")) == "wild"
    assert name_of(table.match("a.b.c.example.com", "/")) == "wild"
    assert table.match("example.com", "/") is None
    assert table.match("badexample.com", "/") is None
    assert table.match("example.com.evil", "/") is None
    assert table.match(".example.com", "/") is None
    assert table.match("a..example.com", "/") is None


def test_longer_wildcard_suffix_wins() -> None:
    table = RouteTable(
        [route("/", "short", "*.example.com"), route("/", "long", "*.api.example.com")]
    )
    assert name_of(table.match("x.api.example.com", "/")) == "long"
    assert name_of(table.match("api.example.com", "/")) == "short"
    assert name_of(table.match("x.www.example.com", "/")) == "short"


def test_host_comparison_ignores_case_port_and_trailing_dot() -> None:
    table = RouteTable(
        [
            route("/", "site", "Example.com"),
            route("/", "wild", "*.example.org"),
            route("/", "v6", "::1"),
        ]
    )
    for header in (
        "example.com",
        "EXAMPLE.COM",
        "example.com:8443",
        "example.com.",
        "Example.Com.:1",
    ):
        assert name_of(table.match(header, "/")) == "site", header
    assert name_of(table.match("WWW.Example.ORG.:8443", "/")) == "wild"
    assert name_of(table.match("[::1]:8443", "/")) == "v6"
    assert name_of(table.match("[::1]", "/")) == "v6"


def test_a_route_may_name_several_hosts() -> None:
    table = RouteTable([route("/", "both", "example.com", "*.example.com"), route("/", "any")])
    assert name_of(table.match("example.com", "/")) == "both"
    assert name_of(table.match("www.example.com", "/")) == "both"
    assert name_of(table.match("example.net", "/")) == "any"


def test_equal_prefixes_keep_configured_order() -> None:
    table = RouteTable(
        [route("/api", "first", "example.com"), route("/api", "second", "example.com")]
    )
    assert name_of(table.match("example.com", "/api")) == "first"


def test_hostile_host_headers_are_cheap_and_match_nothing_special() -> None:
    table = RouteTable([route("/", "wild", "*.example.com"), route("/", "any")])
    assert name_of(table.match("." * 8000, "/")) == "any"
    assert name_of(table.match("a." * 4000 + "example.com", "/")) == "wild"
    assert name_of(table.match("[::1", "/")) == "any"
    assert name_of(table.match(":::", "/")) == "any"


def test_match_route_takes_a_table_or_a_sequence() -> None:
    routes = [route("/", "any"), route("/", "site", "example.com")]
    assert name_of(match_route(routes, "example.com:443", "/")) == "site"
    assert name_of(match_route(RouteTable(routes), None, "/")) == "any"


# Dot segments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/..",
        b"/.",
        b"..",
        b".",
        b"/../x",
        b"/./x",
        b"/x/..",
        b"/x/.",
        b"/x/../api/secret",
        b"/x/./y",
        b"/x/../../etc/passwd",
        b"/x/.../../y",
        # Percent-encoded dots, in any case and mixed with literal ones.
        b"/x/%2e%2e/api",
        b"/x/%2E%2E/api",
        b"/x/%2e%2E/api",
        b"/x/.%2e/api",
        b"/x/%2e./api",
        b"/x/%2E./api",
        b"/x/%2e/api",
        b"/x/%2E",
        b"/%2e%2e",
        # Encoded separators, as the router decodes them (%2F) and some backends (%5C, \).
        b"/x%2F..%2Fapi",
        b"/x%2f..%2fapi",
        b"/x%2F%2e%2e%2Fapi",
        b"/api/..%2Fadmin",
        b"/x%5C..%5Capi",
        b"/x%5c..%5capi",
        b"/x\\..\\api",
        b"/x/..\\api",
        b"\\..\\x",
        # Path parameters: Tomcat and Jetty read "..;x" as "..".
        b"/x/..;/api",
        b"/x/..;jsessionid=1/api",
        b"/x/.;x/api",
        b"/x/%2e%2e;/api",
        b"/x/..%3B/api",
        b"/x/..%3b/api",
    ],
)
def test_dot_segments_are_found(raw_path: bytes) -> None:
    assert has_dot_segment(raw_path) is True


@pytest.mark.parametrize(
    "raw_path",
    [
        b"",
        b"/",
        b"/api/x",
        b"/static/app.js",
        b"/a.b/c.d",
        b"/.well-known/acme-challenge/token",
        b"/.hidden",
        b"/...",
        b"/x/.../y",
        b"/x/....",
        b"/a..b",
        b"/x/..a",
        b"/x/a..",
        b"/x/.a.",
        b"/x/%2e%2e%2e",
        b"/x/%2ea",
        b"/file.%2e",
        b"//x//y",
        b"/x;..",
        b"/x;/..a",
        b"/a%20b/c%zz/%2",
        b"/%",
        # Decoded once, as the router decodes: %252e is the segment "%2e", not a dot.
        b"/x/%252e%252e/api",
        b"/x/%25%32%65",
    ],
)
def test_paths_without_dot_segments_pass(raw_path: bytes) -> None:
    assert has_dot_segment(raw_path) is False


# Through a real server --------------------------------------------------------------------


@pytest.fixture
async def router_url() -> AsyncIterator[str]:
    router = Router(
        [
            route("/", "alpha", "alpha.test"),
            route("/", "beta", "*.beta.test"),
            route("/api", "beta-api", "*.beta.test", strip=True),
            route("/", "fallback"),
            Route("/ws-only", None, named("ws-only"), hosts=("alpha.test",)),
        ]
    )
    async with run_server(plain_config(router)) as port:
        yield f"http://127.0.0.1:{port}"


async def test_two_hosts_reach_two_apps(router_url: str) -> None:
    async with httpx.AsyncClient() as client:
        alpha = await client.get(f"{router_url}/page", headers={"Host": "Alpha.test:8443"})
        beta = await client.get(f"{router_url}/page", headers={"Host": "www.beta.test"})
        beta_api = await client.get(f"{router_url}/api/items", headers={"Host": "x.y.beta.test"})
        other = await client.get(f"{router_url}/page", headers={"Host": "beta.test"})
        ws_only = await client.get(f"{router_url}/ws-only", headers={"Host": "alpha.test"})
    assert alpha.json() == {"app": "alpha", "path": "/page", "root_path": ""}
    assert beta.json()["app"] == "beta"
    assert beta_api.json() == {"app": "beta-api", "path": "/api/items", "root_path": "/api"}
    assert other.json()["app"] == "fallback"
    assert ws_only.status_code == 404


async def test_websocket_is_routed_by_host(router_url: str) -> None:
    port = int(router_url.rsplit(":", 1)[1])
    # The Host header comes from the URL; the socket goes to 127.0.0.1.
    url = f"ws://alpha.test:{port}/ws-only/chat"
    async with connect(url, host="127.0.0.1", port=port) as session:
        assert json.loads(await session.recv())["app"] == "ws-only"


async def test_several_host_headers_get_400_and_no_host_gets_the_any_host_route(
    router_url: str,
) -> None:
    port = int(router_url.rsplit(":", 1)[1])
    twice = (
        b"GET / HTTP/1.1\r\nHost: alpha.test\r\nHost: www.beta.test\r\nConnection: close\r\n\r\n"
    )
    status, _, _ = parse_response(await raw_exchange(port, twice))
    assert status == 400
    no_host = b"GET /x HTTP/1.0\r\n\r\n"
    status, _, body = parse_response(await raw_exchange(port, no_host))
    assert status == 200
    assert json.loads(body)["app"] == "fallback"


async def test_unknown_host_without_fallback_gets_404() -> None:
    router = Router([route("/", "alpha", "alpha.test")])
    async with run_server(plain_config(router)) as port, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/", headers={"Host": "evil.test"})
        known = await client.get(f"http://127.0.0.1:{port}/", headers={"Host": "alpha.test"})
    assert response.status_code == 404
    assert known.json()["app"] == "alpha"


@pytest.fixture
async def dots_url() -> AsyncIterator[str]:
    """``/open`` forwards dot segments; every other route refuses them (the default)."""
    router = Router(
        [
            route("/", "fallback"),
            route("/api", "api", strip=True),
            Route("/open", named("open"), named("open"), reject_dot_segments=False),
        ]
    )
    async with run_server(plain_config(router)) as port:
        yield f"http://127.0.0.1:{port}"


DOT_TEXT = b"400 Bad Request: '.' or '..' segment in the path\n"


@pytest.mark.parametrize(
    "target",
    [b"/x/../api/secret", b"/x/%2E%2e/api/secret", b"/api/./x", b"/x%2F..%2Fapi", b"/.."],
)
async def test_dot_segments_get_400_before_the_route_app(dots_url: str, target: bytes) -> None:
    port = int(dots_url.rsplit(":", 1)[1])
    request = b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    status, headers, body = parse_response(await raw_exchange(port, request))
    assert status == 400
    assert body == DOT_TEXT
    assert ("content-type", "text/plain; charset=utf-8") in headers


async def test_websocket_handshake_with_dot_segment_gets_400(dots_url: str) -> None:
    port = int(dots_url.rsplit(":", 1)[1])
    handshake = (
        b"GET /x/%2e%2e/api/chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    status, _, body = parse_response(await raw_exchange(port, handshake))
    assert status == 400
    assert body == DOT_TEXT


async def test_a_route_may_forward_dot_segments_byte_for_byte(dots_url: str) -> None:
    port = int(dots_url.rsplit(":", 1)[1])
    request = b"GET /open/../%2e/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    status, _, body = parse_response(await raw_exchange(port, request))
    assert status == 200
    assert json.loads(body) == {"app": "open", "path": "/open/.././x", "root_path": ""}
    async with connect(f"ws://127.0.0.1:{port}/open/../chat") as session:
        assert json.loads(await session.recv())["app"] == "open"
    async with httpx.AsyncClient() as client:
        # Ordinary paths with dots in names pass on refusing routes.
        response = await client.get(f"{dots_url}/api/.well-known/app.v2.js")
    assert response.json() == {
        "app": "api",
        "path": "/api/.well-known/app.v2.js",
        "root_path": "/api",
    }
