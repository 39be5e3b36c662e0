"""Real servers on 127.0.0.1 for integration tests: uvicorn apps and raw TCP scripts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.server import GatewayServer


class QuietServer(GatewayServer):
    """The gateway's uvicorn server: it leaves the test runner's signal handlers alone and,
    for a gateway config (``uvicorn_config``), applies its TLS handshake timeout."""


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(512)
    return sock


@contextlib.asynccontextmanager
async def run_server(config: uvicorn.Config) -> AsyncIterator[int]:
    """Serve ``config`` on a fresh 127.0.0.1 port in this event loop; yield the port."""
    sock = listening_socket(config.host)
    port = sock.getsockname()[1]
    server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during startup")
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task
        sock.close()


def plain_config(app: ASGIApp, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings for a test backend."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "lifespan": "off",
        "log_level": "warning",
        "http": "httptools",
        "ws": "websockets-sansio",
    }
    options.update(kwargs)
    return uvicorn.Config(app, **options)


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A raw TCP server on 127.0.0.1 whose ``handler`` writes exact bytes; yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


class Backend:
    """A test backend (pure ASGI) that records what it received.

    Routes:
      /echo...          JSON of method, raw path, query, headers, body length and sha256
      /bytes/N          N bytes (streamed in 64 KiB chunks, Content-Length set)
      /chunked/N        N bytes, chunked (no Content-Length)
      /slow/S           answers after S seconds
      /redirect         302 to the backend's own absolute URL
      /status/N         status N, empty body
      /cookie           sets a cookie
      anything else     same as /echo
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self.disconnects = 0
        self.started = 0  # requests whose handling began (before their body is read)
        self.bytes_sent = 0  # body bytes of /bytes and /chunked responses handed to send

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.started += 1
        path: str = scope["path"]
        digest = hashlib.sha256()
        size = 0
        more = True
        while more and not path.startswith(("/bytes/", "/chunked/")):
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        record = {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body_bytes": size,
            "body_sha256": digest.hexdigest(),
        }
        self.requests.append(record)
        if path.startswith("/bytes/") or path.startswith("/chunked/"):
            await self._send_bytes(
                receive, send, int(path.rsplit("/", 1)[1]), chunked=path.startswith("/chunked/")
            )
            return
        if path.startswith("/slow/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        if path == "/redirect":
            location = f"http://127.0.0.1:{self.port}/landed?x=1"
            await _respond(send, 302, b"", [(b"location", location.encode())])
            return
        if path.startswith("/status/"):
            await _respond(send, int(path.rsplit("/", 1)[1]), b"")
            return
        extra: list[tuple[bytes, bytes]] = []
        if path == "/cookie":
            extra.append((b"set-cookie", b"session=abc; Path=/"))
        body = json.dumps(record).encode()
        await _respond(send, 200, body, [(b"content-type", b"application/json"), *extra])

    async def _send_bytes(self, receive: Receive, send: Send, size: int, *, chunked: bool) -> None:
        """Stream ``size`` bytes; stop (and count a disconnect) once the reader is gone."""
        headers = [(b"content-type", b"application/octet-stream")]
        if not chunked:
            headers.append((b"content-length", str(size).encode()))
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            block = bytes(range(256)) * 256  # 64 KiB, not compressible to nothing
            sent = 0
            while sent < size and not gone.is_set():
                piece = block[: min(len(block), size - sent)]
                sent += len(piece)
                self.bytes_sent += len(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
            if size == 0:
                await send({"type": "http.response.body", "body": b""})
            if gone.is_set():
                self.disconnects += 1
        finally:
            watcher.cancel()


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    all_headers = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


def expected_bytes(size: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


async def raw_exchange(
    port: int, data: bytes, ssl_context: Any = None, *, timeout: float = 10.0
) -> bytes:
    """Send ``data`` byte for byte, half-close politely, return everything read until EOF."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ssl_context, server_hostname="localhost" if ssl_context else None
    )
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def parse_response(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers (lower-case names) and body of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return status, headers, body


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (polling every 10 ms, at most ``timeout_s``) until ``condition()`` holds."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(200):
        if process.returncode is not None:
            raise AssertionError(f"gateway exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


@contextlib.asynccontextmanager
async def gateway_process(
    args: list[str], port: int, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    # The admin listener on a free port: a fixed one could be taken on a shared machine.
    environment = {**os.environ, "GATEWAY_ADMIN__PORT": "0", **env}
    process = await asyncio.create_subprocess_exec(
        *args, env=environment, stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_for_port(port, process)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
