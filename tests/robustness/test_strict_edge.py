"""A differential test of the edge: each request shape goes byte for byte over TLS through
a real gateway to a raw backend that records every byte it receives, so that a regression
shows which shape got through and what the backend saw.

Lenient shapes that nginx lets pass, or that desync a chain of parsers, must be refused
before any backend byte is written; the shapes RFC 9112 asks a recipient to accept
(a backend's bare-LF response) must pass.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from gateway import refusals
from gateway.logs import ClientLog
from tests.conftest import GatewayFactory
from tests.proxy.ws_servers import ws_backend
from tests.robustness.helpers import converse, port_of
from tests.servers import raw_server

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class RecordingBackend:
    """Reads each request (head, then a Content-Length or chunked body) and answers
    ``response``; ``received`` holds the raw bytes of every request."""

    def __init__(self, response: bytes = OK) -> None:
        self.response = response
        self.received: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            body = b""
            if b"transfer-encoding: chunked" in lower:
                body = await reader.readuntil(b"0\r\n\r\n")
            elif b"content-length:" in lower:
                length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
            self.received.append(head + body)
            writer.write(self.response)
            await writer.drain()
            if b"connection: close" in self.response.lower():
                return

    def heads(self) -> list[list[bytes]]:
        """The header lines (lower case) of each request received."""
        return [
            [line.lower() for line in request.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]]
            for request in self.received
        ]


@pytest.fixture
def recording() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
async def edge(recording: RecordingBackend, gateway_factory: GatewayFactory) -> AsyncIterator[int]:
    async with (
        raw_server(recording.handle) as backend_port,
        gateway_factory(f"http://127.0.0.1:{backend_port}") as url,
    ):
        yield port_of(url)


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:80]
    return int(raw[9:12])


REFUSED: dict[str, tuple[bytes, int]] = {
    "no_host_http11": (b"GET /x HTTP/1.1\r\n\r\n", 400),
    "two_hosts": (b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    "host_with_space": (b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host_with_userinfo": (b"GET /x HTTP/1.1\r\nHost: x@admin.example\r\n\r\n", 400),
    "host_with_slash": (b"GET /x HTTP/1.1\r\nHost: admin.example/\r\n\r\n", 400),
    "host_with_quote": (b'GET /x HTTP/1.1\r\nHost: a.example", for=6.6.6.6\r\n\r\n', 400),
    "host_bad_port": (b"GET /x HTTP/1.1\r\nHost: a.example:99999\r\n\r\n", 400),
    "host_empty": (b"GET /x HTTP/1.1\r\nHost: \r\n\r\n", 400),
    "no_version": (b"GET /x\r\n\r\n", 400),
    "http2_line": (b"GET /x HTTP/2.0\r\nHost: a.example\r\n\r\n", 505),
    "http3_line": (b"GET /x HTTP/3\r\nHost: a.example\r\n\r\n", 400),
    "http10_chunked": (
        b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        400,
    ),
    "cl_and_te": (
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "two_cl": (
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        400,
    ),
    "obs_fold": (b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    "bare_lf_request": (b"GET /x HTTP/1.1\nHost: a.example\n\n", 400),
    "space_before_colon": (b"GET /x HTTP/1.1\r\nHost : a.example\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", list(REFUSED))
async def test_lenient_shapes_are_refused_before_the_backend(
    name: str, edge: int, recording: RecordingBackend, client_ssl: ssl.SSLContext
) -> None:
    request, status = REFUSED[name]
    raw, closed = await converse(edge, request, client_ssl)
    assert status_of(raw) == status, raw
    assert closed
    assert recording.received == []


async def test_trailers_never_become_headers(
    edge: int, recording: RecordingBackend, client_ssl: ssl.SSLContext
) -> None:
    # Head, body and trailer in one write: what uvicorn merged into the headers.
    request = (
        b"POST /x HTTP/1.1\r\nHost: good.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: evil.example\r\nX-Trailer: 1\r\n"
        b"Authorization: Bearer x\r\n\r\n"
    )
    raw, _ = await converse(edge, request, client_ssl)
    assert status_of(raw) == 200
    [head] = recording.heads()
    assert [line for line in head if line.startswith(b"host:")] == [b"host: good.example"]
    assert not any(line.startswith((b"x-trailer", b"authorization")) for line in head)
    # The body came whole: it goes on with a Content-Length, and without the trailer.
    assert recording.received[0].endswith(b"\r\nContent-Length: 5\r\n\r\nhello")


@pytest.mark.parametrize(
    "nominated",
    [b"Host", b"Content-Length", b"X-Forwarded-For", b"X-Real-IP", b"X-Request-ID", b"Via"],
)
async def test_connection_cannot_remove_what_identifies_or_frames_the_request(
    nominated: bytes, edge: int, recording: RecordingBackend, client_ssl: ssl.SSLContext
) -> None:
    request = (
        b"POST /x HTTP/1.1\r\nHost: good.example\r\nConnection: keep-alive, "
        + nominated
        + b", X-Custom\r\nX-Custom: 1\r\nContent-Length: 2\r\n\r\nhi"
    )
    raw, _ = await converse(edge, request, client_ssl)
    assert status_of(raw) == 200
    [head] = recording.heads()
    names = [line.split(b":")[0] for line in head]
    assert b"host: good.example" in head  # not the upstream's address put in its place
    assert b"content-length" in names
    assert b"x-forwarded-for" in names
    assert b"x-real-ip" in names
    assert b"x-request-id" in names
    assert b"x-custom" not in names  # a true hop-by-hop nomination still works
    assert recording.received[0].endswith(b"\r\n\r\nhi")


@pytest.mark.parametrize(
    ("backend_response", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclose-delimited", b"close-delimited"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"abc"),
    ],
)
async def test_http10_clients_never_get_chunked_framing(
    backend_response: bytes,
    body: bytes,
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    recording = RecordingBackend(backend_response)
    async with (
        raw_server(recording.handle) as backend_port,
        gateway_factory(f"http://127.0.0.1:{backend_port}") as url,
    ):
        raw, closed = await converse(port_of(url), b"GET /x HTTP/1.0\r\n\r\n", client_ssl)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert status_of(raw) == 200
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert rest == body  # close-delimited: the bytes as they are, then EOF
    assert closed


async def test_backend_bare_lf_response_is_accepted(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    recording = RecordingBackend(b"HTTP/1.1 200 OK\nContent-Length: 5\nX-Old: 1\n\nhello")
    async with (
        raw_server(recording.handle) as backend_port,
        gateway_factory(f"http://127.0.0.1:{backend_port}") as url,
    ):
        raw, _ = await converse(
            port_of(url), b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n", client_ssl
        )
    assert status_of(raw) == 200
    assert raw.endswith(b"\r\n\r\nhello")
    assert b"x-old: 1" in raw.lower()


@pytest.mark.parametrize(
    "backend_response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_backend_framing_ambiguities_are_still_refused(
    backend_response: bytes, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    recording = RecordingBackend(backend_response)
    async with (
        raw_server(recording.handle) as backend_port,
        gateway_factory(f"http://127.0.0.1:{backend_port}") as url,
    ):
        raw, _ = await converse(
            port_of(url), b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n", client_ssl
        )
    assert status_of(raw) == 502


async def test_invalid_websocket_data_is_one_line_per_client_and_counted(
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.edge")
    # A throttle of its own, so that an earlier test's line from 127.0.0.1 does not count.
    monkeypatch.setattr(refusals, "_LOG", ClientLog(logging.getLogger("gateway.edge")))
    before = refusals.COUNTS["invalid_websocket_data"]
    async with (
        ws_backend() as backend,
        gateway_factory(backend.url) as url,
    ):
        for _ in range(3):
            async with connect(f"wss://localhost:{port_of(url)}/ws", ssl=client_ssl) as ws:
                # A masked text frame whose payload is not UTF-8, written past the client's
                # own checks.
                frame = Frame(Opcode.TEXT, b"\xff\xfe")
                ws.transport.write(frame.serialize(mask=True, extensions=[]))
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1007
    lines = [r for r in caplog.records if "invalid WebSocket data" in r.getMessage()]
    assert len(lines) == 1  # three clients from one address: one line a minute
    assert lines[0].levelno == logging.INFO
    assert "from 127.0.0.1: a text message that is not UTF-8 (closed with 1007)" in (
        lines[0].getMessage()
    )
    ours = [r for r in caplog.records if r.name.startswith(("gateway", "uvicorn"))]
    assert not [r for r in ours if r.levelno >= logging.ERROR]
    assert refusals.COUNTS["invalid_websocket_data"] == before + 3
