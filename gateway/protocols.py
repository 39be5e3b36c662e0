"""uvicorn's connection protocols with what a gateway on the internet needs added.

- ``HTTPProtocol`` (httptools): a deadline for the request head (slowloris) and a bound
  on its size, read from the uvicorn config (``gateway.server.uvicorn_config``).
- ``WebSocketProtocol`` (websockets-sansio): a refused handshake counts as complete;
  the socket is paused only when the app falls behind, not after every message.

``HTTP_PROTOCOL`` is ``HTTPProtocol``, or ``"auto"`` where httptools is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from gateway.watchdog import Watchdog

__all__ = ["HTTP_PROTOCOL", "WebSocketProtocol"]


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with two changes.

    - The handshake counts as complete after a refusal sent through
      ``websocket.http.response`` (as uvicorn's wsproto protocol does; uvicorn PR #3138).
      Without it every refused handshake (403 for a foreign Origin, the backend's own
      refusal) is also logged as "returned without completing handshake".
    - Reading pauses only when a message waits behind another one (the app is behind),
      and resumes when the app has taken them all. uvicorn pauses after every message
      and resumes when the app takes it: two event-loop registrations per message, even
      while the app is waiting for it. The queue stays bounded: at most two messages
      plus the rest of one socket read.
    """

    def send(self, message: Any) -> Coroutine[Any, Any, None]:
        # Not a coroutine itself: each relayed message costs no extra frame.
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            return self._send_last_body(message)
        return super().send(message)

    async def _send_last_body(self, message: Any) -> None:
        await super().send(message)
        self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        paused = self.read_paused
        self.read_paused = True  # uvicorn's method pauses only a socket it thinks is reading
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        if not paused and not self.close_sent and self.queue.qsize() > 1:
            self.read_paused = True
            self.transport.pause_reading()


_HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 20\r\nconnection: close\r\n\r\n408 Request Timeout\n"
)
_HEAD_TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 36\r\n"
    b"connection: close\r\n\r\n431 Request Header Fields Too Large\n"
)


if HttpToolsProtocol is not None:

    class HTTPProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with two defences it lacks (slowloris, huge heads).

        - uvicorn arms no timer on a new connection nor while a request head arrives
          (its keep-alive timer is cancelled by the first byte), so a client that opens
          a connection and sends nothing, or one header byte at a time, holds it for
          ever.  Here the request head must be complete within ``header_timeout_s``
          (nginx ``client_header_timeout``): otherwise 408 (or a silent close if not
          a byte came) and the connection is closed.
        - httptools buffers a header field of any size before the app can judge it;
          a head over ``max_head_bytes`` gets 431 and the connection is closed.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_timeout_s: float | None = getattr(self.config, "header_timeout_s", None)
            self._max_head_bytes: int | None = getattr(self.config, "max_head_bytes", None)
            # The head deadline is checked on the config's watchdog ticks: a loop timer
            # armed and cancelled for every request would cost more than the request line.
            self._watchdog: Watchdog | None = getattr(self.config, "head_watchdog", None)
            self._head_since: float | None = None
            self._head_bytes = 0
            self._awaiting_head = True

        def _watch_head(self) -> None:
            if self._head_since is None and self._watchdog is not None:
                self._head_since = self.loop.time()
                self._watchdog.watch(self)

        def _unwatch_head(self) -> None:
            if self._head_since is not None and self._watchdog is not None:
                self._head_since = None
                self._watchdog.unwatch(self)

        def check(self, now: float) -> bool:
            """The watchdog's tick: close a connection whose head is late (then True)."""
            since, timeout_s = self._head_since, self._head_timeout_s
            if since is None or timeout_s is None:
                return True
            if now - since < timeout_s:
                return False
            self._head_since = None
            if not self._awaiting_head or self.transport.is_closing():
                return True
            if self.cycle is not None and not self.cycle.response_complete:
                return True  # a request is being answered; its own timeouts apply
            if self._head_bytes:
                self.transport.write(_HEAD_TIMEOUT_RESPONSE)
            self.transport.close()
            return True

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._unwatch_head()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._awaiting_head:
                self._watch_head()
                self._head_bytes += len(data)
            super().data_received(data)
            if (
                self._awaiting_head
                and self._max_head_bytes is not None
                and self._head_bytes > self._max_head_bytes
                and not self.transport.is_closing()
            ):
                self._unwatch_head()
                self.transport.write(_HEAD_TOO_LARGE_RESPONSE)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._awaiting_head = True
            self._watch_head()

        def on_headers_complete(self) -> None:
            self._awaiting_head = False
            self._head_bytes = 0
            self._unwatch_head()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The next request's head: counted (and timed) from its first byte on.
            self._awaiting_head = True
            self._head_bytes = 0

    HTTP_PROTOCOL: Any = HTTPProtocol
else:  # pragma: no cover
    HTTP_PROTOCOL = "auto"
