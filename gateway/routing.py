"""The route table: host and path-prefix matching, and dispatch to each route's apps.

Precedence, like nginx choosing a ``server_name`` and then a ``location``:

1. Host rank. Routes that name the request's host exactly come first; then wildcard
   routes (``*.example.com``: any subdomain at any depth, never the apex), the longest
   suffix first (``*.api.example.com`` before ``*.example.com``); then routes without
   hosts, which take any host.
2. Within one host rank, the longest path prefix wins (on segment boundaries:
   ``/api`` matches ``/api`` and ``/api/x``, not ``/apix``); equal prefixes keep the
   order they were given in.

The first route in that order whose prefix matches is the answer. Unlike nginx, a host
whose routes do not cover the path falls through to the next rank (so a host-specific
``/v2`` route can sit on top of a catch-all site); a route ``/`` with neither app for
that host gives it nginx's isolation (404 for everything else). A route is matched on
host and path only: if it has no app for the request's kind (HTTP or WebSocket) the
answer is 404, not a shorter route.

Hosts compare case-insensitively against the Host header without its port (``[::1]:8443``
is ``[::1]``) and without one trailing dot. A request without Host only matches routes
without hosts; one with several Host headers gets 400 when any route names hosts.

Dot segments: a route refuses (400) a request whose path has a ``.`` or ``..`` segment,
literal or percent-encoded (:func:`has_dot_segment`), unless its ``reject_dot_segments``
is off. Routes match the decoded path without resolving dot segments, so without this a
backend that resolves them itself could turn ``/x/../api/secret``, routed to ``/``, into
``/api/secret``, which a stricter route may guard. Browsers and curl resolve dot
segments before sending, so no ordinary client sends one.

Everything that can be is worked out when the table is built: routes are grouped by exact
host in a dict and by wildcard suffix in another, each group sorted once, so one request
costs a header scan, one dict lookup per wildcard depth in use and a few ``startswith``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.path_rules import ambiguous_path, has_dot_segment
from gateway.request_rules import valid_host
from gateway.responses import send_text

__all__ = [
    "Route",
    "RouteTable",
    "Router",
    "ascii_lower",
    "has_dot_segment",
    "match_route",
    "normalise_host",
    "normalise_host_pattern",
    "prefix_matches",
]

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def normalise_host(value: str) -> str:
    """A Host header value as routes compare it: lower case, no port, no trailing dot.

    ``"Example.COM:8443"`` -> ``"example.com"``, ``"[::1]:8443"`` -> ``"[::1]"``.
    """
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    if host.endswith("."):
        host = host[:-1]
    return host


def normalise_host_pattern(pattern: str) -> str:
    """A route's host pattern checked and normalised; ValueError names a bad one.

    Exact names (``example.com``, ``127.0.0.1``, ``[::1]`` or ``::1``) and leading
    wildcards (``*.example.com``) are allowed; no ports, no other wildcards. Non-ASCII
    names become their IDNA (punycode) form, which is what clients send.
    """
    text = pattern.strip().lower()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"host pattern {pattern!r} is not a valid host name") from None
    if not wildcard and ":" in name:
        bracketed = name.startswith("[") and name.endswith("]")
        try:
            ipaddress.IPv6Address(name[1:-1] if bracketed else name)
        except ValueError:
            raise ValueError(
                f"host pattern {pattern!r}: hosts are matched without a port"
            ) from None
        return name if bracketed else f"[{name}]"
    if not name or not set(name) <= _HOST_CHARS or "" in name.split("."):
        hint = " (only a leading '*.' wildcard is supported)" if "*" in name else ""
        raise ValueError(f"host pattern {pattern!r} is not a valid host name{hint}")
    return f"*.{name}" if wildcard else name


@dataclass(frozen=True, slots=True)
class Route:
    """Requests for ``hosts`` under ``prefix`` go to ``http`` (plain) or ``websocket`` (upgrades).

    ``hosts`` empty means any host. ``strip_prefix`` hands the app the path below the
    prefix (as ASGI ``root_path``), like nginx ``proxy_pass http://backend/``.
    ``reject_dot_segments`` answers 400 to a path with a ``.`` or ``..`` segment
    (:func:`has_dot_segment`), ``reject_ambiguous_paths`` to one that a backend may
    normalise into another (:func:`ambiguous_path`); off, the raw path reaches the app
    byte for byte. ``case_insensitive`` matches the prefix without regard to ASCII case
    (``/admin`` takes ``/ADMIN/x``), for a backend that routes that way.
    """

    prefix: str
    http: ASGIApp | None
    websocket: ASGIApp | None
    strip_prefix: bool = False
    hosts: tuple[str, ...] = ()
    reject_dot_segments: bool = True
    reject_ambiguous_paths: bool = True
    case_insensitive: bool = False

    def __post_init__(self) -> None:
        hosts = tuple(dict.fromkeys(normalise_host_pattern(host) for host in self.hosts))
        object.__setattr__(self, "hosts", hosts)
        if self.case_insensitive:
            object.__setattr__(self, "prefix", ascii_lower(self.prefix))


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """``text`` with A-Z folded to a-z only (its length never changes)."""
    return text.translate(_ASCII_LOWER)


def prefix_matches(prefix: str, path: str) -> bool:
    """True if ``path`` is ``prefix`` or below it, on a segment boundary.

    ``/api`` matches ``/api``, ``/api/`` and ``/api/x``, not ``/apix``.
    """
    if prefix == "/":
        return True
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


def _longest_prefix(routes: tuple[Route, ...], path: str) -> Route | None:
    folded: str | None = None
    for route in routes:  # sorted longest prefix first
        if route.case_insensitive:
            if folded is None:
                folded = ascii_lower(path)
            if prefix_matches(route.prefix, folded):
                return route
        elif prefix_matches(route.prefix, path):
            return route
    return None


def _by_prefix(routes: list[Route]) -> tuple[Route, ...]:
    # sorted() is stable: equal prefixes keep their configured order.
    return tuple(sorted(routes, key=lambda route: len(route.prefix), reverse=True))


class RouteTable:
    """Routes indexed for matching: exact hosts, wildcard suffixes, any host."""

    __slots__ = ("_any", "_exact", "_longest_suffix", "_wildcard", "routes", "uses_hosts")

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        exact: dict[str, list[Route]] = {}
        wildcard: dict[str, list[Route]] = {}
        any_host: list[Route] = []
        for route in self.routes:
            if not route.hosts:
                any_host.append(route)
            for pattern in route.hosts:
                if pattern.startswith("*."):
                    wildcard.setdefault(pattern[2:], []).append(route)
                else:
                    exact.setdefault(pattern, []).append(route)
        self._exact = {host: _by_prefix(group) for host, group in exact.items()}
        self._wildcard = {suffix: _by_prefix(group) for suffix, group in wildcard.items()}
        self._any = _by_prefix(any_host)
        self._longest_suffix = max(map(len, self._wildcard), default=0)
        self.uses_hosts = bool(exact or wildcard)

    def __repr__(self) -> str:
        return f"RouteTable({list(self.routes)!r})"

    def match(self, host: str | None, path: str) -> Route | None:
        """The route for ``host`` (a Host header value, or None) and ``path``; see the module."""
        if host and self.uses_hosts:
            name = normalise_host(host)
            group = self._exact.get(name)
            if group is not None and (route := _longest_prefix(group, path)) is not None:
                return route
            if self._wildcard and (route := self._match_wildcard(name, path)) is not None:
                return route
        return _longest_prefix(self._any, path)

    def _match_wildcard(self, name: str, path: str) -> Route | None:
        # Only suffixes as long as a configured one can match: start the search for the
        # separating dot there, so a hostile Host of many dots costs nothing extra.
        dot = name.find(".", max(1, len(name) - self._longest_suffix - 1))
        while dot != -1:
            if name[dot - 1] != ".":  # the label before the suffix must not be empty
                group = self._wildcard.get(name[dot + 1 :])
                if group is not None and (route := _longest_prefix(group, path)) is not None:
                    return route
            dot = name.find(".", dot + 1)
        return None


def match_route(routes: RouteTable | Sequence[Route], host: str | None, path: str) -> Route | None:
    """The most specific route for a Host header value and a path (precedence: see the module).

    Pass a prebuilt :class:`RouteTable`; a plain sequence is indexed on every call.
    """
    table = routes if isinstance(routes, RouteTable) else RouteTable(routes)
    return table.match(host, path)


_DOT_SEGMENT_TEXT = "400 Bad Request: '.' or '..' segment in the path"
_BAD_HOST_TEXT = "400 Bad Request: invalid Host header"


class Router:
    """ASGI dispatcher over a route table.

    Before any route: a request with more than one Host, or a Host that is not a valid
    ``host[:port]`` (``gateway.request_rules``), gets 400 - under any server, so that
    routing, the backend's URL parser, Location rewrites and forwarding headers all read
    the same host. Unmatched requests get 404; a path that its route refuses (dot
    segments, ambiguous forms) gets 400.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self.table = RouteTable(routes)
        self.routes = self.table.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return
        host: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                if host is not None:
                    await send_text(scope, send, 400, "400 Bad Request: more than one Host header")
                    return
                host = value
        if host is not None and not valid_host(host):
            await send_text(scope, send, 400, _BAD_HOST_TEXT)
            return
        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        # Under a mount, ASGI paths include root_path; match on the part below it.
        local = path[len(root_path) :] if root_path and path.startswith(root_path) else path
        route = self.table.match(host.decode("latin-1") if host else None, local or "/")
        app = None if route is None else (route.http if kind == "http" else route.websocket)
        if route is None or app is None:
            await send_text(scope, send, 404)
            return
        if route.reject_dot_segments or route.reject_ambiguous_paths:
            raw_path: bytes | None = scope.get("raw_path")
            raw = raw_path if raw_path is not None else path.encode()
            if route.reject_dot_segments and has_dot_segment(raw):
                await send_text(scope, send, 400, _DOT_SEGMENT_TEXT)
                return
            if route.reject_ambiguous_paths and (problem := ambiguous_path(raw)) is not None:
                await send_text(scope, send, 400, f"400 Bad Request: {problem}")
                return
        if route.strip_prefix and route.prefix != "/":
            scope = dict(scope)
            # The prefix as the client spelled it (a case-insensitive route folds it).
            scope["root_path"] = root_path + local[: len(route.prefix)]
        await app(scope, receive, send)
