"""Faults on both sides of the gateway: dying, silent and broken backends; clients that
leave at every stage or trickle bytes. After each: no leaked tasks or file descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from tests.conftest import GatewayFactory
from tests.proxy.ws_servers import accept_handshake, backend_process
from tests.robustness.helpers import open_fds, parse_responses, port_of, settle
from tests.servers import Backend, free_port, raw_server, read_request_head

pytestmark = pytest.mark.timeout(60)

FD_SLACK = 4

HTTP_BACKEND = r"""
import asyncio, sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"1000000000")]})
        for _ in range(3000):
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            await asyncio.sleep(0.005)
        return
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(total).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="critical",
            lifespan="off", http="httptools")
"""


@contextlib.contextmanager
def http_backend_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", HTTP_BACKEND, str(port)])
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with contextlib.closing(
                    __import__("socket").create_connection(("127.0.0.1", port), 0.2)
                ):
                    break
            except OSError:
                assert process.poll() is None, "backend died"
                assert time.monotonic() < deadline, "backend did not start"
                time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def kill(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture
async def http_client(client_ssl: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(verify=client_ssl, timeout=10, limits=limits) as client:
        yield client


async def close_received(ws: ClientConnection) -> Close | None:
    """Read until the gateway closes ``ws`` (bounded); the close frame it sent, if any."""
    async with asyncio.timeout(10):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd


async def assert_no_leaks(tasks_before: int, fds_before: int) -> None:
    tasks, fds = await settle(tasks_before, fds_before, fd_slack=FD_SLACK)
    assert tasks <= tasks_before, f"leaked tasks: {tasks} > {tasks_before}"
    assert fds <= fds_before + FD_SLACK, f"leaked fds: {fds} > {fds_before}"


# Backend killed ---------------------------------------------------------------------------


async def test_backend_killed_mid_response_then_restarted(
    gateway_factory: GatewayFactory, http_client: httpx.AsyncClient
) -> None:
    port = free_port()
    async with gateway_factory(f"http://127.0.0.1:{port}") as url:
        with http_backend_process(port) as process:
            assert (await http_client.get(f"{url}/x")).text == "0"
            tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
            received = [0]

            async def download() -> None:
                async with http_client.stream("GET", f"{url}/stream") as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_raw():
                        received[0] += len(chunk)
                        if received[0] > 500_000 and process.returncode is None:
                            kill(process)

            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await download()
            assert 500_000 < received[0] < 1_000_000_000
            # Down: a clean 502, not a hang and not a stale pooled connection.
            assert (await http_client.get(f"{url}/x")).status_code == 502
        await assert_no_leaks(tasks_before, fds_before)
        with http_backend_process(port):
            statuses = [(await http_client.get(f"{url}/x")).status_code for _ in range(5)]
        assert statuses == [200] * 5


async def test_backend_killed_mid_upload_gives_502(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    port = free_port()
    async with gateway_factory(f"http://127.0.0.1:{port}") as url:
        with http_backend_process(port) as process:
            tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port_of(url), ssl=client_ssl, server_hostname="localhost"
            )
            writer.write(
                b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\n"
            )
            writer.write(b"u" * 1_000_000)
            await writer.drain()
            await asyncio.sleep(0.3)
            kill(process)
            async with asyncio.timeout(10):
                # Keep sending a little; the answer must come anyway.
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    writer.write(b"u" * 100_000)
                    await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            writer.transport.abort()
            assert head.startswith(b"HTTP/1.1 502"), head
        await assert_no_leaks(tasks_before, fds_before)


async def test_backend_restarted_while_clients_keep_sending(
    gateway_factory: GatewayFactory, http_client: httpx.AsyncClient
) -> None:
    port = free_port()
    statuses: list[int] = []
    stop = asyncio.Event()

    async def keep_sending() -> None:
        for _ in range(2000):
            if stop.is_set():
                return
            response = await http_client.post(f"{url}/up", content=b"p" * 10_000)
            statuses.append(response.status_code)
            if response.status_code == 200:
                assert response.text == "10000"

    async with gateway_factory(f"http://127.0.0.1:{port}", timeouts={"connect_s": 1}) as url:
        with http_backend_process(port) as process:
            senders = [asyncio.create_task(keep_sending()) for _ in range(4)]
            await asyncio.sleep(0.7)
            kill(process)
            await asyncio.sleep(0.5)
        with http_backend_process(port):
            await asyncio.sleep(0.7)
            stop.set()
            await asyncio.gather(*senders)
            after = [(await http_client.get(f"{url}/x")).status_code for _ in range(5)]
    assert set(statuses) <= {200, 502}, set(statuses)
    assert statuses.count(200) > 10
    assert 502 in statuses
    assert after == [200] * 5


async def test_backend_killed_mid_websocket_closes_client_1011(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    with backend_process() as (process, port):
        async with gateway_factory(f"http://127.0.0.1:{port}") as url:
            tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
            wss = url.replace("https:", "wss:")
            async with connect(f"{wss}/ws", ssl=client_ssl, open_timeout=10) as ws:
                for i in range(20):
                    await ws.send(f"m{i}")
                    assert await ws.recv() == f"m{i}"
                kill(process)
                close = await close_received(ws)
            assert close is not None
            assert close.code in (1011, 1014)
            await assert_no_leaks(tasks_before, fds_before)


# Broken backends --------------------------------------------------------------------------


async def test_backend_that_never_answers_gives_504_after_read_timeout(
    gateway_factory: GatewayFactory, http_client: httpx.AsyncClient
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        await reader.read()  # until the gateway gives up and closes

    async with (
        raw_server(silent) as port,
        gateway_factory(f"http://127.0.0.1:{port}", timeouts={"read_s": 0.5}) as url,
    ):
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
        start = time.monotonic()
        response = await http_client.get(f"{url}/x")
        elapsed = time.monotonic() - start
        assert response.status_code == 504
        assert 0.4 < elapsed < 5
        await assert_no_leaks(tasks_before, fds_before)


BAD_RESPONSES = {
    "partial_header_then_close": b"HTTP/1.1 200 OK\r\nContent-Le",
    "status_line_only_then_close": b"HTTP/1.1 200 OK\r\n",
    "not_http": b"HELLO WORLD\r\n\r\n",
    "bad_status_code": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "conflicting_content_length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "nul_in_header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "cr_in_header_value": (
        b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: evil=1\r\nContent-Length: 0\r\n\r\n"
    ),
    "bad_chunk_size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    ),
    "space_before_colon": b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
}


@pytest.mark.parametrize("case", BAD_RESPONSES)
async def test_invalid_backend_response_gives_502(
    case: str, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(BAD_RESPONSES[case])
        await writer.drain()

    async with (
        raw_server(handler) as port,
        gateway_factory(f"http://127.0.0.1:{port}", timeouts={"read_s": 2}) as url,
    ):
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port_of(url), ssl=client_ssl, server_hostname="localhost"
        )
        writer.write(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()
        assert head.startswith(b"HTTP/1.1 502"), head
        assert b"evil" not in head
        await assert_no_leaks(tasks_before, fds_before)


INVALID_FRAMES = {
    "reserved_opcode": b"\x83\x00",
    "masked_server_frame": b"\x81\x81\x00\x00\x00\x00a",
    "rsv1_without_extension": b"\xc1\x01a",
    "fragmented_control_frame": b"\x09\x00",
    "continuation_without_start": b"\x80\x01a",
    "invalid_utf8_text": b"\x81\x02\xff\xfe",
    "oversized_control_frame": b"\x89\x7e\x00\x80" + b"p" * 128,
}


@pytest.mark.parametrize("case", INVALID_FRAMES)
async def test_invalid_frame_from_backend_closes_client(
    case: str, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_handshake(reader, writer)
        writer.write(INVALID_FRAMES[case])
        await writer.drain()
        # Like a server that closes the TCP connection once it gets the peer's close frame.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await reader.read(1)

    async with raw_server(handler) as port, gateway_factory(f"http://127.0.0.1:{port}") as url:
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
        wss = url.replace("https:", "wss:")
        async with connect(f"{wss}/ws", ssl=client_ssl, open_timeout=10) as ws:
            close = await close_received(ws)
        assert close is not None, "closed without a close frame"
        assert close.code in (1002, 1007, 1011, 1014), close
        await assert_no_leaks(tasks_before, fds_before)


# Clients leaving at every stage -----------------------------------------------------------


@pytest.mark.parametrize(
    "stage",
    ["tls_handshake", "request_line", "headers", "body", "response", "ws_handshake", "ws_session"],
)
async def test_client_disconnect_at_every_stage_frees_everything(
    stage: str, backend: Backend, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async with gateway_factory(f"http://127.0.0.1:{backend.port}") as url:
        port = port_of(url)
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
        for _ in range(10):
            if stage == "tls_handshake":
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(bytes.fromhex("160301020001"))
                await writer.drain()
                writer.transport.abort()
                continue
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ssl, server_hostname="localhost"
            )
            if stage == "request_line":
                writer.write(b"GET /ec")
            elif stage == "headers":
                writer.write(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Le")
            elif stage == "body":
                writer.write(
                    b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n"
                )
                writer.write(b"b" * 300_000)
            elif stage == "response":
                writer.write(b"GET /bytes/500000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            elif stage in ("ws_handshake", "ws_session"):
                writer.write(
                    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    + (
                        b"Sec-WebSocket-Version: 13\r\n\r\n"
                        if stage == "ws_session"
                        else b"Sec-Web"
                    )
                )
            await writer.drain()
            if stage == "response":
                await reader.readexactly(100_000)
            elif stage == "ws_session":
                # The HTTP-only backend refuses the upgrade: the answer comes, then we leave.
                await reader.readuntil(b"\r\n\r\n")
            else:
                await asyncio.sleep(0.05)
            writer.transport.abort()
        await assert_no_leaks(tasks_before, fds_before)
        # Still serving.
        async with httpx.AsyncClient(verify=client_ssl, timeout=10) as client:
            assert (await client.get(f"{url}/echo")).status_code == 200
    if stage == "body":
        assert backend.disconnects == 10


# Slow clients -----------------------------------------------------------------------------

SMALL_TIMEOUTS = {"header_s": 0.5, "body_s": 0.5}


async def trickle(
    port: int, client_ssl: ssl.SSLContext, head: bytes, piece: bytes, interval_s: float
) -> tuple[bytes, float]:
    """Send ``head``, then ``piece`` every ``interval_s`` until the server answers or closes.
    Returns what it answered and after how long (bounded by 10 s)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ssl, server_hostname="localhost"
    )
    start = time.monotonic()
    writer.write(head)
    answer = b""
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), interval_s)
                except TimeoutError:
                    writer.write(piece)
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    continue
                if not chunk:
                    break
                answer += chunk
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.transport.abort()
    return answer, time.monotonic() - start


