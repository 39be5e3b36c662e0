"""Settings -> Starlette app: routes, middleware stack, lifespan (backend client pools).

``uvicorn gateway.app:create_app --factory`` reads its settings from the file named
by ``GATEWAY_CONFIG`` (built-in defaults without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin import GatewayStatus, admin_app
from gateway.metrics import Metrics, MetricsMiddleware, SessionObserver, route_label
from gateway.middleware.access_log import AccessLogMiddleware
from gateway.middleware.ratelimit import RateStore
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.proxy.forwarding import ForwardingOptions
from gateway.proxy.http import ReverseProxy
from gateway.proxy.websocket import WebSocketProxy
from gateway.routing import Route, Router
from gateway.settings import (
    RouteSettings,
    Settings,
    TimeoutSettings,
    UpstreamSettings,
    load_settings,
)
from gateway.stack import StackBuilder
from gateway.static import static_app
from gateway.transport import UpstreamTransport
from gateway.upstream import HealthCheck, Target, Upstream

__all__ = ["Gateway", "build_gateway", "close_websockets", "create_app", "reload_app"]


def _timeout(timeouts: TimeoutSettings) -> httpx.Timeout:
    t = timeouts
    return httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s)


def _forwarding(settings: Settings, route: RouteSettings) -> ForwardingOptions:
    f = settings.forwarding
    return ForwardingOptions(
        trusted_proxies=tuple(f.trusted_proxies),
        x_forwarded=f.x_forwarded,
        forwarded=f.forwarded,
        via=f.via,
        host=route.host_header,
    )


def make_transport(settings: Settings) -> UpstreamTransport:
    """The one backend transport (connection pools) that all routes share."""
    t = settings.timeouts
    return UpstreamTransport(
        connect_timeout_s=t.connect_s,
        read_timeout_s=t.read_s,
        write_timeout_s=t.write_s,
        pool_timeout_s=t.pool_s,
    )


@dataclass
class Gateway:
    """One configuration's request path (``app``) and what needs closing at its end."""

    app: ASGIApp
    router: Router
    transport: httpx.AsyncBaseTransport
    bridges: list[WebSocketProxy] = field(default_factory=list)
    stores: list[RateStore] = field(default_factory=list)
    upstreams: dict[str, Upstream] = field(default_factory=dict)

    async def start(self) -> None:
        """Start background work: active health probes."""
        for upstream in self.upstreams.values():
            await upstream.start()

    async def aclose(self) -> None:
        """Close backend connections, health probes and rate-limit stores."""
        for upstream in self.upstreams.values():
            await upstream.aclose()
        await self.transport.aclose()
        for store in self.stores:
            await store.aclose()


def make_upstream(name: str, pool: UpstreamSettings) -> Upstream:
    """The Upstream object for an [upstreams.NAME] table."""
    health = None
    if pool.health is not None:
        h = pool.health
        health = HealthCheck(
            path=h.path,
            interval_s=h.interval_s,
            timeout_s=h.timeout_s,
            healthy_threshold=h.healthy_threshold,
            unhealthy_threshold=h.unhealthy_threshold,
        )
    return Upstream(
        [Target(target.url, weight=target.weight) for target in pool.targets],
        name=name,
        balance=pool.balance,
        max_fails=pool.max_fails,
        fail_timeout_s=pool.fail_timeout_s,
        max_tries=pool.max_tries,
        try_timeout_s=pool.try_timeout_s,
        health=health,
        verify=pool.verify,
        ca_bundle=str(pool.ca_bundle) if pool.ca_bundle is not None else None,
        max_connections_per_target=pool.max_connections,
        max_idle_per_target=pool.keepalive,
        keepalive_expiry_s=pool.keepalive_expiry_s,
    )


def build_gateway(settings: Settings, metrics: Metrics | None = None) -> Gateway:
    """Routes with their proxies and middleware stacks; ConfigError names bad keys."""
    transport = make_transport(settings)
    builder = StackBuilder(settings)
    # One pool per name, shared by every route (and both proxies) that use it.
    upstreams: dict[str, Upstream] = {}
    for name, pool in settings.upstreams.items():
        made = builder.make(f"upstreams.{name}", functools.partial(make_upstream, name, pool))
        if made is not None:
            upstreams[name] = made
    routes = []
    bridges = []
    for index, route in enumerate(settings.routes):
        timeouts = route.timeouts or settings.timeouts
        http_app: ASGIApp | None = None
        ws_app: ASGIApp | None = None
        if route.root is not None:
            # A directory served by the gateway itself (nginx root/index); no WebSocket.
            files = builder.make(
                f"routes.{index}.root",
                functools.partial(static_app, route.root, index=route.index),
            )
            http_app = None if files is None else builder.wrap(files, route, index)
        elif route.http:
            assert route.upstream is not None
            named = upstreams.get(route.upstream)
            proxy = ReverseProxy(
                named or route.upstream,
                transport=None if named else transport,
                timeout=_timeout(timeouts),
                forwarding=_forwarding(settings, route),
                rewrite_location=settings.forwarding.rewrite_location,
            )
            http_app = builder.wrap(proxy, route, index)
        label = route_label(route.prefix, route.hosts)
        if route.upstream is not None and route.websocket:
            observer = metrics.route(label) if metrics is not None else None
            bridge = websocket_bridge(settings, route, upstreams.get(route.upstream), observer)
            bridges.append(bridge)
            ws_app = builder.wrap(bridge, route, index, websocket=True)
        if metrics is not None and http_app is not None:
            # Outside the route's stack, so its own answers (401, 429, 413...) count too.
            http_app = MetricsMiddleware(http_app, metrics=metrics, route=label)
        dots = (route.limits or settings.limits).reject_dot_segments
        routes.append(
            Route(route.prefix, http_app, ws_app, route.strip_prefix, tuple(route.hosts), dots)
        )
    builder.check()
    router = Router(routes)
    app: ASGIApp = router
    if settings.request_id.enabled:
        # Outside the routes, so every answer - a 404 too - carries the id.
        app = RequestIdMiddleware(
            router,
            header=settings.request_id.header,
            trust_incoming=settings.request_id.trust_incoming,
        )
    return Gateway(app, router, transport, bridges, builder.stores, upstreams)


