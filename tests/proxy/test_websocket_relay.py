"""The frame relay: unit tests of the frame copier on fake transports (every split of
the byte stream), then sessions through `gateway run`'s server with real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from gateway.proxy.websocket_relay import Relay, _mask, _Pipe, close_frame, control_frame
from gateway.proxy.websocket_rules import FRAGMENT_OVERHEAD_BYTES
from tests.conftest import GatewayFactory


class FakeTransport(asyncio.Transport):
    """Records writes; says when it was closed or aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes: list[Any] = []  # the objects written, as they were passed
        self.closed = False
        self.aborted = False
        self.paused = False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: Any) -> None:
        self.writes.append(data)
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        if not self.is_closing():
            self.closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        if not self.is_closing():
            self.aborted = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool) -> bytes:
    """A frame as a client (masked) or a server sends it."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = bytes((first, size | (0x80 if masked else 0)))
    elif size < 65536:
        head = bytes((first, 126 | (0x80 if masked else 0))) + struct.pack("!H", size)
    else:
        head = bytes((first, 127 | (0x80 if masked else 0))) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + _mask(payload, key)


def parse(stream: bytes, *, masked: bool) -> list[tuple[int, bool, bytes]]:
    """(opcode, fin, unmasked payload) of each frame in ``stream``."""
    frames = []
    pos = 0
    while pos < len(stream):
        first, second = stream[pos], stream[pos + 1]
        assert bool(second & 0x80) is masked, "mask bit"
        size, pos = second & 0x7F, pos + 2
        if size == 126:
            size, pos = struct.unpack("!H", stream[pos : pos + 2])[0], pos + 2
        elif size == 127:
            size, pos = struct.unpack("!Q", stream[pos : pos + 8])[0], pos + 8
        key = b""
        if masked:
            key, pos = stream[pos : pos + 4], pos + 4
        payload = stream[pos : pos + size]
        pos += size
        frames.append((first & 0x0F, bool(first & 0x80), _mask(payload, key) if key else payload))
    return frames


@pytest.fixture
async def relay_pair() -> tuple[Relay, FakeTransport, FakeTransport]:
    client, backend = FakeTransport(), FakeTransport()
    relay = Relay(
        max_message_bytes=1000,
        idle_timeout_s=60,
        ping_interval_s=None,
        ping_timeout_s=None,
        close_timeout_s=0.5,
    )
    relay.start(client, b"", backend=backend, backend_leftover=b"")
    return relay, client, backend


def feed_in_pieces(feed: Callable[[bytes], None], data: bytes, cut: int) -> None:
    for start in range(0, len(data), cut):
        feed(data[start : start + cut])


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 64, 10_000])
async def test_frames_pass_byte_for_byte_however_the_stream_is_cut(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport], cut: int
) -> None:
    relay, client, backend = relay_pair
    up = (
        frame(Opcode.TEXT, b"hello", masked=True)
        + frame(Opcode.BINARY, bytes(range(256)) * 2, masked=True)  # 16-bit length
        + frame(Opcode.TEXT, b"frag", fin=False, masked=True)
        + frame(Opcode.PING, b"their ping", masked=True)  # between fragments: allowed
        + frame(Opcode.CONT, b"ment", masked=True)
        + frame(Opcode.PONG, b"their pong", masked=True)
    )
    down = frame(Opcode.TEXT, b"x" * 900, masked=False) + frame(Opcode.BINARY, b"", masked=False)
    feed_in_pieces(relay._up.feed, up, cut)
    feed_in_pieces(relay._down.feed, down, cut)
    assert bytes(backend.written) == up  # a client's masked frames, unchanged
    assert bytes(client.written) == down
    assert (relay._up.messages, relay._up.bytes) == (3, 5 + 512 + 8)
    assert (relay._down.messages, relay._down.bytes) == (2, 900)


def leg(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport], *, masked: bool
) -> tuple[_Pipe, FakeTransport]:
    """The pipe of a client's (masked) or a server's frames, and where it writes."""
    relay, client, backend = relay_pair
    return (relay._up, backend) if masked else (relay._down, client)


@pytest.mark.parametrize("size", [1, 125, 126, 128, 1000])
@pytest.mark.parametrize("masked", [True, False])
async def test_a_whole_message_in_one_read_is_forwarded_as_the_bytes_that_came(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport], size: int, masked: bool
) -> None:
    # What a WebSocket echo does all the time: one read, one message (7- or 16-bit
    # length), one write of the very bytes object read - no view, no copy.
    pipe, sink = leg(relay_pair, masked=masked)
    data = frame(Opcode.TEXT, b"m" * size, masked=masked)
    pipe.feed(data)
    pipe.feed(data)
    assert len(sink.writes) == 2
    assert sink.writes[0] is data
    assert sink.writes[1] is data
    assert (pipe.messages, pipe.bytes) == (2, 2 * size)


# 129 and 133 bytes: a 64-bit length's head and the start of its payload are as long as
# a whole 127-byte message with a 7-bit length (server frame, client frame).
@pytest.mark.parametrize("cut", [129, 133, 4096])
@pytest.mark.parametrize("masked", [True, False])
async def test_a_64_bit_length_frame_passes(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport], cut: int, masked: bool
) -> None:
    pipe, sink = leg(relay_pair, masked=masked)
    relay = pipe.relay
    relay.max_message_bytes = 100_000
    data = frame(Opcode.BINARY, b"z" * 70_000, masked=masked)
    feed_in_pieces(pipe.feed, data + data, cut)
    assert bytes(sink.written) == data + data
    assert (pipe.messages, pipe.bytes) == (2, 140_000)
    assert not relay._ending


@pytest.mark.parametrize("masked", [True, False])
async def test_a_whole_message_over_the_limit_in_one_read_is_not_forwarded(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport], masked: bool
) -> None:
    pipe, sink = leg(relay_pair, masked=masked)
    pipe.feed(frame(Opcode.BINARY, b"b" * 1001, masked=masked))  # the limit is 1000
    assert pipe.relay.stats.detail == "message too big"
    close = (Opcode.CLOSE, True, struct.pack("!H", 1009) + b"message too big")
    assert parse(bytes(sink.written), masked=masked) == [close]


async def test_a_message_over_the_limit_closes_both_legs_with_1009(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport],
) -> None:
    relay, client, backend = relay_pair
    first = frame(Opcode.TEXT, b"a" * 600, fin=False, masked=True)
    relay._up.feed(first + frame(Opcode.CONT, b"b" * 600, masked=True))
    # The first fragment passed; the second would make 1200 bytes: not forwarded.
    assert parse(bytes(backend.written), masked=True) == [
        (Opcode.TEXT, False, b"a" * 600),
        (Opcode.CLOSE, True, struct.pack("!H", 1009) + b"message too big"),
    ]
    assert parse(bytes(client.written), masked=False) == [
        (Opcode.CLOSE, True, struct.pack("!H", 1009) + b"message too big")
    ]
    # Both answer the close: both transports close and the relay is done.
    relay._up.feed(frame(Opcode.CLOSE, struct.pack("!H", 1009), masked=True))
    relay._down.feed(frame(Opcode.CLOSE, struct.pack("!H", 1009), masked=False))
    await asyncio.wait_for(relay.done, 1)
    assert client.closed
    assert backend.closed
    assert relay.stats.detail == "message too big"


async def test_a_flood_of_empty_fragments_is_refused_like_a_big_message(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport],
) -> None:
    relay, _, backend = relay_pair
    relay._up.feed(frame(Opcode.TEXT, b"x", fin=False, masked=True))
    empty = frame(Opcode.CONT, b"", fin=False, masked=True)
    fits = (relay.max_message_bytes - 1) // FRAGMENT_OVERHEAD_BYTES  # 15 of 64 in 1000
    relay._up.feed(empty * fits)
    assert not relay._ending
    relay._up.feed(empty)
    assert relay._ending
    assert relay.stats.detail == "message too big"
    sent = parse(bytes(backend.written), masked=True)
    assert len(sent) == 1 + fits + 1  # the opening frame, the fragments that fit, a close
    assert sent[-1] == (Opcode.CLOSE, True, struct.pack("!H", 1009) + b"message too big")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (frame(Opcode.TEXT, b"x", masked=False), "unmasked frame"),
        (b"\xc1\x81" + b"\x00" * 5, "reserved bits set"),  # RSV1 without an extension
        (frame(3, b"", masked=True), "reserved opcode"),
        (frame(Opcode.CONT, b"x", masked=True), "continuation without a message"),
        (frame(Opcode.PING, b"x" * 126, masked=True), "bad control frame"),
        (frame(Opcode.PING, b"x", fin=False, masked=True), "bad control frame"),
        (
            frame(Opcode.TEXT, b"a", fin=False, masked=True)
            + frame(Opcode.TEXT, b"b", masked=True),
            "a new message inside another",
        ),
    ],
)
async def test_protocol_errors_close_both_legs_with_1002(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport], data: bytes, problem: str
) -> None:
    relay, client, backend = relay_pair
    relay._up.feed(data)
    assert relay.stats.detail == f"protocol error from the client: {problem}"
    assert parse(bytes(client.written), masked=False)[-1][:2] == (Opcode.CLOSE, True)
    assert parse(bytes(client.written), masked=False)[-1][2][:2] == struct.pack("!H", 1002)
    assert parse(bytes(backend.written), masked=True)[-1][2][:2] == struct.pack("!H", 1002)
    # The client failed the protocol: its connection is closed once the close frame is
    # out, not left for a reply (RFC 6455 7.1.7; Autobahn case 7.3.6).
    assert client.closed
    assert not backend.is_closing()  # the backend did nothing wrong: its reply is awaited
    # Nothing answers: the close timeout drops the backend's connection.
    await asyncio.wait_for(relay.done, 2)
    assert backend.aborted


async def test_a_protocol_error_from_the_backend_closes_its_connection(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport],
) -> None:
    relay, client, backend = relay_pair
    relay._down.feed(frame(Opcode.PING, b"x" * 126, masked=False))
    assert relay.stats.detail == "protocol error from the backend: bad control frame"
    assert parse(bytes(backend.written), masked=True)[-1][2][:2] == struct.pack("!H", 1002)
    assert backend.closed
    assert parse(bytes(client.written), masked=False)[-1][2][:2] == struct.pack("!H", 1002)
    relay._up.feed(frame(Opcode.CLOSE, struct.pack("!H", 1002), masked=True))  # the reply
    await asyncio.wait_for(relay.done, 1)
    assert client.closed


async def test_a_close_passes_and_its_reply_ends_the_session(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport],
) -> None:
    relay, client, backend = relay_pair
    close = frame(Opcode.CLOSE, struct.pack("!H", 4001) + b"bye", masked=False)
    relay._down.feed(close)
    assert bytes(client.written) == close
    # The client's data after the backend's close still reaches the backend (it may
    # send until it answers), then its close reply does; then both are closed.
    reply = frame(Opcode.CLOSE, struct.pack("!H", 4001), masked=True)
    relay._up.feed(frame(Opcode.TEXT, b"late", masked=True) + reply)
    assert parse(bytes(backend.written), masked=True) == [
        (Opcode.TEXT, True, b"late"),
        (Opcode.CLOSE, True, struct.pack("!H", 4001)),
    ]
    await asyncio.wait_for(relay.done, 1)
    assert (relay.stats.client_code, relay.stats.backend_code) == (4001, 4001)
    assert client.closed
    assert backend.closed


async def test_a_leg_lost_without_a_close_gets_the_other_closed(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport],
) -> None:
    relay, client, backend = relay_pair
    client.abort()  # the client vanished
    await asyncio.sleep(0)
    assert parse(bytes(backend.written), masked=True) == [
        (Opcode.CLOSE, True, struct.pack("!H", 1001) + b"client went away")
    ]
    relay._down.feed(frame(Opcode.CLOSE, struct.pack("!H", 1001), masked=False))
    await asyncio.wait_for(relay.done, 1)
    assert relay.stats.client_code == 1006
    assert backend.closed


async def test_the_gateway_close_waits_for_the_end_of_a_frame(
    relay_pair: tuple[Relay, FakeTransport, FakeTransport],
) -> None:
    relay, _, backend = relay_pair
    message = frame(Opcode.BINARY, b"q" * 500, masked=True)
    relay._up.feed(message[:100])  # half a frame on its way to the backend
    relay.stop(1001, "server shutdown")
    assert bytes(backend.written) == message[:100]  # the close cannot cut the frame
    relay._up.feed(message[100:])
    frames = parse(bytes(backend.written), masked=True)
    assert frames == [
        (Opcode.BINARY, True, b"q" * 500),
        (Opcode.CLOSE, True, struct.pack("!H", 1001) + b"server shutdown"),
    ]


async def test_keepalive_pings_both_legs_and_takes_their_pongs_out() -> None:
    client, backend = FakeTransport(), FakeTransport()
    relay = Relay(
        max_message_bytes=1000,
        idle_timeout_s=60,
        ping_interval_s=1,
        ping_timeout_s=1,
        close_timeout_s=0.5,
    )
    relay.start(client, b"", backend=backend, backend_leftover=b"")
    now = relay.now()
    assert relay.check(now + 1.1) is False
    to_client = parse(bytes(client.written), masked=False)
    to_backend = parse(bytes(backend.written), masked=True)
    assert to_client[0][0] == to_backend[0][0] == Opcode.PING
    client.written.clear()
    backend.written.clear()
    # The pongs to the gateway's pings are not passed on.
    relay._up.feed(frame(Opcode.PONG, to_client[0][2], masked=True))
    relay._down.feed(frame(Opcode.PONG, to_backend[0][2], masked=False))
    assert client.written == backend.written == b""
    # No pong in time from the backend: the client is told 1011, the backend dropped.
    relay.check(now + 2.2)
    pong_from_client = parse(bytes(client.written), masked=False)[0][2]
    relay._up.feed(frame(Opcode.PONG, pong_from_client, masked=True))
    assert relay.check(now + 3.5) is True
    assert relay.stats.detail == "no pong from the backend"
    assert parse(bytes(client.written), masked=False)[-1][2][:2] == struct.pack("!H", 1011)
    await asyncio.sleep(0)
    assert backend.aborted


def test_control_frames_are_masked_only_towards_a_server() -> None:
    assert control_frame(Opcode.PING, b"p", masked=False) == b"\x89\x01p"
    masked = control_frame(Opcode.PING, b"p", masked=True)
    assert masked[:2] == b"\x89\x81"
    assert _mask(masked[6:], masked[2:6]) == b"p"
    assert parse(close_frame(1000, "r" * 200, masked=False), masked=False)[0][2] == (
        struct.pack("!H", 1000) + b"r" * 123
    )


# -- through the gateway ---------------------------------------------------------------


@pytest.fixture
async def echo_backend() -> AsyncIterator[tuple[int, list[Any]]]:
    """A websockets echo server; ``closes`` gets each session's close code and reason."""
    closes: list[Any] = []

    async def echo(connection: ServerConnection) -> None:
        try:
            async for message in connection:
                if message == "close 4002":
                    await connection.close(4002, "backend says bye")
                    return
                if message == "drop":
                    connection.transport.abort()
                    return
                await connection.send(message)
        except ConnectionClosed:
            pass
        finally:
            closes.append(connection.protocol.close_rcvd)

    async with serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
        yield server.sockets[0].getsockname()[1], closes


