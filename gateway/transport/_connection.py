"""One HTTP/1.1 connection to an upstream: an asyncio Protocol driving httptools.

A connection carries one exchange at a time. A request without a body, or with one in
memory, goes out in one write from the caller's task, which then awaits the response
head: no task is created. A streamed body is sent by a task of its own, so that a
response arriving before the upload ends (a 413, a streaming echo) reaches the caller
at once. Everything else happens in the protocol callbacks: the parser feeds the
`ResponseStream`, a complete response hands the connection back to its pool at once
(before the caller has even read the body), and one lazily re-armed timer enforces the
read and write timeouts.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Final, cast

import httptools
import httpx

from gateway.transport._errors import ConnectionClosed, Phase, ProtocolViolation, to_httpx_error
from gateway.transport._request import (
    LAST_CHUNK,
    encode_chunk,
    encode_in_memory_request,
    encode_request_head,
)
from gateway.transport._stream import ResponseStream

READ_BUFFER_HIGH_BYTES: Final = 256 * 1024
"""Unread response body bytes above which the socket is no longer read."""

_HTTP_VERSIONS: Final = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


def _response_parser(connection: object) -> httptools.HttpResponseParser:
    """A response parser that accepts a bare LF as line end, as nginx does from backends
    (RFC 9112 section 2.2 allows it); every framing ambiguity - Content-Length with
    Transfer-Encoding, several Content-Lengths, obsolete line folding - stays an error."""
    parser = httptools.HttpResponseParser(connection)
    parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
    return parser


class Connection(asyncio.Protocol):
    """An HTTP/1.1 client connection; see the module docstring."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        label: str,
        max_header_bytes: int,
        on_release: Callable[[Connection], None],
        on_close: Callable[[Connection], None],
    ) -> None:
        self._loop = loop
        self._label = label
        self._max_header_bytes = max_header_bytes
        self._on_release = on_release
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._parser = _response_parser(self)
        # Pool bookkeeping.
        self.closed = False
        self.idle = False
        self.idle_since = 0.0
        self.requests_sent = 0
        self.retry_safe = False  # last failure may be retried on a fresh connection
        # Timers: one handle, re-armed lazily (see _on_timer).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._read_timeout_s: float | None = None
        self._write_timeout_s: float | None = None
        # Sending side.
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._drain_started = 0.0
        self._body_task: asyncio.Task[None] | None = None
        self._body_pulled = False
        self._request_complete = True
        self._request_close = False
        self._is_head = False
        # Receiving side: the current exchange and the message being parsed.
        self._stream: ResponseStream | None = None
        self._request: httpx.Request | None = None
        self.reading_paused = False
        self._got_data = False
        self._header_bytes = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._has_content_length = False
        self._chunked = False
        self._conn_close = False
        self._conn_keep_alive = False
        self._until_eof = False
        self._keep_alive = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "idle" if self.idle else "active"
        return f"<Connection {self._label} {state} requests_sent={self.requests_sent}>"

    @property
    def connected(self) -> bool:
        """Whether connection_made() happened (and close() has real work to do)."""
        return self._transport is not None

    # -- the exchange ------------------------------------------------------------------

    async def send(
        self, request: httpx.Request, read_timeout_s: float | None, write_timeout_s: float | None
    ) -> httpx.Response:
        """Send `request` and return the response as soon as its head is complete."""
        if self.closed:
            self.retry_safe = self.requests_sent > 0
            raise to_httpx_error(ConnectionClosed("connection already closed"), "write", request)
        stream = ResponseStream(self, self._loop)
        self._stream = stream
        self._request = request
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self.requests_sent += 1
        self.retry_safe = False
        self._got_data = self._body_pulled = self._request_complete = False
        self._header_bytes = 0
        try:
            await self._send_request(request, stream)
            while stream.status == 0:
                await stream.wait()
        except BaseException:
            if self._stream is stream:  # else complete, and maybe serving another request
                self.close()
            raise
        return httpx.Response(
            stream.status,
            headers=stream.headers,
            stream=stream,
            extensions={"http_version": stream.http_version, "reason_phrase": stream.reason},
            request=request,
        )

    async def _send_request(self, request: httpx.Request, stream: ResponseStream) -> None:
        transport = cast(asyncio.Transport, self._transport)
        head = encode_request_head(request)
        self._request_close = head.connection_close
        self._is_head = request.method == "HEAD"
        body = request.stream
        if isinstance(body, httpx.ByteStream):  # in memory: one write, no task
            transport.write(encode_in_memory_request(head, b"".join(body)))
            self._request_complete = True
            return
        if not isinstance(body, AsyncIterable):
            raise TypeError(f"request stream must be async iterable, not {type(body).__name__}")
        chunks = aiter(body)
        self._body_pulled = True
        parts, chunked = head.parts, head.chunked
        first = b""
        if not chunked and head.content_length < 0:
            # Unknown length: peek, so that an empty stream sends no body and no framing.
            first = await _next_chunk(chunks)
            if not first:
                parts.append(b"\r\n")
                transport.write(b"".join(parts))
                self._request_complete = True
                return
            parts.append(b"Transfer-Encoding: chunked\r\n")
            chunked = True
        parts.append(b"\r\n")
        if first:
            parts.append(encode_chunk(first))
        transport.write(b"".join(parts))
        # The body goes out from its own task, so that a response arriving before the
        # upload ends (a 413, a streaming echo) reaches the caller at once.
        self._body_task = self._loop.create_task(
            self._send_body(chunks, chunked, head.content_length, len(first), stream)
        )

    async def _send_body(
        self,
        chunks: AsyncIterator[bytes],
        chunked: bool,
        content_length: int,
        sent: int,
        stream: ResponseStream,
    ) -> None:
        """Task: stream the request body. Its failures reach whoever reads the response."""
        transport = cast(asyncio.Transport, self._transport)
        try:
            async for chunk in chunks:
                if not chunk:
                    continue  # an empty chunk would end a chunked body
                while self._write_paused and self._stream is stream:
                    await self._wait_writable()
                if self._stream is not stream:
                    return  # the exchange ended: complete early response, or failure
                sent += len(chunk)
                if chunked:
                    transport.write(encode_chunk(chunk))
                elif sent > content_length:
                    raise httpx.LocalProtocolError(
                        f"request body exceeds Content-Length {content_length}"
                    )
                else:
                    transport.write(chunk)
            if self._stream is not stream:
                return
            if chunked:
                transport.write(LAST_CHUNK)
            elif sent != content_length:
                raise httpx.LocalProtocolError(
                    f"request body ended after {sent} of {content_length} bytes (Content-Length)"
                )
            self._request_complete = True
        except Exception as exc:
            # Raised by the body source (passed on as it is) or a framing error.
            if self._stream is stream:
                stream.fail(exc)
                self.close()
        finally:
            if self._body_task is asyncio.current_task():
                self._body_task = None

    async def _wait_writable(self) -> None:
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        self._drain_started = self._loop.time()
        if self._write_timeout_s is not None:
            self._arm_timer(self._drain_started + self._write_timeout_s)
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, reusable: bool) -> None:
        """The response is complete: hand the stream its end, the connection to the pool."""
        stream = cast(ResponseStream, self._stream)
        self._stream = None
        self._request = None
        stream.finish()
        self._wake_writer()
        if self.reading_paused:
            self.resume_reading()
        if reusable and self._request_complete and not self.closed:
            self._on_release(self)
        else:
            self.close()

    def close(self, cause: BaseException | None = None, phase: Phase | None = None) -> None:
        """Abort the connection; a pending exchange fails with `cause` mapped to httpx."""
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        stream = self._stream
        if stream is not None:
            self._stream = None
            if cause is None:
                cause = ConnectionAbortedError("connection closed by the gateway")
            elif isinstance(cause, OSError | ConnectionClosed) and not isinstance(
                cause, TimeoutError
            ):
                self.retry_safe = (
                    self.requests_sent > 1 and not self._got_data and not self._body_pulled
                )
            if phase is None:
                phase = "read" if self._request_complete or stream.status else "write"
            stream.fail(to_httpx_error(cause, phase, self._request, f"upstream {self._label}"))
            self._request = None
        self._wake_writer()
        task = self._body_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._on_close(self)

    # -- timeouts ----------------------------------------------------------------------

    def arm_read_timer(self, wait_started: float) -> None:
        """Make sure the timer fires by the read deadline of a wait begun at `wait_started`."""
        if self._read_timeout_s is not None:
            self._arm_timer(wait_started + self._read_timeout_s)

    def _arm_timer(self, deadline: float) -> None:
        timer = self._timer
        if timer is None or deadline < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        # Waits push no timer of their own: the one handle fires at the earliest
        # deadline it was armed for, and re-arms itself for whatever wait is pending.
        self._timer = None
        stream = self._stream
        if stream is None:
            return
        now = self._loop.time()
        next_at = math.inf
        started = stream.wait_started
        if started is not None and self._read_timeout_s is not None:
            deadline = started + self._read_timeout_s
            if deadline <= now:
                message = f"no bytes received for {self._read_timeout_s} s"
                self.close(TimeoutError(message), "read")
                return
            next_at = deadline
        if self._drain_waiter is not None and self._write_timeout_s is not None:
            deadline = self._drain_started + self._write_timeout_s
            if deadline <= now:
                message = f"upstream accepted no bytes for {self._write_timeout_s} s"
                self.close(TimeoutError(message), "write")
                return
            next_at = min(next_at, deadline)
        if next_at != math.inf:
            self._arm_timer(next_at)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (or drop it, if close() came first)."""
        self._transport = cast(asyncio.Transport, transport)
        if self.closed:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        """EOF ends a close-delimited body; anywhere else it fails the exchange."""
        if self.closed:
            return
        if exc is None and self._stream is not None and self._headers_done and self._until_eof:
            self._finish(False)
            return
        if exc is None:
            if not self._got_data:
                exc = ConnectionClosed("server disconnected without sending a response")
            elif not self._headers_done:
                exc = ConnectionClosed("server disconnected in the middle of the response head")
            else:
                exc = ConnectionClosed("server disconnected before the response body was complete")
        self.close(exc)

    def pause_writing(self) -> None:
        """The socket buffer is full: body writes wait for resume_writing()."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The socket buffer drained."""
        self._write_paused = False
        self._wake_writer()

    def resume_reading(self) -> None:
        """The consumer drained the body buffer: read the socket again."""
        self.reading_paused = False
        if not self.closed and self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        """Feed the parser; pause the socket when the consumer falls behind."""
        stream = self._stream
        if stream is None:  # bytes on an idle connection: never reuse it
            self.close()
            return
        self._got_data = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            context = exc.__context__
            self.close(context if isinstance(context, ProtocolViolation) else exc, "read")
            return
        if self._stream is stream:
            if stream.buffered_bytes > READ_BUFFER_HIGH_BYTES and not self.reading_paused:
                self.reading_paused = True
                cast(asyncio.Transport, self._transport).pause_reading()
            stream.wake()

    # -- httptools callbacks (called from inside feed_data) ----------------------------

    def on_message_begin(self) -> None:
        """Reset the per-message state."""
        if self._stream is None:
            raise ProtocolViolation("unexpected bytes after the response")
        self._reason = b""
        self._headers = []
        self._headers_done = self._has_content_length = self._chunked = False
        self._conn_close = self._conn_keep_alive = False

    def on_status(self, status: bytes) -> None:
        """Keep the reason phrase."""
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header field as received; note the ones that frame the message."""
        if self._headers_done:
            return  # a trailer field of a chunked body: not forwarded
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_header_bytes:
            raise ProtocolViolation(f"response head exceeds {self._max_header_bytes} bytes")
        self._headers.append((name, value))
        size = len(name)
        if size == 14:
            self._has_content_length = self._has_content_length or name.lower() == b"content-length"
        elif size == 17 and name.lower() == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
        elif size == 10 and name.lower() == b"connection":
            tokens = value.lower()
            self._conn_close = self._conn_close or b"close" in tokens
            self._conn_keep_alive = self._conn_keep_alive or b"keep-alive" in tokens

    def on_headers_complete(self) -> None:
        """Publish the final response head; skip interim (1xx) ones."""
        stream = self._stream
        if stream is None:
            raise ProtocolViolation("unexpected response")
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise ProtocolViolation("upstream switched protocols (101); not supported here")
            return  # 100 Continue, 103 Early Hints: llhttp ends this message by itself
        self._headers_done = True
        version = parser.get_http_version()
        no_body = self._is_head or status == 204 or status == 304
        self._until_eof = not (no_body or self._has_content_length or self._chunked)
        if version == "1.1":
            keep_alive = not self._conn_close
        else:
            keep_alive = version == "1.0" and self._conn_keep_alive and not self._conn_close
        self._keep_alive = keep_alive and not self._until_eof and not self._request_close
        stream.status = status
        stream.reason = self._reason
        stream.headers = self._headers
        stream.http_version = _HTTP_VERSIONS.get(version) or b"HTTP/" + version.encode()
        self._wake_writer()
        if self._is_head:
            # llhttp cannot be told the method, so it would wait for the body that the
            # Content-Length of a HEAD response announces: end here, with a new parser.
            self._parser = _response_parser(self)
            self._finish(self._keep_alive)

    def on_body(self, body: bytes) -> None:
        """Pass body bytes to the stream."""
        stream = self._stream
        if stream is None:
            raise ProtocolViolation("unexpected body bytes after the response")
        stream.feed(body)

    def on_message_complete(self) -> None:
        """End of the final response (interim responses end here too, and are ignored)."""
        if self._headers_done and self._stream is not None:
            self._finish(self._keep_alive)


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    """Return the next non-empty chunk, or b"" at the end of the stream."""
    async for chunk in chunks:
        if chunk:
            return chunk
    return b""
