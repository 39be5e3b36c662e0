"""Settings -> Starlette app: routes, middleware stack, lifespan (backend client pools).

``uvicorn gateway.app:create_app --factory`` reads its settings from the file named
by ``GATEWAY_CONFIG`` (built-in defaults without it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.middleware.origin import OriginCheckMiddleware
from gateway.proxy.forwarding import ForwardingOptions
from gateway.proxy.http import ReverseProxy
from gateway.proxy.websocket import WebSocketProxy
from gateway.routing import Route, Router
from gateway.settings import RouteSettings, Settings, load_settings

__all__ = ["build_router", "close_websockets", "create_app"]


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


def build_router(
    settings: Settings, transport: httpx.AsyncBaseTransport
) -> tuple[Router, list[WebSocketProxy]]:
    """The route table for ``settings`` (proxies share ``transport``) and its WebSocket bridges."""
    routes = []
    bridges = []
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
            bridge = websocket_bridge(settings, route)
            bridges.append(bridge)
            # Cross-site WebSocket hijacking is refused before any backend is contacted.
            ws_app = OriginCheckMiddleware(
                bridge,
                allow=settings.websocket.origins,
                allow_missing=settings.websocket.allow_missing_origin,
            )
        routes.append(Route(route.prefix, http_app, ws_app, route.strip_prefix))
    return Router(routes), bridges


def websocket_bridge(settings: Settings, route: RouteSettings) -> WebSocketProxy:
    """The WebSocket bridge of a route."""
    ws = settings.websocket
    return WebSocketProxy(
        route.upstream,
        forwarding=_forwarding(settings, route),
        open_timeout_s=settings.timeouts.connect_s,
        idle_timeout_s=settings.timeouts.websocket_idle_s,
        ping_interval_s=ws.ping_interval_s,
        ping_timeout_s=ws.ping_timeout_s,
        max_message_bytes=ws.max_message_bytes,
    )


def create_app(settings: Settings | None = None) -> Starlette:
    """The gateway as an ASGI app; ``settings`` default to ``load_settings()``."""
    if settings is None:
        settings = load_settings()
    transport = make_transport(settings)
    router, bridges = build_router(settings, transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await transport.aclose()

    app = Starlette(routes=[Mount("", app=router)], lifespan=lifespan)
    app.state.settings = settings
    app.state.websocket_bridges = bridges
    return app


async def close_websockets(app: Starlette, grace_s: float) -> None:
    """Let open WebSocket sessions end within ``grace_s``, then close them with 1001."""
    bridges: list[WebSocketProxy] = app.state.websocket_bridges
    await asyncio.gather(*(bridge.shutdown(grace_s=grace_s) for bridge in bridges))
