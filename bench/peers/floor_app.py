"""The floor: the least work a proxy can do under uvicorn, for the HTTP scenarios only.

Not a proxy anyone should run: it copies the client's request head to a pooled keep-alive
connection (raw asyncio, the response parsed by httptools), holds whole bodies in memory,
and has no header rules, limits, timeouts, streaming or error pages. What it costs per
request is uvicorn's part plus the kernel's (the same system calls any proxy makes); what
a real proxy costs above it is its own. ``bench/run --only 'get-*' --targets
floor,gateway-bare,gateway,asgiproxy`` shows the split in one run.

Run: uvicorn floor_app:app --app-dir bench/peers (see bench/harness/targets.py).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlsplit

import httptools

HTTP_UPSTREAM = urlsplit(os.environ.get("BENCH_HTTP_UPSTREAM", "http://127.0.0.1:18080"))
# Not passed on: the backend's framing of the connection, and the server's own headers.
_DROPPED = frozenset({b"connection", b"keep-alive", b"date", b"server"})


class _Backend(asyncio.Protocol):
    """One keep-alive connection to the backend, one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.keep_alive = False
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("backend closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.done is not None
        self.done.set_result(None)

    async def exchange(self, request: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.transport is not None
        self.headers, self.body = [], []
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self.done
        return self.parser.get_status_code(), self.headers, b"".join(self.body)


_idle: list[_Backend] = []


async def _connection() -> _Backend:
    while _idle:
        backend = _idle.pop()
        if not backend.lost:
            return backend
    loop = asyncio.get_running_loop()
    _, backend = await loop.create_connection(_Backend, HTTP_UPSTREAM.hostname, HTTP_UPSTREAM.port)
    return backend


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        for backend in _idle:
            if backend.transport is not None:
                backend.transport.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return  # no WebSocket: the HTTP scenarios only
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    parts = [scope["method"].encode(), b" ", scope["raw_path"], b" HTTP/1.1\r\n"]
    for name, value in scope["headers"]:
        parts += (name, b": ", value, b"\r\n")
    parts += (b"\r\n", body)
    backend = await _connection()
    status, headers, content = await backend.exchange(b"".join(parts))
    if backend.keep_alive:
        _idle.append(backend)
    else:
        assert backend.transport is not None
        backend.transport.close()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(name, value) for name, value in headers if name not in _DROPPED],
        }
    )
    await send({"type": "http.response.body", "body": content})
