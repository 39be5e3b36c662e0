"""BackendLeg: the bridge's WebSocket connection to a backend, on websockets' sans-I/O client.

websockets' ``ClientProtocol`` does the protocol (handshake, framing, masking,
permessage-deflate, control frames, close handshake, size limits); this module only
moves bytes between it and an asyncio transport, with what a relay needs and nothing
else: whole messages out of a bounded queue, one write per message, flow control both
ways, pings on request (the bridge's watchdog decides when), and a close timeout.

Failures are websockets' own exceptions, so ``websocket_rules`` maps them: the
handshake raises ``InvalidStatus`` (the backend's refusal, redirects included: a proxy
passes them on), other ``InvalidHandshake`` errors, ``OSError`` or ``TimeoutError``;
once open, ``recv`` and ``send`` raise ``ConnectionClosed`` after the connection is
closed (the close frames it carries tell who closed and why).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, TypeVar, cast

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import BINARY, CONT, PONG, TEXT, CloseCode, Frame
from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, OPEN, Event
from websockets.streams import StreamReader
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI, parse_uri

__all__ = ["BackendLeg", "LegOptions", "RawLeg", "open_backend_leg", "open_raw_leg"]

# The transport's write buffer, as websockets' asyncio client sets it: writers wait
# above the high mark until it drains to a quarter of it.
WRITE_LIMIT = 2**15


@dataclass(frozen=True, slots=True)
class LegOptions:
    """How backend legs are opened and run (one per proxy)."""

    open_timeout_s: float
    close_timeout_s: float
    max_size: int  # bytes per incoming message on the wire
    max_queue: int  # whole messages buffered before reading pauses
    compression: bool = False  # offer permessage-deflate


async def open_backend_leg(
    uri: str,
    *,
    request_target: str,
    headers: list[tuple[str, str]],
    subprotocols: list[Subprotocol],
    options: LegOptions,
    unix_path: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> BackendLeg:
    """Connect to ``uri`` (``ws[s]://authority/``) and complete the opening handshake.

    The request is ``GET request_target`` with websockets' handshake headers, then
    ``headers`` (a ``host`` among them replaces the one derived from ``uri``).  The
    whole of it, connecting included, is bounded by ``options.open_timeout_s``.  The
    backend is reached directly: no HTTP(S)_PROXY from the environment, no redirects.
    """
    wsuri = parse_uri(uri)
    extensions = enable_client_permessage_deflate(None) if options.compression else None
    protocol = ClientProtocol(
        wsuri,
        extensions=extensions,
        subprotocols=subprotocols or None,
        max_size=options.max_size,
    )
    request = _request(protocol.connect(), request_target, headers)
    leg: BackendLeg | None = None
    try:
        async with asyncio.timeout(options.open_timeout_s):
            leg = await _connect(
                lambda: BackendLeg(protocol, options), wsuri, unix_path, ssl_context
            )
            await leg.handshake(request)
    except BaseException:
        if leg is not None:
            leg.transport.abort()
        raise
    return leg


_P = TypeVar("_P", bound=asyncio.Protocol)


async def _connect(
    factory: Callable[[], _P],
    wsuri: WebSocketURI,
    unix_path: str | None,
    ssl_context: ssl.SSLContext | None,
) -> _P:
    """Open the connection (TLS for wss://)."""
    # TLS follows the scheme: a context given for a ws:// endpoint is not used.
    tls = (ssl_context or _default_tls()) if wsuri.secure else None
    server_hostname = wsuri.host if wsuri.secure else None
    loop = asyncio.get_running_loop()
    if unix_path is not None:
        _, protocol = await loop.create_unix_connection(
            factory, unix_path, ssl=tls, server_hostname=server_hostname
        )
    else:
        _, protocol = await loop.create_connection(
            factory, wsuri.host, wsuri.port, ssl=tls, server_hostname=server_hostname
        )
    return protocol


@dataclass(frozen=True, slots=True)
class RawLeg:
    """A backend connection after its opening handshake, for the frame relay: the
    transport (reading paused), what came after the response, and the response."""

    transport: asyncio.Transport
    leftover: bytes
    response: Response
    subprotocol: Subprotocol | None


async def open_raw_leg(
    uri: str,
    *,
    request_target: str,
    headers: list[tuple[str, str]],
    subprotocols: list[Subprotocol],
    options: LegOptions,
    unix_path: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> RawLeg:
    """Like ``open_backend_leg``, without extensions, for ``gateway.proxy.websocket_relay``:
    the response is read and checked by websockets, the frames after it are not
    parsed (they are the relay's); same errors."""
    wsuri = parse_uri(uri)
    protocol = ClientProtocol(wsuri, subprotocols=subprotocols or None)
    request = _request(protocol.connect(), request_target, headers)
    reader: _ResponseReader | None = None
    try:
        async with asyncio.timeout(options.open_timeout_s):
            reader = await _connect(_ResponseReader, wsuri, unix_path, ssl_context)
            reader.transport.write(request.serialize())
            response = await reader.response
        protocol.process_response(response)  # InvalidStatus, InvalidHandshake
    except BaseException:
        if reader is not None:
            reader.transport.abort()
        raise
    return RawLeg(reader.transport, reader.leftover(), response, protocol.subprotocol)


class _ResponseReader(asyncio.Protocol):
    """Reads a handshake response and nothing after it (then pauses the socket)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport
        self._reader = StreamReader()
        self._parser = Response.parse(
            self._reader.read_line, self._reader.read_exact, self._reader.read_to_eof
        )
        next(self._parser)
        self.response: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def leftover(self) -> bytes:
        return bytes(self._reader.buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_LIMIT)

    def data_received(self, data: bytes) -> None:
        self._reader.feed_data(data)
        if not self.response.done():
            self._advance()

    def eof_received(self) -> None:
        self._reader.feed_eof()
        if not self.response.done():
            self._advance()

    def _advance(self) -> None:
        try:
            self._parser.send(None)
        except StopIteration as done:
            self.transport.pause_reading()  # the relay reads from here on
            self.response.set_result(done.value)
        except Exception as exc:
            error = InvalidMessage("did not receive a valid HTTP response")
            error.__cause__ = exc
            self.response.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.response.done():
            error = InvalidMessage("the connection closed during the handshake")
            error.__cause__ = exc
            self.response.set_exception(error)
            self.response.exception()  # retrieved: the opener may have timed out


@functools.cache
def _default_tls() -> ssl.SSLContext:
    """The system's trust store and hostname checks; built once (loading CAs is slow)."""
    return ssl.create_default_context()


def _request(request: Request, target: str, headers: list[tuple[str, str]]) -> Request:
    """websockets' handshake request with the client's request-target and headers.

    websockets would derive the target from the URI (urlparse drops ``;params`` and
    re-encodes the path) and the Host from the backend's authority; a reverse proxy
    sends the client's.
    """
    host = next((value for name, value in headers if name.lower() == "host"), None)
    merged = Headers(
        (name, host if host is not None and name.lower() == "host" else value)
        for name, value in request.headers.raw_items()
    )
    for name, value in headers:
        if name.lower() != "host":
            merged[name] = value  # appends: repeated headers stay repeated
    return Request(target, merged)


class BackendLeg(asyncio.Protocol):
    """One backend WebSocket connection: ``recv``/``send`` whole messages, ``ping``, ``close``."""

    __slots__ = (
        "_close_timer",
        "_failed",
        "_loop",
        "_lost",
        "_messages",
        "_options",
        "_partial",
        "_partial_text",
        "_pong",
        "_pong_payload",
        "_reader",
        "_reading_paused",
        "_writer",
        "protocol",
        "response",
        "transport",
    )

    def __init__(self, protocol: ClientProtocol, options: LegOptions) -> None:
        self.protocol = protocol
        self._options = options
        self.transport: asyncio.Transport
        self.response: Response | None = None
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._partial: bytearray | None = None  # a fragmented message being received
        self._partial_text = False
        self._failed = False  # sent invalid UTF-8: the connection is failing
        self._reading_paused = False
        # The one coroutine waiting in recv() (a message or the end) or in send() (drain).
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._pong: asyncio.Future[None] | None = None
        self._pong_payload = b""
        self._close_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        # Resolved by connection_lost; the handshake waits on it too.
        self._lost: asyncio.Future[None] = self._loop.create_future()

    @property
    def subprotocol(self) -> Subprotocol | None:
        return self.protocol.subprotocol

    # Opening handshake

    async def handshake(self, request: Request) -> None:
        """Send ``request``; return once the backend accepted, raise its refusal otherwise."""
        self.protocol.send_request(request)
        self._flush()
        while self.response is None and not self._lost.done():
            await self._wait_reader()
        exc = self.protocol.handshake_exc
        if exc is None and self.response is None:  # websockets sets one; never leave it open
            exc = InvalidMessage("the connection closed during the handshake")
        if exc is not None:
            raise exc
        # Accepted; the backend may have closed already (recv and send will tell).

    # Messages

    async def recv(self) -> str | bytes:
        """The next whole message; ``ConnectionClosed`` once the connection is closed."""
        while not self._messages:
            if self._lost.done():
                raise self.protocol.close_exc
            await self._wait_reader()
        message = self._messages.popleft()
        if self._reading_paused and len(self._messages) <= self._options.max_queue // 4:
            self._reading_paused = False
            self.transport.resume_reading()
        return message

    async def send(self, message: str | bytes) -> None:
        """Send one message; wait while the backend does not read (``ConnectionClosed``
        once the connection is closing or closed)."""
        if self.protocol.state is not OPEN:
            await self._closed()
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        self._flush()
        if self._writer is not None:  # paused: wait for resume_writing or the end
            await asyncio.shield(self._writer)

    def ping(self) -> asyncio.Future[None] | None:
        """Send a ping; the future resolves on its pong and fails with ``ConnectionClosed``
        if the connection ends first.  None when the connection is not open."""
        if self.protocol.state is not OPEN:
            return None
        self._pong = pong = self._loop.create_future()
        self._pong_payload = os.urandom(4)
        self.protocol.send_ping(self._pong_payload)
        self._flush()
        return pong

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close with ``code``/``reason`` and wait (at most the close timeout) for the end."""
        if self.protocol.state is OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        if not self._lost.done():
            self._arm_close_timer()
            await asyncio.shield(self._lost)

    def abort(self) -> None:
        """Drop the connection at once (no close frame)."""
        self.transport.abort()

    # Internals

    def _wait_reader(self) -> asyncio.Future[None]:
        """What the one reader awaits: the next message, the response or the end."""
        self._reader = reader = self._loop.create_future()
        return reader

    def _wake_reader(self) -> None:
        reader, self._reader = self._reader, None
        _resolve(reader)

    async def _closed(self) -> NoReturn:
        """Wait for the end of a closing connection, then raise why it closed."""
        self._arm_close_timer()
        await asyncio.shield(self._lost)
        raise self.protocol.close_exc

    def _arm_close_timer(self) -> None:
        """The closing handshake has ``close_timeout_s`` to end before the socket is dropped."""
        if self._close_timer is None and not self._lost.done():
            timeout_s = self._options.close_timeout_s
            self._close_timer = self._loop.call_later(timeout_s, self.transport.abort)

    def _flush(self) -> None:
        """Write what the protocol has to send; b"" means end of stream."""
        chunks = self.protocol.data_to_send()
        if self.transport.is_closing():  # aborted: connection_lost is on its way
            return
        for data in chunks:
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
            else:  # TLS cannot half-close
                self.transport.close()

    def _process(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, Frame):
                if self._failed:  # nothing after invalid data reaches the client
                    return
                self._frame(event)
            elif isinstance(event, Response) and self.response is None:
                self.response = event
                self._wake_reader()

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is TEXT or opcode is BINARY:
            if frame.fin:
                self._deliver(frame.data, opcode is TEXT)
            else:
                self._partial = bytearray(frame.data)
                self._partial_text = opcode is TEXT
        elif opcode is CONT and self._partial is not None:
            self._partial += frame.data
            if frame.fin:
                data, self._partial = self._partial, None
                self._deliver(data, self._partial_text)
        elif opcode is PONG and self._pong is not None and frame.data == self._pong_payload:
            _resolve(self._pong)
            self._pong = None

    def _deliver(self, data: bytes | bytearray | memoryview, text: bool) -> None:
        if text:
            try:
                message: str | bytes = str(data, "utf-8")
            except UnicodeDecodeError as exc:
                self._failed = True
                self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                self._flush()
                self._arm_close_timer()
                return
        else:
            message = bytes(data)
        self._messages.append(message)
        if len(self._messages) >= self._options.max_queue and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_LIMIT)

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._flush()  # pongs, the close reply
        self._process(events)
        if protocol.close_expected():
            self._arm_close_timer()

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        events = self.protocol.events_received()  # a response read until EOF
        self._flush()
        self._process(events)
        # Returning None closes the transport: nothing is sent after a close.

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: the state becomes CLOSED
        assert self.protocol.state is CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._lost.set_result(None)
        self._wake_reader()
        pong = self._pong
        if pong is not None and not pong.done():
            pong.set_exception(self.protocol.close_exc)
            pong.exception()  # retrieved: the bridge may not be waiting for it
        self._pong = None
        self.resume_writing()  # a sender waiting for the buffer to drain sees the end

    def pause_writing(self) -> None:
        self._writer = self._loop.create_future()

    def resume_writing(self) -> None:
        writer, self._writer = self._writer, None
        _resolve(writer)


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    """Wake ``waiter`` if someone still waits on it (done: it was cancelled or failed)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
