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
from gateway.proxy.http import ReverseProxy
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
        routes.append(Route(route.prefix, http_app, None, route.strip_prefix))
    return Router(routes)


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
