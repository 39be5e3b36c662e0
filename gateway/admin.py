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

import base64
import hashlib
import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.lifespan import serve_lifespan
from gateway.metrics import Metrics, route_label

if TYPE_CHECKING:
    from gateway.app import Gateway

__all__ = ["AdminApp", "GatewayStatus", "StatusSource", "admin_app", "readiness"]

Readiness = Callable[[], tuple[bool, str]]


class StatusSource(Protocol):
    """Returns a snapshot of the gateway as plain data::

    {"settings_loaded": bool,
     "routes": [{"name", "upstream", "http", "websocket",
                 "targets": [{"address": "host:port", "healthy": True | False | None}]}],
     "pool": {"connections", "idle", "waiting"} | None,
     "websocket_sessions": int}
    """

    def __call__(self) -> Mapping[str, Any]: ...


def readiness(snapshot: Mapping[str, Any]) -> tuple[bool, str]:
    """Ready when settings are loaded and every route has a target not known to be down."""
    if not snapshot.get("settings_loaded"):
        return False, "settings not loaded"
    routes = snapshot.get("routes") or []
    if not routes:
        return False, "no routes"
    for route in routes:
        targets = route.get("targets") or []
        if targets and all(target.get("healthy") is False for target in targets):
            return False, f"route {route.get('name')}: no healthy target"
    return True, "ready"


def _default_target(upstream: str) -> str | None:
    parts = urlsplit(upstream)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    if port is None:
        port = 443 if parts.scheme in ("https", "wss") else 80
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