def websocket_bridge(
    settings: Settings,
    route: RouteSettings,
    pool: Upstream | None = None,
    observer: SessionObserver | None = None,
) -> WebSocketProxy:
    """The WebSocket bridge of a route (to its upstream pool when it names one), reporting
    its sessions to ``observer`` (the route's metrics)."""
    ws = settings.websocket
    timeouts = route.timeouts or settings.timeouts
    assert route.upstream is not None
    return WebSocketProxy(
        pool or route.upstream,
        forwarding=_forwarding(settings, route),
        open_timeout_s=timeouts.connect_s,
        idle_timeout_s=timeouts.websocket_idle_s,
        ping_interval_s=ws.ping_interval_s,
        ping_timeout_s=ws.ping_timeout_s,
        max_message_bytes=ws.max_message_bytes,
        observer=observer,
    )


class _Live:
    """The live configuration; ``reload_app`` swaps it between requests."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        # Replaced configurations: closed at shutdown, once nothing can still use them.
        self.retired: list[Gateway] = []


class _GatewayApp(Starlette):
    """Starlette with its lifespan and user middleware, but requests go straight to ``live``.

    Starlette's own layers (error page, exception handlers, path router) would wrap
    every request and response message again, and a proxy uses none of them: routing
    is ``gateway.routing``'s, and a crash is answered 500 by the server all the same.
    """

    def __init__(self, live: _Live, **options: Any) -> None:
        super().__init__(**options)
        self.live = live

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = _Dispatch(self.live, self.router)
        for middleware in reversed(self.user_middleware):
            factory, args, kwargs = middleware
            app = factory(app, *args, **kwargs)
        return app


class _Dispatch:
    """Requests and WebSocket sessions to the live gateway, lifespan to Starlette's router."""

    __slots__ = ("live", "router")

    def __init__(self, live: _Live, router: ASGIApp) -> None:
        self.live = live
        self.router = router

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function returning the app's awaitable: no frame of ours stays alive.
        if scope["type"] == "lifespan":
            return self.router(scope, receive, send)
        return self.live.gateway.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> Starlette:
    """The gateway as an ASGI app; ``settings`` default to ``load_settings()``."""
    if settings is None:
        settings = load_settings()
    metrics = Metrics()
    live = _Live(build_gateway(settings, metrics))
    metrics.watch_pool(lambda: live.gateway.transport.pool_stats())  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await live.gateway.start()
        try:
            yield
        finally:
            for gateway in [live.gateway, *live.retired]:
                await gateway.aclose()

    middleware: list[Middleware] = []
    if settings.log.access_log:
        # Outermost: one line per request, whatever layer answered it.
        middleware.append(
            Middleware(
                AccessLogMiddleware,
                format=settings.log.access_format,
                trusted_proxies=tuple(str(n) for n in settings.forwarding.trusted_proxies),
            )
        )
    app = _GatewayApp(live, middleware=middleware, lifespan=lifespan)
    app.state.live = live
    app.state.metrics = metrics
    app.state.settings = settings
    return app


def create_admin_app(app: Starlette) -> ASGIApp:
    """The admin listener's app for a gateway ``app`` (follows reloads)."""
    live: _Live = app.state.live
    metrics: Metrics = app.state.metrics
    settings: Settings = app.state.settings
    return admin_app(
        metrics=metrics,
        status_source=GatewayStatus(lambda: live.gateway, metrics),
        allowed_hosts=settings.admin.allowed_hosts,
    )


async def reload_app(app: Starlette, settings: Settings) -> None:
    """Switch ``app`` to ``settings``; requests and sessions in flight keep the old ones.

    Raises ConfigError (and changes nothing) if the new settings do not build.
    """
    live: _Live = app.state.live
    gateway = build_gateway(settings, app.state.metrics)
    await gateway.start()
    live.retired.append(live.gateway)
    live.gateway = gateway


async def close_websockets(app: Starlette, grace_s: float) -> None:
    """Let open WebSocket sessions end within ``grace_s``, then close them with 1001."""
    live: _Live = app.state.live
    bridges = [bridge for g in [live.gateway, *live.retired] for bridge in g.bridges]
    await asyncio.gather(*(bridge.shutdown(grace_s=grace_s) for bridge in bridges))
