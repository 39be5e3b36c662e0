"""The bridge's backend leg (websockets' sans-I/O client on asyncio), on real sockets."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request
from websockets.protocol import State

from gateway.proxy.websocket_backend import BackendLeg, LegOptions, _request, open_backend_leg
from tests.proxy.ws_servers import (
    accept_handshake,
    never_answers,
    reads_after,
    stalls,
    ws_backend,
)
from tests.servers import raw_server

OPTIONS = LegOptions(open_timeout_s=5, close_timeout_s=0.3, max_size=2**20, max_queue=4)


async def open_leg(port: int, options: LegOptions = OPTIONS, target: str = "/") -> BackendLeg:
    return await open_backend_leg(
        f"ws://127.0.0.1:{port}/",
        request_target=target,
        headers=[],
        subprotocols=[],
        options=options,
    )


def test_request_keeps_the_target_replaces_host_and_repeats_headers() -> None:
    base = Request("/", Headers([("Host", "backend:8080"), ("Upgrade", "websocket")]))
    headers = [("host", "public.example"), ("x-forwarded-for", "1.2.3.4"), ("cookie", "a=1")]
    headers.append(("x-forwarded-for", "5.6.7.8"))
    request = _request(base, "/a;p=1/%2e?q=%20", headers)
    assert request.path == "/a;p=1/%2e?q=%20"
    assert list(request.headers.raw_items()) == [
        ("Host", "public.example"),
        ("Upgrade", "websocket"),
        ("x-forwarded-for", "1.2.3.4"),
        ("cookie", "a=1"),
        ("x-forwarded-for", "5.6.7.8"),
    ]


def test_request_without_host_keeps_the_backend_authority() -> None:
    base = Request("/", Headers([("Host", "backend:8080")]))
    assert _request(base, "/x", [("a", "b")]).headers["Host"] == "backend:8080"


async def test_messages_in_order_text_binary_and_fragmented() -> None:
    async def send_some(connection: ServerConnection) -> None:
        await connection.send("text é")
        await connection.send(b"\x00\x01")
        await connection.send(["frag", "mented"])
        await connection.send([b"by", b"tes"])
        await connection.wait_closed()

    async with ws_backend(send_some) as backend:
        leg = await open_leg(backend.port)
        received = [await leg.recv() for _ in range(4)]
        assert received == ["text é", b"\x00\x01", "fragmented", b"bytes"]
        await leg.close(1000, "bye")
    assert backend.closes == [(1000, "bye")]


async def test_reading_pauses_at_max_queue_and_nothing_is_lost() -> None:
    count, size = 400, 64 * 1024
    sent = [0]

    async def flood(connection: ServerConnection) -> None:
        for index in range(count):
            await connection.send(index.to_bytes(4, "big") * (size // 4))
            sent[0] += 1
        await connection.wait_closed()

    async with ws_backend(flood, write_limit=size) as backend:
        leg = await open_leg(backend.port)
        # Not reading: the backend stalls once the leg's queue and both socket buffers are full.
        stalled_at = await stalls(sent, count)
        assert stalled_at < count, "the leg read everything without being asked to"
        indexes = []
        for _ in range(count):
            message = await leg.recv()
            assert isinstance(message, bytes)
            indexes.append(int.from_bytes(message[:4], "big"))
        assert indexes == list(range(count))
        await leg.close()


async def test_send_waits_while_the_backend_does_not_read() -> None:
    release = asyncio.Event()
    got = [0]

    chunk, count = b"z" * 65536, 512  # 32 MiB offered
    async with ws_backend(reads_after(release, got), max_queue=1) as backend:
        leg = await open_leg(backend.port)
        sent = [0]

        async def producer() -> None:
            for _ in range(count):
                await leg.send(chunk)
                sent[0] += 1

        task = asyncio.create_task(producer())
        await stalls(sent, count)
        assert not task.done(), "send never waited: everything was buffered"
        assert leg.transport.get_write_buffer_size() <= 2**15 + len(chunk) + 1024
        release.set()
        async with asyncio.timeout(30):
            await task
        await leg.close()
        async with asyncio.timeout(10):
            await backend.closed.wait()
    assert got[0] == len(chunk) * count


async def test_close_gives_up_after_the_close_timeout() -> None:
    async def answers_close_but_keeps_the_socket(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        protocol = await accept_handshake(reader, writer)
        while protocol.state is State.OPEN:
            protocol.receive_data(await reader.read(4096))
        writer.write(b"".join(protocol.data_to_send()))  # the close reply; no EOF follows
        await reader.read()

    async with raw_server(answers_close_but_keeps_the_socket) as port:
        leg = await open_leg(port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(5):
            await leg.close(1001, "going")
        assert loop.time() - started >= OPTIONS.close_timeout_s * 0.9
        with pytest.raises(ConnectionClosed) as caught:
            await leg.recv()
    sent, rcvd = caught.value.sent, caught.value.rcvd
    assert sent is not None
    assert sent.code == 1001
    assert rcvd is not None
    assert rcvd.code == 1001


async def test_backend_hanging_up_without_close_frame() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_handshake(reader, writer)
        await writer.drain()

    async with raw_server(hang_up) as port:
        leg = await open_leg(port)
        with pytest.raises(ConnectionClosed) as caught:
            await leg.recv()
        with pytest.raises(ConnectionClosed):
            await leg.send("late")
        assert leg.ping() is None
    assert caught.value.rcvd is None
    assert caught.value.sent is None


async def test_ping_resolves_on_pong_and_fails_when_the_connection_ends() -> None:
    async with ws_backend() as backend:
        leg = await open_leg(backend.port)
        pong = leg.ping()
        assert pong is not None
        async with asyncio.timeout(5):
            await pong
        await leg.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_handshake(reader, writer)
        await writer.drain()
        await reader.read(1)  # the ping; no pong, then hang up

    async with raw_server(silent) as port:
        leg = await open_leg(port)
        pong = leg.ping()
        assert pong is not None
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await pong


async def test_refusal_is_raised_with_the_backend_response_and_the_socket_closed() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nX-Why: no\r\n\r\nnope")
        await writer.drain()
        try:
            closed.set_result(await reader.read() == b"")
        except ConnectionError:  # reset: closed as well
            closed.set_result(True)

    closed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    async with raw_server(refuse) as port:
        with pytest.raises(InvalidStatus) as caught:
            await open_leg(port)
        async with asyncio.timeout(5):
            assert await closed
    response = caught.value.response
    assert (response.status_code, response.headers["X-Why"], response.body) == (403, "no", b"nope")


async def test_open_timeout_covers_the_handshake() -> None:
    options = LegOptions(open_timeout_s=0.3, close_timeout_s=1, max_size=1024, max_queue=4)
    async with raw_server(never_answers) as port:
        with pytest.raises(TimeoutError):
            await open_leg(port, options)


async def test_unreachable_backend_is_an_os_error() -> None:
    async with raw_server(never_answers) as port:
        pass  # closed again: nothing listens on the port now
    with pytest.raises(ConnectionRefusedError):
        await open_leg(port)


async def test_invalid_utf8_fails_the_connection_and_drops_what_follows() -> None:
    async def bad_then_good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_handshake(reader, writer)
        writer.write(b"\x81\x02\xff\xfe" + b"\x81\x02ok")  # one write: both in one read
        await writer.drain()
        await reader.read(1)  # the client's close frame, then hang up

    async with raw_server(bad_then_good) as port:
        leg = await open_leg(port)
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(5):
                await leg.recv()
    sent = caught.value.sent
    assert sent is not None
    assert sent.code == 1007


async def test_tls_follows_the_scheme_not_the_context_given() -> None:
    async with ws_backend() as backend:
        leg = await open_backend_leg(
            f"ws://127.0.0.1:{backend.port}/",
            request_target="/",
            headers=[],
            subprotocols=[],
            options=OPTIONS,
            ssl_context=ssl.create_default_context(),  # for wss:// endpoints only
        )
        await leg.send("plain")
        assert await leg.recv() == "plain"
        await leg.close()
