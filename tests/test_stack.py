"""Settings -> middleware stack: order, per-route sections, errors naming the key."""

from __future__ import annotations

import base64

import httpx
import pytest

from gateway.app import build_gateway
from gateway.middleware.auth import hash_password
from gateway.settings import ConfigError, Settings
from tests.conftest import GatewayFactory, header_values
from tests.servers import Backend


def problems(**sections: object) -> list[str]:
    settings = Settings(**sections)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        build_gateway(settings)
    return info.value.problems


def test_user_middleware_path_errors_name_the_key() -> None:
    found = problems(
        middleware=[
            {"path": "tests.no_such_module:X"},
            {"path": "tests.user_middleware:Missing"},
            {"path": "tests.user_middleware:NOT_CALLABLE"},
            {"path": "tests.user_middleware:TagMiddleware", "options": {"colour": "red"}},
        ]
    )
    assert len(found) == 4
    assert found[0].startswith("middleware.3.options: ")
    assert "colour" in found[0]
    assert any(
        p.startswith("middleware.2.path: 'tests.user_middleware:NOT_CALLABLE' is not")
        for p in found
    )
    assert any(
        p.startswith("middleware.1.path: module 'tests.user_middleware' has no 'Missing'")
        for p in found
    )
    assert any(
        p.startswith("middleware.0.path: cannot import 'tests.no_such_module'") for p in found
    )


def test_bad_header_template_and_origin_pattern_name_route_keys() -> None:
    found = problems(
        routes=[
            {
                "prefix": "/",
                "upstream": "http://127.0.0.1:1",
                "headers": {"request_set": {"X-A": "$nonsense"}},
                "origin": {"allow": ["not a url"]},
            }
        ]
    )
    assert any(p.startswith("routes.0.headers: ") and "nonsense" in p for p in found)
    assert any(p.startswith("routes.0.origin: ") for p in found)


def test_auth_needs_exactly_one_scheme() -> None:
    with pytest.raises(ValueError, match="exactly one of basic_users and bearer_tokens"):
        Settings(auth={"realm": "x"})


async def test_route_sections_replace_global_ones(
    backend: Backend, gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    upstream = f"http://127.0.0.1:{backend.port}"
    password_hash = hash_password("s3cret", iterations=1000)
    routes = [
        {
            "prefix": "/private",
            "upstream": upstream,
            "auth": {"basic_users": {"alice": password_hash}, "realm": "private"},
            "headers": {"security": False, "response_set": {"X-Route": "private"}},
        },
        {"prefix": "/", "upstream": upstream},
    ]
    async with gateway_factory(
        upstream,
        routes=routes,
        headers={"request_set": {"X-Client": "$remote_addr via $scheme"}},
        middleware=[{"path": "tests.user_middleware:TagMiddleware", "options": {"tag": "t1"}}],
    ) as url:
        public = await client.get(f"{url}/echo", headers={"X-Request-ID": "abc-123"})
        refused = await client.get(f"{url}/private/echo")
        credentials = base64.b64encode(b"alice:s3cret").decode()
        allowed = await client.get(
            f"{url}/private/echo", headers={"Authorization": f"Basic {credentials}"}
        )
    # Global stack on "/": security preset, request header rule, user middleware, request id.
    assert public.headers["x-frame-options"] == "SAMEORIGIN"
    assert public.headers["strict-transport-security"].startswith("max-age=31536000")
    assert public.headers["x-tag"] == "t1"
    assert public.headers["x-request-id"] == "abc-123"
    assert header_values(public.json(), "x-client") == ["127.0.0.1 via https"]
    assert header_values(public.json(), "x-request-id") == ["abc-123"]
    # The route's own sections replaced the global ones.
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="private", charset="UTF-8"'
    assert allowed.status_code == 200
    assert allowed.headers["x-route"] == "private"
    assert "x-frame-options" not in allowed.headers
    assert header_values(allowed.json(), "authorization") == []
    assert len(backend.requests) == 2


async def test_hosts_and_static_routes_from_settings(
    backend: Backend,
    gateway_factory: GatewayFactory,
    client: httpx.AsyncClient,
    tmp_path: pytest.TempPathFactory,
) -> None:
    site = tmp_path / "site"  # type: ignore[operator]
    site.mkdir()
    (site / "index.html").write_text("<h1>home</h1>")
    upstream = f"http://127.0.0.1:{backend.port}"
    routes = [
        {"prefix": "/", "hosts": ["api.example.com"], "upstream": upstream},
        {"prefix": "/", "hosts": ["*.example.com"], "root": str(site)},
        {"prefix": "/", "upstream": upstream, "host_header": "fallback"},
    ]
    async with gateway_factory(upstream, routes=routes) as url:
        api = await client.get(f"{url}/echo", headers={"Host": "API.example.com:8443"})
        page = await client.get(f"{url}/", headers={"Host": "www.example.com"})
        other = await client.get(f"{url}/echo", headers={"Host": "example.org"})
    assert header_values(api.json(), "host") == ["API.example.com:8443"]
    assert page.text == "<h1>home</h1>"
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert header_values(other.json(), "host") == ["fallback"]


def test_route_needs_upstream_or_root_and_valid_hosts(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ValueError, match="exactly one of upstream"):
        Settings(routes=[{"prefix": "/"}])
    with pytest.raises(ValueError, match="is not a directory"):
        Settings(routes=[{"prefix": "/", "root": "/no/such/dir"}])
    with pytest.raises(ValueError, match="example"):
        Settings(routes=[{"prefix": "/", "hosts": ["example.*"], "upstream": "http://a"}])


async def test_named_upstream_pool_from_settings(
    gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    from tests.servers import plain_config, run_server

    first, second = Backend(), Backend()
    async with run_server(plain_config(first)) as port1, run_server(plain_config(second)) as port2:
        upstreams = {
            "app": {
                "targets": [
                    {"url": f"http://127.0.0.1:{port1}", "weight": 3},
                    {"url": f"http://127.0.0.1:{port2}"},
                ],
                "health": {"path": "/echo", "interval_s": 60},
            }
        }
        routes = [{"prefix": "/", "upstream": "app"}]
        async with gateway_factory("", routes=routes, upstreams=upstreams) as url:
            for _ in range(8):
                assert (await client.get(f"{url}/echo")).status_code == 200
    served = [len(first.requests), len(second.requests)]
    assert served[0] > served[1] > 0


def test_unknown_upstream_name_is_named() -> None:
    with pytest.raises(ValueError, match=r"routes.0.upstream: no \[upstreams.api\] \(app\)"):
        Settings(
            upstreams={"app": {"targets": [{"url": "http://a:1"}]}},
            routes=[{"prefix": "/", "upstream": "api"}],
        )


async def test_rate_limit_and_ip_sections_from_settings(
    backend: Backend, gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    upstream = f"http://127.0.0.1:{backend.port}"
    async with gateway_factory(
        upstream, rate_limit={"rate_per_s": 0.01, "burst": 1}, ip={"deny": ["10.0.0.0/8"]}
    ) as url:
        first = await client.get(f"{url}/echo")
        second = await client.get(f"{url}/echo")
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.headers["retry-after"].isdigit()
    assert len(backend.requests) == 1
