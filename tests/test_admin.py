"""The admin listener over real sockets: health, readiness, metrics, status document."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.admin import STATUS_PAGE, GatewayStatus, admin_app, readiness
from gateway.app import Gateway, build_gateway
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.servers import Backend, plain_config, run_server
from tests.test_metrics import instrumented_gateway, two_routes


@pytest.fixture
async def admin_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_healthz_readyz_and_metrics(
    backend: Backend, admin_client: httpx.AsyncClient
) -> None:
    metrics = Metrics()
    async with instrumented_gateway(two_routes(backend), metrics) as (url, admin, _):
        await admin_client.get(f"{url}/api/echo")
        healthz = await admin_client.get(f"{admin}/healthz")
        readyz = await admin_client.get(f"{admin}/readyz")
        scraped = await admin_client.get(f"{admin}/metrics")
        openmetrics = await admin_client.get(
            f"{admin}/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert (healthz.status_code, healthz.text) == (200, "ok\n")
    assert (readyz.status_code, readyz.text) == (200, "ready\n")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert scraped.headers["cache-control"] == "no-store"
    names = {family.name for family in text_string_to_metric_families(scraped.text)}
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert {"gateway_http_requests", "gateway_http_request_duration_seconds"} <= names


async def test_readyz_is_503_while_a_route_has_no_usable_target(
    backend: Backend, admin_client: httpx.AsyncClient
) -> None:
    metrics = Metrics()
    async with instrumented_gateway(two_routes(backend), metrics) as (url, admin, gateway):
        upstream = gateway.upstreams[f"http://127.0.0.1:{backend.port}"]
        upstream.failed(upstream.peers[0], "connect_error", "refused")
        down = await admin_client.get(f"{admin}/readyz")
        status = (await admin_client.get(f"{admin}/status.json")).json()
        await admin_client.get(f"{url}/api/echo")  # a success brings it back
        up = await admin_client.get(f"{admin}/readyz")
    assert down.status_code == 503
    assert down.text == "route /api: no usable target (last error: connect_error)\n"
    assert status["ready"]["ok"] is False
    target = status["routes"][0]["targets"][0]
    assert (target["down"], target["fails"], target["last_error"]) == (True, 1, "connect_error")
    assert (up.status_code, up.text) == (200, "ready\n")


async def test_readyz_before_settings_are_loaded(admin_client: httpx.AsyncClient) -> None:
    current: list[Gateway | None] = [None]
    metrics = Metrics()
    app = admin_app(metrics=metrics, status_source=GatewayStatus(lambda: current[0], metrics))
    gateway = build_gateway(Settings(routes=[{"prefix": "/", "upstream": "http://10.0.0.1"}]))
    try:
        async with run_server(plain_config(app)) as port:
            base = f"http://127.0.0.1:{port}"
            before = await admin_client.get(f"{base}/readyz")
            current[0] = gateway  # settings loaded (or reloaded): the source follows
            after = await admin_client.get(f"{base}/readyz")
            status = (await admin_client.get(f"{base}/status.json")).json()
    finally:
        await gateway.aclose()
    assert (before.status_code, before.text) == (503, "settings not loaded\n")
    assert after.status_code == 200
    [route] = status["routes"]
    assert route["upstream"] == "http://10.0.0.1"
    assert route["targets"] == [
        {"address": "10.0.0.1", "healthy": None, "down": False, "fails": 0, "last_error": None}
    ]


async def test_custom_readiness_callable(admin_client: httpx.AsyncClient) -> None:
    metrics = Metrics()
    app = admin_app(
        metrics=metrics,
        status_source=lambda: {"settings_loaded": True, "routes": []},
        ready=lambda: (False, "draining"),
    )
    async with run_server(plain_config(app)) as port:
        response = await admin_client.get(f"http://127.0.0.1:{port}/readyz")
    assert (response.status_code, response.text) == (503, "draining\n")


async def test_status_json_reports_routes_targets_counts_and_errors(
    backend: Backend, admin_client: httpx.AsyncClient
) -> None:
    metrics = Metrics()
    upstream = f"http://127.0.0.1:{backend.port}"
    target = f"127.0.0.1:{backend.port}"
    async with instrumented_gateway(two_routes(backend), metrics) as (url, admin, _):
        for _ in range(4):
            await admin_client.get(f"{url}/api/echo")
        await admin_client.get(f"{url}/api/status/500")
        metrics.upstream_error("/api", "no_healthy_target")
        response = await admin_client.get(f"{admin}/status.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    status: dict[str, Any] = response.json()
    assert status["settings_loaded"] is True
    assert status["ready"] == {"ok": True, "reason": "ready"}
    assert status["requests_total"] == 5
    assert status["requests_per_s"] > 0
    assert status["server_errors_total"] == 1
    assert status["upstream_errors_total"] == 1
    assert status["websocket_open"] == 0
    assert status["websocket_sessions"] == 0
    assert set(status["pool"]) >= {"connections", "idle", "waiting"}
    routes = {route["name"]: route for route in status["routes"]}
    assert set(routes) == {"/api", "/"}
    api = routes["/api"]
    assert api["upstream"] == upstream
    assert (api["http"], api["websocket"]) == (True, True)
    assert api["targets"] == [
        {"address": target, "healthy": None, "down": False, "fails": 0, "last_error": None}
    ]
    assert api["counts"] == {
        "requests": 5,
        "server_errors": 1,
        "upstream_errors": 1,
        "websocket_open": 0,
    }
    assert routes["/"]["counts"]["requests"] == 0
    [error] = status["recent_errors"]
    assert (error["route"], error["kind"]) == ("/api", "no_healthy_target")


async def test_status_page_is_self_contained(admin_client: httpx.AsyncClient) -> None:
    app = admin_app(metrics=Metrics(), status_source=lambda: {"settings_loaded": False})
    async with run_server(plain_config(app)) as port:
        base = f"http://127.0.0.1:{port}"
        page = await admin_client.get(f"{base}/status")
        head = await admin_client.head(f"{base}/status")
        css = await admin_client.get(f"{base}/status.css")
        script = await admin_client.get(f"{base}/status.js")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    # Served from the package's data files, as installed.
    assert page.content == (resources.files("gateway") / "static" / "status.html").read_bytes()
    assert page.content == STATUS_PAGE
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert "script-src 'self'" in csp
    # Nothing is loaded from elsewhere: only the page's own files, by relative URL.
    assert set(re.findall(rb'(?:src|href)="([^"]*)"', page.content)) == {
        b"data:,",
        b"status.css",
        b"status.js",
    }
    assert b"http://" not in page.content
    assert b"https://" not in page.content
    assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert b'fetch("status.json"' in script.content
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(STATUS_PAGE))


async def test_refusals(admin_client: httpx.AsyncClient) -> None:
    source = lambda: {"settings_loaded": True, "routes": []}  # noqa: E731
    app = admin_app(metrics=Metrics(), status_source=source, allowed_hosts=["admin.internal"])
    async with run_server(plain_config(app)) as port:
        base = f"http://127.0.0.1:{port}"
        post = await admin_client.post(f"{base}/metrics")
        missing = await admin_client.get(f"{base}/nope")
        rebound = await admin_client.get(f"{base}/status.json", headers={"host": "evil.example"})
        named = await admin_client.get(f"{base}/healthz", headers={"host": "Admin.Internal:9"})
        local = await admin_client.get(f"{base}/healthz", headers={"host": "localhost:9"})
        ipv6 = await admin_client.get(f"{base}/healthz", headers={"host": "[::1]:9"})
    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")
    assert missing.status_code == 404
    assert rebound.status_code == 403
    assert (named.status_code, local.status_code, ipv6.status_code) == (200, 200, 200)


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        ({}, (False, "settings not loaded")),
        ({"settings_loaded": True, "routes": []}, (False, "no routes")),
        ({"settings_loaded": True, "routes": [{"name": "/", "targets": []}]}, (True, "ready")),
        (
            {"settings_loaded": True, "routes": [
                {"name": "/a", "targets": [{"down": False}]},
                {"name": "/b", "targets": [{"down": True}, {"down": False}]},
            ]},
            (True, "ready"),
        ),
        (
            {"settings_loaded": True, "routes": [
                {"name": "/a", "targets": [{"down": False}]},
                {"name": "/b", "targets": [{"down": True, "last_error": "timeout"},
                                           {"down": True, "last_error": "unhealthy"}]},
            ]},
            (False, "route /b: no usable target (last error: timeout, unhealthy)"),
        ),
    ],
)  # fmt: skip
def test_readiness(snapshot: dict[str, Any], expected: tuple[bool, str]) -> None:
    assert readiness(snapshot) == expected


def test_readiness_without_backends_needs_only_settings() -> None:
    down = {"settings_loaded": True, "routes": [{"name": "/", "targets": [{"down": True}]}]}
    assert readiness(down, backends=False) == (True, "ready")
    assert readiness({}, backends=False) == (False, "settings not loaded")
