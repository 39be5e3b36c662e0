"""The built-in echo backend behind ``gateway demo``.

Routes:

- ``/``      a small page that opens a WebSocket to its own origin and echoes what you type;
- ``/ws``    WebSocket echo: text comes back as text, binary as binary;
- ``/echo``  the request as JSON (method, path, query, headers, body size), any method.

The page derives ``wss:`` or ``ws:`` from ``location.protocol`` and the URL from its own
location, so it works unchanged behind the gateway (https) and directly (http), at any
host, port or mount prefix.  Elements have stable ids for browser tests: ``#status``
(``data-state`` = connecting/open/closed), ``#msg``, ``#send``, ``#send-binary`` and
``#log`` (one ``li`` per event with ``data-direction`` in/out/info and ``data-kind``
text/binary/info).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["DEMO_PAGE", "demo_app"]

DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gateway echo demo</title>
<style>
  :root { color-scheme: light dark; --accent: #2563eb; --muted: #6b7280; }
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 42rem; margin: 3rem auto;
         padding: 0 1rem; }
  h1 { font-size: 1.5rem; margin-bottom: .25rem; }
  p.lead { color: var(--muted); margin-top: 0; }
  #status { display: inline-block; padding: .1rem .6rem; border-radius: 1rem;
            font-size: .875rem; background: #9ca3af33; }
  #status[data-state="open"] { background: #16a34a33; }
  #status[data-state="closed"] { background: #dc262633; }
  form { display: flex; gap: .5rem; margin: 1rem 0; }
  input { flex: 1; padding: .5rem .75rem; font: inherit; border: 1px solid #9ca3af;
          border-radius: .375rem; }
  button { padding: .5rem 1rem; font: inherit; border: 0; border-radius: .375rem;
           background: var(--accent); color: white; cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  #log { list-style: none; padding: 0; font-family: ui-monospace, monospace; font-size: .875rem; }
  #log li { padding: .25rem .5rem; border-bottom: 1px solid #9ca3af33; }
  #log li[data-direction="in"]::before { content: "\\2190  "; color: #16a34a; }
  #log li[data-direction="out"]::before { content: "\\2192  "; color: var(--accent); }
  #log li[data-direction="info"] { color: var(--muted); }
  code { font-size: .875rem; }
</style>
</head>
<body>
<h1>WebSocket echo</h1>
<p class="lead">Connected to <code id="url"></code>
  <span id="status" data-state="connecting">connecting</span></p>
<form id="form">
  <input id="msg" autocomplete="off" placeholder="Type a message" value="hello">
  <button id="send" type="submit" disabled>Send</button>
  <button id="send-binary" type="button" disabled>Send binary</button>
</form>
<ul id="log"></ul>
<script>
"use strict";
// Same origin as this page: wss: behind TLS, ws: otherwise. The path is relative so
// the demo also works when mounted under a prefix.
const url = new URL("ws", location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const $ = (id) => document.getElementById(id);
const statusBadge = $("status");
$("url").textContent = url.href;

function log(direction, kind, text) {
  const item = document.createElement("li");
  item.dataset.direction = direction;
  item.dataset.kind = kind;
  item.textContent = text;
  $("log").prepend(item);
}

function setState(state, label) {
  statusBadge.dataset.state = state;
  statusBadge.textContent = label;
  $("send").disabled = $("send-binary").disabled = state !== "open";
}

const socket = new WebSocket(url);
socket.binaryType = "arraybuffer";
socket.addEventListener("open", () => setState("open", "open"));
socket.addEventListener("close", (event) => {
  setState("closed", "closed");
  log("info", "info", `closed: code ${event.code}${event.reason ? " " + event.reason : ""}`);
});
socket.addEventListener("error", () => log("info", "info", "connection error"));
socket.addEventListener("message", (event) => {
  if (typeof event.data === "string") {
    log("in", "text", event.data);
  } else {
    const bytes = new Uint8Array(event.data);
    log("in", "binary", `${bytes.length} bytes: ${new TextDecoder().decode(bytes)}`);
  }
});

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  socket.send($("msg").value);
  log("out", "text", $("msg").value);
});
$("send-binary").addEventListener("click", () => {
  const bytes = new TextEncoder().encode($("msg").value);
  socket.send(bytes);
  log("out", "binary", `${bytes.length} bytes: ${$("msg").value}`);
});
</script>
</body>
</html>
"""


async def _page(request: Request) -> Response:
    return HTMLResponse(DEMO_PAGE)


async def _echo_request(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": [[name, value] for name, value in request.headers.items()],
            "body_bytes": len(body),
        }
    )


async def _echo_socket(websocket: WebSocket) -> None:
    # Pick the client's first subprotocol, if any, so the demo works with clients that insist.
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=offered[0] if offered else None)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect:
        return


def demo_app() -> ASGIApp:
    """The echo backend: the demo page at ``/``, WebSocket echo at ``/ws``, ``/echo`` JSON."""
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/", _page),
            Route("/echo", _echo_request, methods=methods),
            Route("/echo/{rest:path}", _echo_request, methods=methods),
            WebSocketRoute("/ws", _echo_socket),
        ]
    )
