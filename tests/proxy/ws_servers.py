"""Real WebSocket servers on 127.0.0.1 for the bridge tests: backends and the TLS bridge."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp
from websockets.asyncio.server import ServerConnection, serve
from websockets.server import ServerProtocol

from gateway.tls import CertificatePair
from tests.servers import plain_config, read_request_head, run_server

Handler = Callable[[ServerConnection], Awaitable[None]]


@dataclass
class Handshake:
    """What a backend saw in one opening handshake."""

    path: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class RecordingBackend:
    """A websockets server that records handshakes, messages and the close frames it got."""

    port: int = 0
    handshakes: list[Handshake] = field(default_factory=list)
    messages: list[str | bytes] = field(default_factory=list)
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def ws_backend(
    handler: Handler | None = None, **options: Any
) -> AsyncIterator[RecordingBackend]:
    """Serve ``handler`` (default: recording echo) on a fresh port; ``options`` go to ``serve``."""
    backend = RecordingBackend()

    async def recording_echo(connection: ServerConnection) -> None:
        async for message in connection:
            backend.messages.append(message)
            await connection.send(message)

    async def recording(connection: ServerConnection) -> None:
        assert connection.request is not None
        request = connection.request
        backend.handshakes.append(Handshake(request.path, list(request.headers.raw_items())))
        try:
            await (handler or recording_echo)(connection)
        finally:
            await connection.wait_closed()
            # close_code is the code of the close frame this backend received (1006: none).
            backend.closes.append((connection.close_code, connection.close_reason))
            backend.closed.set()

    options.setdefault("compression", None)
    async with serve(recording, "127.0.0.1", 0, **options) as server:
        backend.port = server.sockets[0].getsockname()[1]
        yield backend


@contextlib.asynccontextmanager
async def tls_bridge(app: ASGIApp, certs: CertificatePair, **config: Any) -> AsyncIterator[str]:
    """Serve ``app`` over TLS with uvicorn (websockets-sansio); yield ``wss://127.0.0.1:port``."""
    options: dict[str, Any] = {
        "ssl_certfile": str(certs.certfile),
        "ssl_keyfile": str(certs.keyfile),
        "log_config": None,
        # The bridge decides about X-Forwarded-For itself; uvicorn must not rewrite the peer.
        "proxy_headers": False,
    }
    options.update(config)
    async with run_server(plain_config(app, **options)) as port:
        yield f"wss://127.0.0.1:{port}"


async def accept_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> ServerProtocol:
    """Read a WebSocket handshake from a raw backend's client and accept it (sans-I/O)."""
    protocol = ServerProtocol()
    protocol.receive_data(await read_request_head(reader))
    request = protocol.events_received()[0]
    protocol.send_response(protocol.accept(request))  # type: ignore[arg-type]
    writer.write(b"".join(protocol.data_to_send()))
    return protocol


async def stalls(progress: list[int], limit: int, timeout_s: float = 20.0) -> int:
    """Wait until ``progress[0]`` stops growing for 0.5 s; return the stalled value
    (asserting it stalled below ``limit``: something applied backpressure)."""
    async with asyncio.timeout(timeout_s):
        last = -1
        while progress[0] != last:
            last = progress[0]
            assert last < limit, "no backpressure: everything was buffered"
            await asyncio.sleep(0.5)
    return last


def reads_after(release: asyncio.Event, received: list[int]) -> Handler:
    """A backend handler that reads nothing until ``release`` is set, then counts the
    bytes of the messages it reads into ``received[0]``."""

    async def late_reader(connection: ServerConnection) -> None:
        await release.wait()
        async for message in connection:
            received[0] += len(message)

    return late_reader


async def accept_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend that completes the handshake, then never writes again (no pongs, no close)."""
    await accept_handshake(reader, writer)
    await writer.drain()
    await reader.read()


async def accept_then_empty_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A backend that accepts, then sends a close frame without a status code."""
    await accept_handshake(reader, writer)
    writer.write(b"\x88\x00")  # FIN + close opcode, empty payload (server frames are unmasked)
    await writer.drain()
    await reader.readexactly(6)  # the client's masked empty close; then the server hangs up


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TCP server that accepts and stays silent (the handshake never completes)."""
    await reader.read()


KILLABLE_BACKEND = """
import asyncio
from websockets.asyncio.server import serve

async def echo(connection):
    async for message in connection:
        await connection.send(message)

async def main():
    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


@contextlib.contextmanager
def backend_process() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """An echo backend in its own process, to be killed by PID; yields (process, port)."""
    process = subprocess.Popen([sys.executable, "-c", KILLABLE_BACKEND], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip().isdigit(), f"backend did not start: {line!r}"
        yield process, int(line)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


async def raw_handshake(
    url: str, client_ssl: ssl.SSLContext, path: str = "/", extra: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """Send a handshake by hand and return (status, headers, body) of the response."""
    host, port = url.removeprefix("wss://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=client_ssl)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.strip().split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
