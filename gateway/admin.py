"""The admin app, for a separate listener (127.0.0.1 by default): health, metrics, status.

- ``/healthz``  200 ``ok`` while the process serves at all (liveness);
- ``/readyz``   200 ``ready``, or 503 with a one-line reason: settings not loaded, or a
  route whose every target is down (readiness; a target never checked counts as up);
- ``/metrics``  Prometheus text format from the gateway's own registry;
- ``/status``   an HTML page (no external resources) refreshing itself every 2 s from
  ``/status.json``: routes, targets and their health, live counts, recent errors.

The app knows the gateway only through a ``StatusSource``: a callable returning a plain
dict (see ``GatewayStatus`` for its shape and the adapter over ``gateway.app.Gateway``).

The listener is internal, so internal addresses may appear; credentials never do.  As
a guard against DNS rebinding (a web page making a browser read a localhost listener),
only requests whose Host is an IP address, ``localhost`` or in ``allowed_hosts`` are
answered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.lifespan import serve_lifespan
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["AdminApp", "GatewayStatus", "StatusSource", "admin_app", "readiness"]

Readiness = Callable[[], tuple[bool, str]]


class StatusSource(Protocol):
    """Returns a snapshot of the gateway as plain data::

    {"settings_loaded": bool,
     "routes": [{"name", "upstream", "http", "websocket",
                 "targets": [{"address": "host:port", "healthy": True | False | None,
                              "down": bool, "fails": int, "last_error": str | None}]}],
     "pool": {"connections", "idle", "waiting"} | None,
     "websocket_sessions": int,
     "process": {"asyncio_tasks", "open_fds", "retired_configurations"}}

    ``healthy`` is the active health check's verdict (None without one); ``down`` is
    that or recent failures (nginx's ``max_fails``/``fail_timeout``).
    """

    def __call__(self) -> Mapping[str, Any]: ...


def readiness(snapshot: Mapping[str, Any], *, backends: bool = True) -> tuple[bool, str]:
    """Ready when settings are loaded and (with ``backends``) every route has a target
    that is not down."""
    if not snapshot.get("settings_loaded"):
        return False, "settings not loaded"
    routes = snapshot.get("routes") or []
    if not routes:
        return False, "no routes"
    if not backends:
        return True, "ready"
    for route in routes:
        targets = route.get("targets") or []
        if targets and all(target.get("down") for target in targets):
            errors = sorted({str(t["last_error"]) for t in targets if t.get("last_error")})
            why = f" (last error: {', '.join(errors)})" if errors else ""
            return False, f"route {route.get('name')}: no usable target{why}"
    return True, "ready"


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        return None


class GatewayStatus:
    """A ``StatusSource`` over a running ``Gateway``, reading public attributes only.

    ``gateway`` may be a callable returning the current one (None before settings
    are loaded), so a reload that swaps the gateway is followed; ``retired`` returns
    how many replaced configurations still finish requests or sessions.
    """

    def __init__(
        self,
        gateway: Gateway | Callable[[], Gateway | None],
        metrics: Metrics | None = None,
        retired: Callable[[], int] = lambda: 0,
        *,
        certificates: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._gateway = gateway
        self.metrics = metrics
        self._retired = retired
        # The served certificates (``CertificateStore.status``); None without TLS.
        self._certificates = certificates

    def current(self) -> Gateway | None:
        """The gateway being reported on."""
        gateway = self._gateway
        return gateway() if callable(gateway) else gateway

    def __call__(self) -> dict[str, Any]:
        process = {
            "asyncio_tasks": len(asyncio.all_tasks()),
            "open_fds": _open_fds(),
            "retired_configurations": self._retired(),
        }
        certificates = self._certificates() if self._certificates is not None else []
        gateway = self.current()
        if gateway is None:
            return {
                "settings_loaded": False,
                "routes": [],
                "pool": None,
                "websocket_sessions": 0,
                "certificates": certificates,
                "process": process,
            }
        routes = []
        pairs = zip(gateway.route_upstreams, gateway.router.routes, strict=True)
        for (name, upstream), route in pairs:
            targets = [
                {
                    "address": target.address,
                    "healthy": target.healthy,
                    "down": target.down,
                    "fails": target.fails,
                    "last_error": target.last_error,
                }
                for target in (upstream.status() if upstream is not None else ())
            ]
            routes.append(
                {
                    "name": name,
                    "upstream": upstream.name if upstream is not None else None,
                    "http": route.http is not None,
                    "websocket": route.websocket is not None,
                    "targets": targets,
                }
            )
        pool = {"connections": 0, "idle": 0, "waiting": 0}
        for stats in gateway.pool_stats().values():
            for key in pool:
                pool[key] += stats.get(key, 0)
        return {
            "settings_loaded": True,
            "routes": routes,
            "pool": pool,
            "websocket_sessions": sum(bridge.active_sessions for bridge in gateway.bridges),
            "certificates": certificates,
            "process": process,
        }


def _is_allowed_host(host: str, allowed: frozenset[str]) -> bool:
    if "*" in allowed:
        return True
    name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
    name = name.strip("[]").lower()
    if name in allowed or name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AdminApp:
    """The admin ASGI app (see the module docstring); build it with ``admin_app()``."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        status_source: StatusSource,
        ready: Readiness | None = None,
        allowed_hosts: Iterable[str] = (),
        ready_needs_backends: bool = True,
    ) -> None:
        self.metrics = metrics
        self.status_source = status_source
        self.ready_needs_backends = ready_needs_backends
        self.ready = ready if ready is not None else self._ready
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)

    def _ready(self) -> tuple[bool, str]:
        return readiness(self.status_source(), backends=self.ready_needs_backends)

    def __repr__(self) -> str:
        return f"AdminApp(allowed_hosts={sorted(self.allowed_hosts)!r})"

    def status(self) -> dict[str, Any]:
        """The ``/status.json`` document: the source's snapshot with live counts merged in."""
        snapshot = dict(self.status_source())
        counts = self.metrics.snapshot()
        per_route = counts.pop("routes")
        zero = {"requests": 0, "server_errors": 0, "upstream_errors": 0, "websocket_open": 0}
        snapshot["routes"] = [
            {**route, "counts": per_route.get(route.get("name"), zero)}
            for route in snapshot.get("routes") or []
        ]
        ok, reason = readiness(snapshot, backends=self.ready_needs_backends)
        snapshot.update(counts, time_s=time.time(), ready={"ok": ok, "reason": reason})
        return snapshot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # a WebSocket handshake is refused with 403 by the server
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if not _is_allowed_host(host, self.allowed_hosts):
            await _respond(scope, send, 403, b"host not allowed\n")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(scope, send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        path = scope["path"][len(scope.get("root_path", "")) :] or "/"
        if path == "/healthz":
            await _respond(scope, send, 200, b"ok\n")
        elif path == "/readyz":
            ok, reason = self.ready()
            await _respond(scope, send, 200 if ok else 503, f"{reason}\n".encode())
        elif path == "/metrics":
            accept = ", ".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"accept")
            body, content_type = self.metrics.render(accept)
            await _respond(scope, send, 200, body, content_type=content_type.encode())
        elif path == "/status.json":
            body = json.dumps(self.status(), separators=(",", ":")).encode()
            await _respond(scope, send, 200, body, content_type=b"application/json")
        elif (page := STATUS_FILES.get("/status" if path == "/" else path)) is not None:
            body, page_type = page
            await _respond(
                scope,
                send,
                200,
                body,
                [(b"content-security-policy", _PAGE_CSP)],
                content_type=page_type,
            )
        else:
            await _respond(scope, send, 404, b"not found\n")


def admin_app(
    *,
    metrics: Metrics,
    status_source: StatusSource,
    ready: Readiness | None = None,
    allowed_hosts: Iterable[str] = (),
    ready_needs_backends: bool = True,
) -> ASGIApp:
    """The admin app; ``ready()`` defaults to ``readiness(status_source())``."""
    return AdminApp(
        metrics=metrics,
        status_source=status_source,
        ready=ready,
        allowed_hosts=allowed_hosts,
        ready_needs_backends=ready_needs_backends,
    )


async def _respond(
    scope: Scope,
    send: Send,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _static(name: str) -> bytes:
    return resources.files("gateway").joinpath("static", name).read_bytes()


# The status page: package data files (gateway/static), served from the package.
STATUS_FILES = {
    "/status": (_static("status.html"), b"text/html; charset=utf-8"),
    "/status.css": (_static("status.css"), b"text/css; charset=utf-8"),
    "/status.js": (_static("status.js"), b"text/javascript; charset=utf-8"),
}
STATUS_PAGE = STATUS_FILES["/status"][0]
_PAGE_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
