"""fastapi-proxy-lib in front of the benchmark backends, following its documented FastAPI usage.

/ws (WebSocket), /upload and /download go to the Node backend, everything else to the nginx
backend. One shared httpx client; its default cap of 100 connections is lifted because each
of the 1,000 idle WebSocket sessions holds one upstream connection, and 64 keep-alive
connections are kept like the nginx target's ``keepalive 64``.

Run: uvicorn fastapi_proxy_lib_app:app --app-dir bench/peers (see bench/harness/targets.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi_proxy_lib.core.http import ReverseHttpProxy
from fastapi_proxy_lib.core.websocket import ReverseWebSocketProxy

HTTP_UPSTREAM = os.environ.get("BENCH_HTTP_UPSTREAM", "http://127.0.0.1:18080")
NODE_UPSTREAM = os.environ.get("BENCH_NODE_UPSTREAM", "http://127.0.0.1:18090")
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]

client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
http_proxy = ReverseHttpProxy(client, base_url=HTTP_UPSTREAM + "/")
node_proxy = ReverseHttpProxy(client, base_url=NODE_UPSTREAM + "/")
ws_proxy = ReverseWebSocketProxy(client, base_url=NODE_UPSTREAM.replace("http", "ws", 1) + "/")


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await client.aclose()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws")
async def websocket(websocket: WebSocket):
    return await ws_proxy.proxy(websocket=websocket, path="ws")


@app.api_route("/upload", methods=METHODS)
async def upload(request: Request):
    return await node_proxy.proxy(request=request, path="upload")


@app.api_route("/download", methods=METHODS)
async def download(request: Request):
    return await node_proxy.proxy(request=request, path="download")


@app.api_route("/{path:path}", methods=METHODS)
async def everything_else(request: Request, path: str = ""):
    return await http_proxy.proxy(request=request, path=path)
