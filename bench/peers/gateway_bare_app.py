"""The gateway's ReverseProxy and WebSocketProxy alone, without settings or middleware.

Compared with the ``gateway`` target this shows what the default middleware stack costs.
Run: uvicorn gateway_bare_app:app --app-dir bench/peers (see bench/harness/targets.py).
"""

from __future__ import annotations

import os

from gateway import ReverseProxy, WebSocketProxy
from gateway.routing import Route, Router

HTTP_UPSTREAM = os.environ.get("BENCH_HTTP_UPSTREAM", "http://127.0.0.1:18080")
NODE_UPSTREAM = os.environ.get("BENCH_NODE_UPSTREAM", "http://127.0.0.1:18090")
NODE_PREFIXES = ("/ws", "/upload", "/download")

node = ReverseProxy(NODE_UPSTREAM, max_body_bytes=None)
app = Router(
    [
        *(Route(prefix, node, WebSocketProxy(NODE_UPSTREAM)) for prefix in NODE_PREFIXES),
        Route("/", ReverseProxy(HTTP_UPSTREAM), None),
    ]
)
