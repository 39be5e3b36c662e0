"""Micro-benchmark: small GETs through UpstreamTransport vs httpx.AsyncHTTPTransport.

Runs a uvicorn (httptools) "hello" backend on 127.0.0.1 in a child process, then sends
N requests sequentially and N with 32 concurrent tasks through each transport, calling
`handle_async_request` directly the way the reverse proxy does. A third, "floor" row
does no HTTP at all (see FloorTransport): on a shared or noisy machine, read the
transports against it. Client CPU per request is process time (user + system).

    .venv/bin/python bench/transport_micro.py [--requests 20000] [--concurrency 32] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from collections.abc import Callable

import httpx
import uvicorn

from gateway.transport import UpstreamTransport

BODY = b"hello, world\n"


async def hello_app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
    """ASGI app answering every request with a 13-byte body."""
    assert scope["type"] == "http"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def serve(sock: socket.socket) -> None:
    """Child process: run the backend on an already bound socket."""
    config = uvicorn.Config(
        hello_app, http="httptools", log_level="warning", lifespan="off", access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])


class _FloorProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.done: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(BODY) and self.done is not None:
            self.done.set_result(self.buffer)
            self.buffer = b""


class FloorTransport(httpx.AsyncBaseTransport):
    """Not HTTP: a fixed request, the response recognised by its last bytes, no parsing.

    The cost of the loop, the sockets and the httpx Request/Response objects that any
    transport pays: the floor the other figures are to be read against.
    """

    def __init__(self) -> None:
        self.idle: list[_FloorProtocol] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        if self.idle:
            protocol = self.idle.pop()
        else:
            _, protocol = await loop.create_connection(
                _FloorProtocol, request.url.host, request.url.port or 80
            )
        protocol.done = loop.create_future()
        assert protocol.transport is not None
        protocol.transport.write(b"GET / HTTP/1.1\r\nHost: " + request.url.netloc + b"\r\n\r\n")
        await protocol.done
        self.idle.append(protocol)
        return httpx.Response(200, stream=httpx.ByteStream(BODY))

    async def aclose(self) -> None:
        for protocol in self.idle:
            assert protocol.transport is not None
            protocol.transport.close()
        self.idle.clear()
        await asyncio.sleep(0)


async def one(transport: httpx.AsyncBaseTransport, url: httpx.URL) -> None:
    # A parsed URL object: parsing a URL string costs more than the whole exchange.
    request = httpx.Request("GET", url)
    response = await transport.handle_async_request(request)
    body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
    await response.aclose()
    if response.status_code != 200 or body != BODY:
        raise RuntimeError(f"unexpected response {response!r}: {body!r}")


async def run(
    transport: httpx.AsyncBaseTransport, url: httpx.URL, n: int, concurrency: int
) -> tuple[float, float]:
    """Return (requests per second, client CPU microseconds per request)."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await one(transport, url)

    await worker(200)  # warm up: connections, caches
    started = time.perf_counter()
    cpu_started = time.process_time()
    if concurrency == 1:
        await worker(n)
    else:
        share, extra = divmod(n, concurrency)
        counts = [share + (1 if i < extra else 0) for i in range(concurrency)]
        await asyncio.gather(*(worker(count) for count in counts))
    elapsed = time.perf_counter() - started
    return n / elapsed, (time.process_time() - cpu_started) / n * 1e6


async def main(n: int, concurrency: int, url: httpx.URL) -> None:
    candidates: list[tuple[str, Callable[[], httpx.AsyncBaseTransport]]] = [
        ("UpstreamTransport", UpstreamTransport),
        ("httpx.AsyncHTTPTransport", lambda: httpx.AsyncHTTPTransport(limits=httpx.Limits())),
        ("floor (no HTTP parsing)", FloorTransport),
    ]
    for name, factory in candidates:
        for conc in (1, concurrency):
            transport = factory()
            try:
                rate, cpu_us = await run(transport, url, n, conc)
            finally:
                await transport.aclose()
            print(
                f"{name:26s} concurrency={conc:<3d} {rate:9,.0f} req/s"
                f"   client CPU {cpu_us:6.1f} us/request",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    args = parser.parse_args()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    backend = multiprocessing.get_context("spawn").Process(target=serve, args=(listener,))
    backend.start()
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        coro = main(args.requests, args.concurrency, httpx.URL(f"http://127.0.0.1:{port}/"))
        if args.uvloop:
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
    finally:
        backend.terminate()
        backend.join()
        listener.close()
