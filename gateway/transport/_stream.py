"""The response body of one exchange, as an `httpx.AsyncByteStream`."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from gateway.transport._connection import Connection


class ResponseStream(httpx.AsyncByteStream):
    """Body bytes of one upstream response, yielded as received (de-chunked, not decoded).

    The connection pushes bytes in with `feed()`; the consumer pulls them with
    `async for`. While the stream is attached to its connection, draining the buffer
    resumes a paused socket, which is how backpressure reaches the upstream. When the
    message is complete the connection detaches (and may already serve another
    request); whatever is still buffered stays readable here.
    """

    __slots__ = (
        "_buffered_bytes",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_loop",
        "_wait_started",
        "_waiter",
        "headers",
        "http_version",
        "reason",
        "status",
    )

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn: Connection | None = conn
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._buffered_bytes = 0
        self._done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wait_started = 0.0
        self.status = 0  # 0 until the final response head is complete
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.http_version = b"HTTP/1.1"

    def __repr__(self) -> str:
        state = "done" if self._done else "failed" if self._error else "open"
        return f"<ResponseStream {state} buffered_bytes={self._buffered_bytes}>"

    # -- producer side (called by the connection) ------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet handed to the consumer."""
        return self._buffered_bytes

    def feed(self, data: bytes) -> None:
        """Append body bytes."""
        self._chunks.append(data)
        self._buffered_bytes += len(data)

    def wake(self) -> None:
        """Wake the consumer, if it waits, so it re-checks the state."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def finish(self) -> None:
        """The message is complete: detach from the connection."""
        self._conn = None
        self._done = True
        self.wake()

    def fail(self, error: Exception) -> None:
        """The exchange failed: detach; the consumer gets `error` after buffered bytes."""
        self._conn = None
        if self._error is None:
            self._error = error
        self.wake()

    @property
    def complete(self) -> bool:
        """Whether the whole body has been received and handed out: nothing more comes."""
        return self._done and not self._chunks

    @property
    def wait_started(self) -> float | None:
        """Loop time at which the consumer began waiting, or None if it does not wait."""
        return None if self._waiter is None else self._wait_started

    async def wait(self) -> None:
        """Wait until the connection reports progress (bytes, head, end or failure)."""
        if self._error is not None:
            raise self._error
        conn = self._conn
        if conn is None:
            return
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._wait_started = self._loop.time()
        conn.arm_read_timer(self._wait_started)
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    # -- consumer side -----------------------------------------------------------------

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._done:
                raise StopAsyncIteration
            try:
                await self.wait()
            except BaseException:
                # Cancelled (client went away) or failed: the connection cannot be reused.
                self._abandon()
                raise
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        self._buffered_bytes = 0
        conn = self._conn
        if conn is not None and conn.reading_paused:
            conn.resume_reading()
        return data

    async def aclose(self) -> None:
        """Release the exchange; a response not yet fully received closes its connection."""
        self._abandon()

    def _abandon(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.close()
        if not self._done and self._error is None:
            self._error = httpx.StreamClosed()
