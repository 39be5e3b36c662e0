"""Settings -> Starlette app: routes, middleware stack, lifespan (backend client pools).

``uvicorn gateway.app:create_app --factory`` reads its settings from the file named
by ``GATEWAY_CONFIG`` (built-in defaults without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway._compat import Starlette
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
from gateway.upstream import HealthCheck, Target, Upstream

__all__ = ["Gateway", "build_gateway", "close_websockets", "create_app", "reload_app"]


def _timeout(timeouts: TimeoutSettings) -> httpx.Timeout:
    t = timeouts
    return httpx.Timeout(connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s)


def _forwarding(settings: Settings, route: RouteSettings) -> ForwardingOptions:
    f = settings.forwarding
    # Headers the gateway sets itself: a client's Connection header must not remove them.
    headers = route.headers or settings.headers
    protected = {
        name.lower().encode("latin-1") for name in [*headers.request_set, *headers.request_add]
    }
    if settings.request_id.enabled:
        protected.add(settings.request_id.header.lower().encode("latin-1"))
    return ForwardingOptions(
        trusted_proxies=tuple(f.trusted_proxies),
        x_forwarded=f.x_forwarded,
        forwarded=f.forwarded,
        via=f.via,
        host=route.host_header,
        protected=frozenset(protected),
        strip_untrusted=frozenset(
            name.lower().encode("latin-1") for name in f.strip_client_headers
        ),
        keep_underscores=f.keep_underscore_headers,
    )


@dataclass
class Gateway:
    """One configuration's request path (``app``) and what needs closing at its end.

    ``upstreams`` holds every backend as an `Upstream`: the ``[upstreams.NAME]`` pools by
    name, and each route URL as a pool of one target named by the URL. ``route_upstreams``
    names each route (its metrics label) and its upstream (None for a directory).
    ``in_flight`` counts the requests and WebSocket sessions running on it.
    """

    app: ASGIApp
    router: Router
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    route_upstreams: list[tuple[str, Upstream | None]] = field(default_factory=list)
    bridges: list[WebSocketProxy] = field(default_factory=list)
    stores: list[RateStore] = field(default_factory=list)
    in_flight: int = 0

    async def start(self) -> None:
        """Start background work: active health probes."""
        for upstream in self.upstreams.values():
            await upstream.start()

    def retire(self) -> None:
        """A reload replaced this configuration: stop its health probes now."""
        for upstream in self.upstreams.values():
            upstream.stop_health_checks()

    async def aclose(self) -> None:
        """Close backend connections, health probes and rate-limit stores."""
        for upstream in self.upstreams.values():
            await upstream.aclose()
        for store in self.stores:
            await store.aclose()

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """Backend connection pool sizes per upstream (``connections``, ``idle``, ``waiting``)."""
        stats: dict[str, dict[str, int]] = {}
        for name, upstream in self.upstreams.items():
            pool_stats = getattr(upstream.transport, "pool_stats", None)
            if callable(pool_stats):
                stats[name] = dict(pool_stats())
        return stats


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
    builder = StackBuilder(settings)
    # One pool per name, shared by every route (and both proxies) that use it; a route's
    # URL is a pool of one target, shared by the routes with the same URL.
    upstreams: dict[str, Upstream] = {}
    for name, pool in settings.upstreams.items():
        made = builder.make(f"upstreams.{name}", functools.partial(make_upstream, name, pool))
        if made is not None:
            upstreams[name] = made
    routes = []
    route_upstreams: list[tuple[str, Upstream | None]] = []
    bridges = []
    for index, route in enumerate(settings.routes):
        timeouts = route.timeouts or settings.timeouts
        label = route_label(route.prefix, route.hosts)
        upstream: Upstream | None = None
        if route.upstream is not None:
            upstream = upstreams.get(route.upstream)
            if upstream is None:
                upstream = Upstream([route.upstream], name=route.upstream)
                upstreams[route.upstream] = upstream
        route_upstreams.append((label, upstream))
        http_app: ASGIApp | None = None
        ws_app: ASGIApp | None = None
        if route.root is not None:
            # A directory served by the gateway itself (nginx root/index); no WebSocket.
            files = builder.make(
                f"routes.{index}.root",
                functools.partial(static_app, route.root, index=route.index),
            )
            http_app = None if files is None else builder.wrap(files, route, index)
        elif route.http and upstream is not None:
            proxy = ReverseProxy(
                upstream,
                timeout=_timeout(timeouts),
                forwarding=_forwarding(settings, route),
                rewrite_location=settings.forwarding.rewrite_location,
                pass_date_server=settings.forwarding.pass_date_server,
                websocket=False,  # the route's bridge below takes upgrades, with its stack
            )
            http_app = builder.wrap(proxy, route, index)
        if upstream is not None and route.websocket:
            observer = metrics.route(label) if metrics is not None else None
            bridge = websocket_bridge(settings, route, upstream, observer)
            bridges.append(bridge)
            ws_app = builder.wrap(bridge, route, index, websocket=True)
        if metrics is not None and http_app is not None:
            # Outside the route's stack, so its own answers (401, 429, 413...) count too.
            http_app = MetricsMiddleware(http_app, metrics=metrics, route=label)
        limits = route.limits or settings.limits
        routes.append(
            Route(
                route.prefix,
                http_app,
                ws_app,
                route.strip_prefix,
                tuple(route.hosts),
                reject_dot_segments=limits.reject_dot_segments,
                reject_ambiguous_paths=limits.reject_ambiguous_paths,
                case_insensitive=route.case_insensitive,
            )
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
    return Gateway(app, router, upstreams, route_upstreams, bridges, builder.stores)


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
        relay=ws.relay,
        observer=observer,
    )


class _Live:
    """The live configuration; ``reload_app`` swaps it between requests.

    A replaced configuration is retired: its health probes stop at once, and it is
    closed (backend connections, rate-limit stores) when its last request or WebSocket
    session ends - at once if none is running.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.retired: list[Gateway] = []
        self._closing: set[asyncio.Task[None]] = set()

    def replace(self, gateway: Gateway) -> None:
        """Make ``gateway`` live and retire the one it replaces."""
        old, self.gateway = self.gateway, gateway
        old.retire()
        self.retired.append(old)
        if old.in_flight == 0:
            self.close_retired(old)

    def close_retired(self, gateway: Gateway) -> None:
        """Close a retired configuration that nothing uses any more."""
        if gateway in self.retired:
            self.retired.remove(gateway)
            task = asyncio.get_running_loop().create_task(gateway.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close the live configuration and every retired one (the server stops)."""
        for gateway in [self.gateway, *self.retired]:
            await gateway.aclose()
        self.retired.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.router(scope, receive, send)
            return
        # Counted, so that a configuration replaced by a reload is closed when the last
        # request or session that started on it ends.
        gateway = self.live.gateway
        gateway.in_flight += 1
        try:
            await gateway.app(scope, receive, send)
        finally:
            gateway.in_flight -= 1
            if gateway.in_flight == 0 and gateway is not self.live.gateway:
                self.live.close_retired(gateway)


def create_app(settings: Settings | None = None) -> Starlette:
    """The gateway as an ASGI app; ``settings`` default to ``load_settings()``."""
    if settings is None:
        settings = load_settings()
    metrics = Metrics()
    live = _Live(build_gateway(settings, metrics))
    metrics.watch_upstreams(lambda: live.gateway.upstreams)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await live.gateway.start()
        try:
            yield
        finally:
            await live.aclose()

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
        status_source=GatewayStatus(
            lambda: live.gateway,
            metrics,
            lambda: len(live.retired),
            certificates=getattr(app.state, "certificate_status", None),
        ),
        allowed_hosts=settings.admin.allowed_hosts,
        ready_needs_backends=settings.admin.readiness == "backends",
    )


async def reload_app(app: Starlette, settings: Settings) -> None:
    """Switch ``app`` to ``settings``; requests and sessions in flight keep the old ones.

    Raises ConfigError (and changes nothing) if the new settings do not build.
    """
    live: _Live = app.state.live
    gateway = build_gateway(settings, app.state.metrics)
    await gateway.start()
    live.replace(gateway)


async def close_websockets(app: Starlette, grace_s: float) -> None:
    """Let open WebSocket sessions end within ``grace_s``, then close them with 1001."""
    live: _Live = app.state.live
    bridges = [bridge for g in [live.gateway, *live.retired] for bridge in g.bridges]
    await asyncio.gather(*(bridge.shutdown(grace_s=grace_s) for bridge in bridges))
