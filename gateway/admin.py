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
import base64
import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
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
    ) -> None:
        self._gateway = gateway
        self.metrics = metrics
        self._retired = retired

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
        gateway = self.current()
        if gateway is None:
            return {
                "settings_loaded": False,
                "routes": [],
                "pool": None,
                "websocket_sessions": 0,
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
.target.up::before { color: var(--ok); }
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
  if (target.down) return "down";
  return target.healthy === true ? "healthy" : "up";
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