async def serve_meanwhile(
    url: str, client_ssl: ssl.SSLContext, slow: asyncio.Future[list[tuple[bytes, float]]]
) -> tuple[list[tuple[bytes, float]], int]:
    """Send ordinary requests one after another for as long as ``slow`` runs; returns its
    results and how many ordinary requests were answered meanwhile (all must be 200)."""
    served = 0
    async with httpx.AsyncClient(verify=client_ssl, timeout=30) as client:
        while not slow.done():
            assert (await client.get(f"{url}/echo")).status_code == 200
            served += 1
            await asyncio.sleep(0.05)
    return await slow, served


async def test_idle_connection_without_a_request_is_closed(
    backend: Backend, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", timeouts=SMALL_TIMEOUTS) as url:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port_of(url), ssl=client_ssl, server_hostname="localhost"
        )
        start = time.monotonic()
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                assert await reader.read() == b""
        writer.transport.abort()
        assert time.monotonic() - start < 8  # header_s 0.5 s, well before the 10 s bound


async def test_slowloris_headers_are_cut_while_others_are_served(
    backend: Backend, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", timeouts=SMALL_TIMEOUTS) as url:
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
        slow = [
            trickle(
                port_of(url),
                client_ssl,
                b"GET /echo HTTP/1.1\r\nHost: localhost\r\n",
                b"X-A: b\r\n",
                0.1,
            )
            for _ in range(20)
        ]
        results, served = await serve_meanwhile(url, client_ssl, asyncio.gather(*slow))
        for answer, elapsed in results:
            assert elapsed < 8, elapsed  # header_s is 0.5 s: cut, never left to the 10 s bound
            assert answer.startswith(b"HTTP/1.1 408"), answer[:60]
        # Others were served while the slow clients held their connections.
        assert served >= 2
        assert all(r["raw_path"] == "/echo" for r in backend.requests)
        assert len(backend.requests) == served  # no slowloris request was forwarded
        await assert_no_leaks(tasks_before, fds_before)


async def test_slowloris_on_a_kept_alive_connection_is_cut(
    backend: Backend, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    """The second request's head on a reused connection is timed too."""
    first = b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n"
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", timeouts=SMALL_TIMEOUTS) as url:
        answer, elapsed = await trickle(
            port_of(url), client_ssl, first + b"GET /echo HTTP/1.1\r\n", b"X-A: b\r\n", 0.1
        )
    statuses = [status for status, _, _ in parse_responses(answer)]
    assert statuses == [200, 408], answer[-200:]
    assert elapsed < 8


async def test_slow_body_is_cut_with_408_while_others_are_served(
    backend: Backend, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", timeouts=SMALL_TIMEOUTS) as url:
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
        head = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n"
        slow = [trickle(port_of(url), client_ssl, head + b"x", b"", 1.0) for _ in range(10)]
        results, served = await serve_meanwhile(url, client_ssl, asyncio.gather(*slow))
        for answer, elapsed in results:
            assert answer.startswith(b"HTTP/1.1 408"), answer[:60]
            assert elapsed < 8  # body_s is 0.5 s
        assert served >= 2
        await assert_no_leaks(tasks_before, fds_before)
    assert backend.disconnects == 10


async def test_slow_reader_of_a_large_response_is_freed(
    backend: Backend, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    """A client that requests a large body and never reads it must not hold the backend
    connection and the gateway's task for ever (nginx ``send_timeout``)."""
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", timeouts={"send_s": 0.5}) as url:
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port_of(url), ssl=client_ssl, server_hostname="localhost"
        )
        writer.write(b"GET /bytes/1000000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        await reader.readexactly(1000)
        try:
            # Never read again; the gateway should give up on us within a few seconds.
            tasks, _ = await settle(tasks_before, fds_before, timeout_s=5)
            assert tasks <= tasks_before, "slow reader still holds the gateway's task"
        finally:
            writer.transport.abort()
        await assert_no_leaks(tasks_before, fds_before)
