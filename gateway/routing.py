"""The route table: path-prefix matching and dispatch to each route's apps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.responses import send_text

__all__ = ["Route", "Router", "match_route", "prefix_matches"]


@dataclass(frozen=True, slots=True)
class Route:
    """Requests under ``prefix`` go to ``http`` (plain requests) or ``websocket`` (upgrades)."""

    prefix: str
    http: ASGIApp | None
    websocket: ASGIApp | None
    strip_prefix: bool = False


def prefix_matches(prefix: str, path: str) -> bool:
    """True if ``path`` is ``prefix`` or below it, on a segment boundary.

    ``/api`` matches ``/api``, ``/api/`` and ``/api/x``, not ``/apix``.
    """
    if prefix == "/":
        return True
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


def match_route(routes: Sequence[Route], path: str) -> Route | None:
    """The route with the longest prefix that matches ``path``; ``routes`` sorted longest first."""
    for route in routes:
        if prefix_matches(route.prefix, path):
            return route
    return None


class Router:
    """ASGI dispatcher over a route table; unmatched requests get 404 from the gateway."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = sorted(routes, key=lambda route: len(route.prefix), reverse=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return
        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        # Under a mount, ASGI paths include root_path; match on the part below it.
        local = path[len(root_path) :] if root_path and path.startswith(root_path) else path
        route = match_route(self.routes, local or "/")
        app = None if route is None else (route.http if kind == "http" else route.websocket)
        if route is None or app is None:
            await send_text(scope, send, 404)
            return
        if route.strip_prefix and route.prefix != "/":
            scope = dict(scope)
            scope["root_path"] = root_path + route.prefix
        await app(scope, receive, send)
