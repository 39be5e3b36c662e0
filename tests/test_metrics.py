"""Metrics: counts after real traffic, scraped from the admin listener and parsed."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from gateway.admin import GatewayStatus, admin_app
from gateway.app import Gateway, build_gateway
from gateway.metrics import (
    LATENCY_BUCKETS_S,
    Metrics,
    MetricsMiddleware,
    redact_secrets,
    route_label,
)
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.routing import Router
from gateway.settings import Settings
from gateway.upstream import Upstream
from tests.proxy.ws_servers import ws_backend
from tests.servers import Backend, free_port, plain_config, run_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def instrument(gateway: Gateway, metrics: Metrics) -> ASGIApp:
    """The wiring the app does: MetricsMiddleware around each route's HTTP stack."""
    routes = [
        dataclasses.replace(
            route,
            http=MetricsMiddleware(
                route.http,
                metrics=metrics,
                route=route_label(route.prefix, getattr(route, "hosts", ())),
            )
            if route.http is not None
            else None,
        )
        for route in gateway.router.routes
    ]
    return RequestIdMiddleware(Router(routes))


@asynccontextmanager
async def instrumented_gateway(
    settings: Settings, metrics: Metrics
) -> AsyncIterator[tuple[str, str, Gateway]]:
    """A gateway (plain HTTP) and its admin listener; yields both base URLs and the parts."""
    gateway = build_gateway(settings)
    admin = admin_app(metrics=metrics, status_source=GatewayStatus(gateway, metrics))
    metrics.watch_upstreams(lambda: gateway.upstreams)
    try:
        async with (
            run_server(plain_config(instrument(gateway, metrics))) as port,
            run_server(plain_config(admin)) as admin_port,
        ):
            yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", gateway
    finally:
        await gateway.aclose()


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and label set."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