def ws_url(url: str) -> str:
    return url.replace("https://", "wss://").replace("127.0.0.1", "localhost") + "/ws"


async def test_relay_carries_messages_and_close_codes_both_ways(
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
    echo_backend: tuple[int, list[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, closes = echo_backend
    caplog.set_level(logging.INFO, "gateway.websocket")
    async with gateway_factory(f"http://127.0.0.1:{port}") as url:
        async with connect(ws_url(url), ssl=client_ssl, compression=None) as ws:
            for message in ["text", b"\x00\xffbinary", "é" * 1000, b"x" * 200_000]:
                await ws.send(message)
                assert await ws.recv() == message
            await ws.send(["frag", "ments"])  # a fragmented message
            assert await ws.recv() == "fragments"
            await ws.close(4001, "client says bye")
        await asyncio.sleep(0.1)
        assert (closes[-1].code, closes[-1].reason) == (4001, "client says bye")
        async with connect(ws_url(url), ssl=client_ssl, compression=None) as ws:
            await ws.send("close 4002")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "backend says bye")
        async with connect(ws_url(url), ssl=client_ssl, compression=None) as ws:
            await ws.send("drop")  # the backend drops the connection: 1011 to the client
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd.code == 1011
    lines = [r.getMessage() for r in caplog.records if "websocket session" in r.getMessage()]
    assert len(lines) == 3
    assert all("mode=relay" in line for line in lines), lines
    assert "up=5 msgs" in lines[0]


async def test_compression_or_the_setting_keeps_the_bridge(
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
    echo_backend: tuple[int, list[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, _ = echo_backend
    caplog.set_level(logging.INFO, "gateway.websocket")
    async with (
        gateway_factory(f"http://127.0.0.1:{port}") as url,
        connect(ws_url(url), ssl=client_ssl, compression="deflate") as ws,
    ):
        await ws.send("compressed")
        assert await ws.recv() == "compressed"
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
    async with (
        gateway_factory(f"http://127.0.0.1:{port}", websocket={"relay": False}) as url,
        connect(ws_url(url), ssl=client_ssl, compression=None) as ws,
    ):
        await ws.send("bridged")
        assert await ws.recv() == "bridged"
    lines = [r.getMessage() for r in caplog.records if "websocket session" in r.getMessage()]
    assert len(lines) == 2
    assert all("mode=bridge" in line for line in lines), lines


async def test_relay_limits_and_idle_timeout(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext, echo_backend: tuple[int, list[Any]]
) -> None:
    port, closes = echo_backend
    async with gateway_factory(
        f"http://127.0.0.1:{port}",
        websocket={"max_message_bytes": 1000},
        timeouts={"websocket_idle_s": 0.5},
    ) as url:
        async with connect(ws_url(url), ssl=client_ssl, compression=None, max_size=None) as ws:
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
            await ws.send("x" * 1001)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd.code == 1009
        await asyncio.sleep(0.1)
        assert closes[-1].code == 1009
        async with connect(ws_url(url), ssl=client_ssl, compression=None) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "idle timeout")
        await asyncio.sleep(0.1)
        assert closes[-1].code == 1001


@pytest.mark.parametrize("relay", [True, False])
async def test_a_slow_reader_pauses_the_backend(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext, relay: bool
) -> None:
    sent = 0
    done = asyncio.Event()

    async def flood(connection: ServerConnection) -> None:
        nonlocal sent
        block = b"b" * 65536
        try:
            while sent < 512 * 65536:
                await connection.send(block)  # waits while the gateway does not read
                sent += 1
        except ConnectionClosed:
            pass
        done.set()

    async with serve(flood, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with (
            gateway_factory(
                f"http://127.0.0.1:{port}", websocket={"max_message_bytes": 65536, "relay": relay}
            ) as url,
            connect(ws_url(url), ssl=client_ssl, compression=None, max_queue=1) as ws,
        ):
            await ws.recv()
            await asyncio.sleep(1)  # the client reads nothing meanwhile
            # Loopback socket buffers (autotuned to several MiB each way) and the
            # bounded transports hold about 11 MiB, relay or bridge alike; the backend
            # would send all 32 MiB if nothing pushed back.
            assert sent < 256, sent
            received = 1
            while received < 200:
                await ws.recv()
                received += 1
            assert sent >= 150
