"""Settings -> Starlette app: routes, middleware stack, lifespan (backend client pools).

``uvicorn gateway.app:create_app --factory`` reads its settings from the file named
by ``GATEWAY_CONFIG`` (built-in defaults without it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.proxy.forwarding import ForwardingOptions
from gateway.middleware.origin import OriginCheckMiddleware
from gateway.proxy.http import ReverseProxy
from gateway.proxy.websocket import WebSocketProxy
from gateway.routing import Route, Router
from gateway.settings import RouteSettings, Settings, load_settings

__all__ = ["build_router", "create_app"]


def _timeout(settings: Settings) -> httpx.Timeout:
    t = settings.timeouts
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


def make_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    """The one backend transport (connection pools) that all routes share."""
    return httpx.AsyncHTTPTransport(retries=0, limits=httpx.Limits(max_connections=512))


def build_router(settings: Settings, transport: httpx.AsyncBaseTransport) -> Router:
    """The route table for ``settings``, every route's proxy sharing ``transport``."""
    routes = []
    for route in settings.routes:
        http_app = None
        if route.http:
            http_app = ReverseProxy(
                route.upstream,
                transport=transport,
                timeout=_timeout(settings),
                forwarding=_forwarding(settings, route),
                max_body_bytes=settings.limits.max_body_bytes or None,
                rewrite_location=settings.forwarding.rewrite_location,
            )
        ws_app = None
        if route.websocket:
            ws_app = websocket_app(settings, route)
        routes.append(Route(route.prefix, http_app, ws_app, route.strip_prefix))
    return Router(routes)


def websocket_app(settings: Settings, route: RouteSettings) -> OriginCheckMiddleware:
    """The WebSocket bridge of a route, behind the Origin allowlist."""
    ws = settings.websocket
    bridge = WebSocketProxy(
        route.upstream,
        forwarding=_forwarding(settings, route),
        open_timeout_s=settings.timeouts.connect_s,
        idle_timeout_s=settings.timeouts.websocket_idle_s,
        ping_interval_s=ws.ping_interval_s,
        ping_timeout_s=ws.ping_timeout_s,
        max_message_bytes=ws.max_message_bytes,
    )
    # Cross-site WebSocket hijacking is refused before any backend is contacted.
    return OriginCheckMiddleware(bridge, allow=ws.origins, allow_missing=ws.allow_missing_origin)


def create_app(settings: Settings | None = None) -> Starlette:
    """The gateway as an ASGI app; ``settings`` default to ``load_settings()``."""
    if settings is None:
        settings = load_settings()
    transport = make_transport(settings)
    router = build_router(settings, transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await transport.aclose()

    app = Starlette(routes=[Mount("", app=router)], lifespan=lifespan)
    app.state.settings = settings
    return app