REQUESTS = "gateway_http_requests_total"


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(admin_url: str) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{admin_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def two_routes(backend: Backend) -> Settings:
    upstream = f"http://127.0.0.1:{backend.port}"
    return Settings(
        routes=[
            {"prefix": "/api", "upstream": upstream, "strip_prefix": True},
            {"prefix": "/", "upstream": upstream},
        ]
    )


async def test_requests_and_latency_by_route_after_real_traffic(backend: Backend) -> None:
    metrics = Metrics()
    async with (
        instrumented_gateway(two_routes(backend), metrics) as (url, admin, _),
        httpx.AsyncClient() as client,
    ):
        for _ in range(3):
            assert (await client.get(f"{url}/api/echo")).status_code == 200
        for _ in range(2):
            assert (await client.get(f"{url}/api/status/503")).status_code == 503
        assert (await client.post(f"{url}/other", content=b"x" * 10)).status_code == 200
        samples = await scrape(admin)

    requests = "gateway_http_requests_total"
    assert value(samples, requests, route="/api", code="200", protocol="1.1") == 3
    assert value(samples, requests, route="/api", code="503", protocol="1.1") == 2
    assert value(samples, requests, route="/", code="200", protocol="1.1") == 1
    latency = "gateway_http_request_duration_seconds"
    assert value(samples, f"{latency}_count", route="/api") == 5
    assert value(samples, f"{latency}_count", route="/") == 1
    assert 0 < (value(samples, f"{latency}_sum", route="/api") or 0) < 60
    bounds = [*map(prometheus_client.utils.floatToGoString, LATENCY_BUCKETS_S), "+Inf"]
    buckets = [value(samples, f"{latency}_bucket", route="/api", le=le) for le in bounds]
    assert all(b is not None for b in buckets)
    assert buckets == sorted(buckets)  # type: ignore[type-var]
    assert buckets[-1] == 5
    # Each upstream's pool is read at scrape time (both routes share one URL upstream).
    upstream = f"http://127.0.0.1:{backend.port}"
    assert value(samples, "gateway_upstream_pool_connections", upstream=upstream) == 1
    healthy = "gateway_upstream_target_healthy"
    assert value(samples, healthy, upstream=upstream, target=f"127.0.0.1:{backend.port}") == 1
    assert value(samples, "process_resident_memory_bytes") is not None


class _FailingProxy:
    """Answers 502 and reports the failure by the convention, as ReverseProxy will."""

    def __init__(self, *errors: BaseException | str) -> None:
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["upstream_error"] = (
            self.errors[0] if len(self.errors) == 1 else list(self.errors)
        )
        await send({"type": "http.response.start", "status": 502, "headers": []})
        await send({"type": "http.response.body", "body": b"502 Bad Gateway\n"})


async def test_upstream_errors_by_kind_and_recent_errors() -> None:
    metrics = Metrics()
    request = httpx.Request("GET", "http://10.0.0.1:8080/")
    routes = {
        "/refused": _FailingProxy(httpx.ConnectError("[Errno 111] refused", request=request)),
        "/slow": _FailingProxy(httpx.ReadTimeout("timed out", request=request)),
        "/retried": _FailingProxy(
            httpx.ConnectTimeout("connect timed out"), httpx.RemoteProtocolError("bad")
        ),
        "/empty": _FailingProxy("no_healthy_target"),
        "/leaky": _FailingProxy(
            httpx.ConnectError("cannot reach http://bob:hunter2@10.0.0.9/?token=abc")
        ),
    }
    apps = {
        path: MetricsMiddleware(app, metrics=metrics, route=path) for path, app in routes.items()
    }

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await apps[scope["path"]](scope, receive, send)

    async with run_server(plain_config(app)) as port, httpx.AsyncClient() as client:
        for path in routes:
            assert (await client.get(f"http://127.0.0.1:{port}{path}")).status_code == 502
    samples = parse(metrics.exposition().decode())

    errors = "gateway_upstream_errors_total"
    assert value(samples, errors, route="/refused", kind="connect_error") == 1
    assert value(samples, errors, route="/slow", kind="timeout") == 1
    assert value(samples, errors, route="/retried", kind="connect_timeout") == 1
    assert value(samples, errors, route="/retried", kind="invalid_response") == 1
    assert value(samples, errors, route="/empty", kind="no_healthy_target") == 1
    assert (
        value(samples, "gateway_http_requests_total", route="/slow", code="502", protocol="1.1")
        == 1
    )

    snapshot = metrics.snapshot()
    assert snapshot["upstream_errors_total"] == 6
    assert snapshot["server_errors_total"] == 5
    recent = snapshot["recent_errors"]
    assert recent[0]["route"] == "/leaky"  # newest first
    assert recent[0]["kind"] == "connect_error"
    assert "hunter2" not in recent[0]["message"]
    assert "token=abc" not in recent[0]["message"]
    assert "10.0.0.9" in recent[0]["message"]  # internal addresses are fine internally
    assert {"time_s", "route", "kind", "message"} == set(recent[0])


async def test_exceptions_and_clients_that_leave() -> None:
    metrics = Metrics()

    async def crash(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("handler bug")

    async def leave(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with pytest.raises(RuntimeError):
        await MetricsMiddleware(crash, metrics=metrics, route="/c")(dict(scope), receive, send)
    await MetricsMiddleware(leave, metrics=metrics, route="/l")(dict(scope), receive, send)
    samples = parse(metrics.exposition().decode())
    assert (
        value(samples, "gateway_http_requests_total", route="/c", code="500", protocol="1.1") == 1
    )
    assert (
        value(samples, "gateway_http_requests_total", route="/l", code="499", protocol="1.1") == 1
    )
    [error] = metrics.snapshot()["recent_errors"]
    assert (error["route"], error["kind"]) == ("/c", "internal")
    assert "handler bug" in error["message"]


async def test_requests_are_counted_by_protocol() -> None:
    metrics = Metrics()

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    middleware = MetricsMiddleware(answer, metrics=metrics, route="/")
    for version in ("2", "2", "1.1"):
        scope = {"type": "http", "method": "GET", "path": "/", "http_version": version}
        await middleware(scope, receive, send)
    samples = parse(metrics.exposition().decode())
    requests = "gateway_http_requests_total"
    assert value(samples, requests, route="/", code="204", protocol="2") == 2
    assert value(samples, requests, route="/", code="204", protocol="1.1") == 1


async def test_other_scopes_pass_straight_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    metrics = Metrics()
    middleware = MetricsMiddleware(app, metrics=metrics, route="/ws")
    for kind in ("websocket", "lifespan"):
        await middleware({"type": kind}, None, None)  # type: ignore[arg-type]
    assert seen == ["websocket", "lifespan"]
    assert metrics.snapshot()["requests_total"] == 0


def test_websocket_observer_counts_sessions_messages_and_bytes() -> None:
    metrics = Metrics()
    observer = metrics.route("/ws")  # what a bridge is given
    observer.websocket_opened()
    observer.websocket_opened()
    observer.websocket_closed(messages_up=3, bytes_up=30, messages_down=5, bytes_down=500)
    observer.upstream_error(ConnectionRefusedError(111, "Connect call failed"))
    observer.upstream_error(InvalidStatus(Response(403, "Forbidden", Headers())))
    metrics.websocket_opened("/other")  # the plain-method form
    samples = parse(metrics.exposition().decode())
    assert value(samples, "gateway_websocket_sessions_open", route="/ws") == 1
    assert value(samples, "gateway_websocket_sessions_total", route="/ws") == 2
    messages = "gateway_websocket_messages_total"
    assert value(samples, messages, route="/ws", direction="client_to_backend") == 3
    assert value(samples, messages, route="/ws", direction="backend_to_client") == 5
    octets = "gateway_websocket_bytes_total"
    assert value(samples, octets, route="/ws", direction="client_to_backend") == 30
    assert value(samples, octets, route="/ws", direction="backend_to_client") == 500
    errors = "gateway_upstream_errors_total"
    assert value(samples, errors, route="/ws", kind="connect_error") == 1
    assert value(samples, errors, route="/ws", kind="refused") == 1
    snapshot = metrics.snapshot()
    assert snapshot["websocket_open"] == 2
    assert snapshot["routes"]["/ws"]["websocket_open"] == 1


def test_target_health_and_pool_gauges_by_upstream() -> None:
    class Transport:
        def pool_stats(self) -> dict[str, int]:
            return {"connections": 4, "idle": 3, "waiting": 1}

    now = [0.0]
    app = Upstream(
        ["http://10.0.0.1", "http://10.0.0.2"],
        name="app",
        transport=Transport(),  # type: ignore[arg-type]
        clock=lambda: now[0],
    )
    alone = Upstream(["http://10.0.0.3:8080"], name="alone", max_fails=2, clock=lambda: now[0])
    app.failed(app.peers[1], "connect_error")
    alone.failed(alone.peers[0], "timeout")  # one of two failures: still up
    metrics = Metrics()
    metrics.watch_upstreams(lambda: {"app": app, "alone": alone})
    samples = parse(metrics.exposition().decode())
    healthy = "gateway_upstream_target_healthy"
    assert value(samples, healthy, upstream="app", target="10.0.0.1") == 1
    assert value(samples, healthy, upstream="app", target="10.0.0.2") == 0
    assert value(samples, healthy, upstream="alone", target="10.0.0.3:8080") == 1
    assert value(samples, "gateway_upstream_pool_connections", upstream="app") == 4
    assert value(samples, "gateway_upstream_pool_idle_connections", upstream="app") == 3
    assert value(samples, "gateway_upstream_pool_waiting_requests", upstream="app") == 1
    assert value(samples, "gateway_upstream_pool_connections", upstream="alone") == 0
    alone.failed(alone.peers[0], "timeout")  # the second: a lone target counts as down too
    samples = parse(metrics.exposition().decode())
    assert value(samples, healthy, upstream="alone", target="10.0.0.3:8080") == 0
    now[0] = 11.0  # fail_timeout_s later it is up again
    samples = parse(metrics.exposition().decode())
    assert value(samples, healthy, upstream="alone", target="10.0.0.3:8080") == 1
    assert value(samples, healthy, upstream="app", target="10.0.0.2") == 1


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics(process_metrics=False)
    first.request_done("/", 200, 0.01)
    assert value(parse(second.exposition().decode()), "gateway_http_requests_total",
                 route="/", code="200") is None  # fmt: skip
    assert value(parse(first.exposition().decode()), "gateway_http_requests_total",
                 route="/", code="200", protocol="1.1") == 1  # fmt: skip
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "gateway_" not in default


def test_latency_buckets_are_less_or_equal() -> None:
    metrics = Metrics(latency_buckets_s=(0.1, 1.0), process_metrics=False)
    for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
        metrics.request_done("/", 200, seconds)
    samples = parse(metrics.exposition().decode())
    bucket = "gateway_http_request_duration_seconds_bucket"
    assert value(samples, bucket, route="/", le="0.1") == 2
    assert value(samples, bucket, route="/", le="1.0") == 4
    assert value(samples, bucket, route="/", le="+Inf") == 5
    assert value(samples, "gateway_http_request_duration_seconds_sum", route="/") == 8.65
    with pytest.raises(ValueError, match="latency_buckets_s"):
        Metrics(latency_buckets_s=(1.0, 0.5))


def test_requests_per_second_from_successive_reads() -> None:
    now = [1000.0]
    metrics = Metrics(clock=lambda: now[0], process_metrics=False)
    assert metrics.snapshot()["requests_per_s"] == 0
    for _ in range(50):
        metrics.request_done("/", 200, 0.001)
    now[0] += 5
    assert metrics.snapshot()["requests_per_s"] == 10
    now[0] += 20  # idle since: the window forgets old traffic
    metrics.snapshot()
    now[0] += 2
    assert metrics.snapshot()["requests_per_s"] == 0


def test_redact_secrets_in_messages() -> None:
    text = "GET http://u:p@h/x?api_key=k&a=1 failed; password=pw sig=s"
    assert redact_secrets(text) == "GET http://***@h/x?api_key=***&a=1 failed; password=*** sig=***"


def test_route_label() -> None:
    assert route_label("/api") == "/api"
    assert route_label("/", ("example.com", "*.example.com")) == "example.com,*.example.com/"


async def test_bridged_websocket_sessions_and_failed_backends_are_counted() -> None:
    metrics = Metrics()
    async with ws_backend() as backend:
        down = free_port()  # nothing listens there
        settings = Settings(
            routes=[
                {"prefix": "/ws", "upstream": backend.url, "http": False},
                {"prefix": "/down", "upstream": f"http://127.0.0.1:{down}", "http": False},
            ],
            origin={"allow": ["*"]},
        )
        gateway = build_gateway(settings, metrics)
        try:
            async with run_server(plain_config(gateway.app)) as port:
                async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                    for text in ("one", "two", "three"):
                        await ws.send(text)
                        assert await ws.recv() == text
                    open_now = parse(metrics.exposition().decode())
                    assert value(open_now, "gateway_websocket_sessions_open", route="/ws") == 1
                with pytest.raises(InvalidStatus):
                    async with connect(f"ws://127.0.0.1:{port}/down"):
                        pass
                await backend.closed.wait()
        finally:
            await gateway.aclose()
    samples = parse(metrics.exposition().decode())
    assert value(samples, "gateway_websocket_sessions_open", route="/ws") == 0
    assert value(samples, "gateway_websocket_sessions_total", route="/ws") == 1
    for direction in ("client_to_backend", "backend_to_client"):
        labels = {"route": "/ws", "direction": direction}
        assert value(samples, "gateway_websocket_messages_total", **labels) == 3
        assert value(samples, "gateway_websocket_bytes_total", **labels) == len("onetwothree")
    errors = "gateway_upstream_errors_total"
    assert value(samples, errors, route="/down", kind="connect_error") == 1
    assert value(samples, "gateway_websocket_sessions_total", route="/down") is None
