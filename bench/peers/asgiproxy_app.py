"""asgiproxy (aiohttp client) in front of the benchmark backends, as its README shows it.

Two contexts because the backends are two processes: /ws, /upload and /download go to the
Node backend, everything else to the nginx backend. The only deviation from asgiproxy's own
``make_app`` is the aiohttp connector: its default cap of 100 connections would stall the
1,000 idle WebSocket sessions (each holds one upstream connection), so it is lifted.

Run: uvicorn asgiproxy_app:app --app-dir bench/peers (see bench/harness/targets.py).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import aiohttp
from asgiproxy.config import BaseURLProxyConfigMixin, ProxyConfig
from asgiproxy.context import ProxyContext
from asgiproxy.simple_proxy import make_simple_proxy_app

HTTP_UPSTREAM = os.environ.get("BENCH_HTTP_UPSTREAM", "http://127.0.0.1:18080")
NODE_UPSTREAM = os.environ.get("BENCH_NODE_UPSTREAM", "http://127.0.0.1:18090")
NODE_PREFIXES = ("/ws", "/upload", "/download")


def _context(upstream: str) -> ProxyContext:
    config = type(
        "Config",
        (BaseURLProxyConfigMixin, ProxyConfig),
        {"upstream_base_url": upstream, "rewrite_host_header": urlparse(upstream).netloc},
    )()
    return ProxyContext(config)


http_context = _context(HTTP_UPSTREAM)
node_context = _context(NODE_UPSTREAM)
http_app = make_simple_proxy_app(http_context)
node_app = make_simple_proxy_app(node_context)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                for context in (http_context, node_context):
                    context._session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0),
                        cookie_jar=aiohttp.DummyCookieJar(),
                        auto_decompress=False,
                    )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for context in (http_context, node_context):
                    await context.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"].startswith(NODE_PREFIXES):
        return await node_app(scope, receive, send)
    return await http_app(scope, receive, send)
