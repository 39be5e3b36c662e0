"""HeldWrites (unit, on a recording transport) and HTTPProtocol's use of it (real sockets)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gateway.held_writes import HeldWrites
from gateway.protocols import HTTP_PROTOCOL
from tests.servers import plain_config, run_server

pytestmark = pytest.mark.timeout(30)


class Recording:
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[bytes, ...]]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", (data,)))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.calls.append(("writelines", tuple(parts)))

    def close(self) -> None:
        self.calls.append(("close", ()))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def held(transport: Recording) -> HeldWrites:
    return HeldWrites(cast(asyncio.Transport, transport), asyncio.get_running_loop())


async def test_the_head_and_the_body_share_one_write() -> None:
    transport = Recording()
    writes = held(transport)
    writes.write(b"head")
    assert transport.calls == []
    writes.write(b"body")
    writes.write(b"more")  # not held: only the first write after hold_next() is
    await asyncio.sleep(0)
    assert transport.calls == [("writelines", (b"head", b"body")), ("write", (b"more",))]


async def test_a_lone_head_goes_out_when_the_step_ends() -> None:
    transport = Recording()
    writes = held(transport)
    writes.write(b"head")
    await asyncio.sleep(0)
    assert transport.calls == [("write", (b"head",))]
    writes.write(b"body")  # the next piece of a streamed body is not held
    writes.hold_next()
    writes.write(b"next head")
    writes.write(b"next body")
    assert transport.calls[1:] == [
        ("write", (b"body",)),
        ("writelines", (b"next head", b"next body")),
    ]
    await asyncio.sleep(0)
    assert len(transport.calls) == 3  # the cancelled flush wrote nothing


async def test_close_and_flush_write_what_is_held_first() -> None:
    transport = Recording()
    writes = held(transport)
    writes.write(b"head")
    writes.close()
    assert transport.calls == [("write", (b"head",)), ("close", ())]
    writes.hold_next()
    writes.write(b"late")
    writes.flush()  # the connection is closing: dropped, as the transport would
    await asyncio.sleep(0)
    assert transport.calls == [("write", (b"head",)), ("close", ())]


async def exchange(port: int, request: bytes, until: bytes, *, then: bytes = b"") -> bytes:
    """Send ``request`` (and ``then`` once ``until`` has been received); read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        received = b""
        if then:
            received = await reader.readuntil(until)
            writer.write(then)
        received += await reader.read()
        return received
    finally:
        writer.close()


async def test_responses_keep_their_bytes_and_order_through_the_protocol() -> None:
    """Through HTTPProtocol: whole, HEAD, streamed and 100-continue responses, pipelined
    on one connection, arrive byte for byte and in order; the last one closes it."""
    seen: list[type] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(type(receive.__self__.transport))
        path = scope["path"]
        if path == "/continue":
            message = await receive()  # uvicorn answers 100 Continue first
            body = b"got " + message["body"]
        else:
            body = b"0123456789"
        headers = [(b"content-length", b"%d" % len(body))]
        if path == "/close":
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if path == "/stream":
            for piece in (body[:4], body[4:]):
                await asyncio.sleep(0.01)  # the head went out alone, at the step's end
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": body})

    config = plain_config(app, http=HTTP_PROTOCOL, date_header=False, server_header=False)
    async with run_server(config) as port:
        pipelined = b"".join(
            b"%s %s HTTP/1.1\r\nhost: x\r\n\r\n" % (method, path)
            for method, path in ((b"GET", b"/whole"), (b"HEAD", b"/head"), (b"GET", b"/stream"))
        )
        received = await exchange(
            port,
            pipelined + b"POST /continue HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"content-length: 2\r\n\r\n",
            b"100 Continue\r\n\r\n",
            then=b"hi" + b"GET /close HTTP/1.1\r\nhost: x\r\n\r\n",
        )
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n"
    assert received == (
        ok % 10
        + b"0123456789"
        + ok % 10  # HEAD: no body
        + ok % 10
        + b"0123456789"
        + b"HTTP/1.1 100 Continue\r\n\r\n"
        + ok % 6
        + b"got hi"
        + b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n0123456789"
    )
    assert seen == [HeldWrites] * 5