def _upstream_of(app: object) -> str | None:
    """The ``upstream`` of the proxy under a stack of middleware (each with ``.app``)."""
    for _ in range(64):
        upstream = getattr(app, "upstream", None)
        if isinstance(upstream, str):
            return upstream
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class GatewayStatus:
    """A ``StatusSource`` over a running ``Gateway``, reading public attributes only.

    ``gateway`` may be a callable returning the current one (None before settings
    are loaded), so a reload that swaps the gateway is followed.  Target health comes
    from what health checks reported to ``metrics.set_target_health(upstream, ...)``
    with the route's upstream URL as ``upstream``; a route without reports shows its
    upstream's address with unknown health.
    """

    def __init__(
        self, gateway: Gateway | Callable[[], Gateway | None], metrics: Metrics | None = None
    ) -> None:
        self._gateway = gateway
        self.metrics = metrics

    def current(self) -> Gateway | None:
        """The gateway being reported on."""
        gateway = self._gateway
        return gateway() if callable(gateway) else gateway

    def __call__(self) -> dict[str, Any]:
        gateway = self.current()
        if gateway is None:
            return {"settings_loaded": False, "routes": [], "pool": None, "websocket_sessions": 0}
        health = self.metrics.target_health() if self.metrics is not None else {}
        routes = []
        for route in gateway.router.routes:
            upstream = _upstream_of(route.http) or _upstream_of(route.websocket)
            targets = [
                {"address": target, "healthy": healthy}
                for (pool, target), healthy in sorted(health.items())
                if pool == upstream
            ]
            if not targets and upstream is not None:
                address = _default_target(upstream)
                if address is not None:
                    targets.append({"address": address, "healthy": None})
            routes.append(
                {
                    "name": route_label(route.prefix, getattr(route, "hosts", ())),
                    "upstream": upstream,
                    "http": route.http is not None,
                    "websocket": route.websocket is not None,
                    "targets": targets,
                }
            )
        pool_stats = getattr(gateway.transport, "pool_stats", None)
        return {
            "settings_loaded": True,
            "routes": routes,
            "pool": dict(pool_stats()) if callable(pool_stats) else None,
            "websocket_sessions": sum(bridge.active_sessions for bridge in gateway.bridges),
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


def _csp_source(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return f"'sha256-{digest}'"


class AdminApp:
    """The admin ASGI app (see the module docstring); build it with ``admin_app()``."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        status_source: StatusSource,
        ready: Readiness | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.metrics = metrics
        self.status_source = status_source
        self.ready = ready if ready is not None else lambda: readiness(status_source())
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)

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
        ok, reason = readiness(snapshot)
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
        elif path in ("/status", "/"):
            await _respond(
                scope,
                send,
                200,
                STATUS_PAGE,
                [(b"content-security-policy", _PAGE_CSP)],
                content_type=b"text/html; charset=utf-8",
            )
        else:
            await _respond(scope, send, 404, b"not found\n")


def admin_app(
    *,
    metrics: Metrics,
    status_source: StatusSource,
    ready: Readiness | None = None,
    allowed_hosts: Iterable[str] = (),
) -> ASGIApp:
    """The admin app; ``ready()`` defaults to ``readiness(status_source())``."""
    return AdminApp(
        metrics=metrics, status_source=status_source, ready=ready, allowed_hosts=allowed_hosts
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


_STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --muted: #6e7781; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; }
header { display: flex; gap: 1rem; align-items: baseline; }
h1 { font-size: 1.3rem; margin: 0; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
.muted { color: var(--muted); }
.badge { border-radius: 1rem; padding: .1rem .6rem; font-size: .85rem; border: 1px solid; }
.badge[data-state="live"], .badge[data-ready="true"] { color: var(--ok); }
.badge[data-state="stale"], .badge[data-ready="false"] { color: var(--bad); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .75rem; }
.card { border: 1px solid var(--muted); border-radius: .4rem; padding: .6rem .8rem; }
.card .value { font-size: 1.6rem; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.mono { font-family: ui-monospace, monospace; }
.target { display: inline-block; margin-right: .5rem; font-family: ui-monospace, monospace; }
.target::before { content: "\\25CF "; }
.target.healthy::before { color: var(--ok); }
.target.down::before { color: var(--bad); }
.target.unchecked::before { color: var(--muted); }
"""

_SCRIPT = """
"use strict";
const REFRESH_MS = 2000;
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function show(id, value) { document.getElementById(id).textContent = String(value); }
function health(target) {
  return target.healthy === true ? "healthy" : target.healthy === false ? "down" : "unchecked";
}
function renderRoutes(routes) {
  const rows = routes.map((route) => {
    const row = el("tr");
    row.dataset.route = route.name;
    const serves = [route.http && "HTTP", route.websocket && "WebSocket"].filter(Boolean);
    row.append(el("td", route.name, "mono"), el("td", route.upstream || "-", "mono"),
               el("td", serves.join(" + ")));
    const targets = el("td");
    for (const target of route.targets || []) {
      const state = health(target);
      const item = el("span", target.address + " " + state, "target " + state);
      item.dataset.target = target.address;
      item.dataset.health = state;
      targets.append(item);
    }
    row.append(targets);
    const counts = route.counts || {};
    for (const key of ["requests", "server_errors", "upstream_errors", "websocket_open"]) {
      const cell = el("td", counts[key] ?? 0, "num");
      cell.dataset.count = key;
      row.append(cell);
    }
    return row;
  });
  document.querySelector("#routes tbody").replaceChildren(...rows);
}
function renderErrors(errors) {
  const rows = errors.map((error) => {
    const row = el("tr");
    const when = new Date(error.time_s * 1000).toLocaleTimeString([], {hour12: false});
    row.append(el("td", when, "mono"), el("td", error.route, "mono"),
               el("td", error.kind), el("td", error.message, "mono"));
    return row;
  });
  document.querySelector("#recent-errors tbody").replaceChildren(...rows);
  document.getElementById("no-errors").hidden = errors.length > 0;
}
function render(status) {
  show("rate", Number(status.requests_per_s).toFixed(1));
  show("requests", status.requests_total);
  // The bridges' own count when the source has it; else what observers reported.
  show("websockets", status.websocket_sessions ?? status.websocket_open);
  show("errors", status.upstream_errors_total);
  show("server-errors", status.server_errors_total);
  const pool = status.pool;
  show("pool", pool ? pool.connections + " (" + pool.idle + " idle)" : "-");
  const ready = document.getElementById("ready");
  ready.dataset.ready = String(status.ready.ok);
  ready.textContent = status.ready.ok ? "ready" : "not ready: " + status.ready.reason;
  renderRoutes(status.routes || []);
  renderErrors(status.recent_errors || []);
  const when = new Date(status.time_s * 1000).toLocaleTimeString([], {hour12: false});
  show("updated", "updated " + when);
}
async function refresh() {
  const live = document.getElementById("live");
  try {
    const response = await fetch("status.json", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    live.dataset.state = "live";
    live.textContent = "live";
  } catch (error) {
    live.dataset.state = "stale";
    live.textContent = "disconnected";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
"""

STATUS_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Gateway status</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>Gateway status</h1>
<span id="live" class="badge" data-state="connecting">connecting</span>
<span id="ready" class="badge" data-ready="unknown">-</span>
<span id="updated" class="muted"></span>
</header>
<h2>Live</h2>
<section class="cards">
<div class="card"><div class="muted">Requests/s</div><div class="value" id="rate">-</div></div>
<div class="card"><div class="muted">Requests</div><div class="value" id="requests">-</div></div>
<div class="card"><div class="muted">Open WebSocket sessions</div>
<div class="value" id="websockets">-</div></div>
<div class="card"><div class="muted">Upstream errors</div>
<div class="value" id="errors">-</div></div>
<div class="card"><div class="muted">5xx answers</div>
<div class="value" id="server-errors">-</div></div>
<div class="card"><div class="muted">Backend connections</div>
<div class="value" id="pool">-</div></div>
</section>
<h2>Routes</h2>
<table id="routes">
<thead><tr><th>Route</th><th>Upstream</th><th>Serves</th><th>Targets</th><th>Requests</th>
<th>5xx</th><th>Upstream errors</th><th>WebSockets</th></tr></thead>
<tbody></tbody>
</table>
<h2>Recent errors</h2>
<table id="recent-errors">
<thead><tr><th>Time</th><th>Route</th><th>Kind</th><th>Message</th></tr></thead>
<tbody></tbody>
</table>
<p id="no-errors" class="muted">None.</p>
<script>{_SCRIPT}</script>
</body>
</html>
""".encode()

_PAGE_CSP = (
    f"default-src 'none'; script-src {_csp_source(_SCRIPT)}; style-src {_csp_source(_STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
).encode()
