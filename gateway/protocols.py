"""uvicorn's connection protocols with what a gateway on the internet needs added.

- ``HTTPProtocol`` (httptools): a deadline for the request head (slowloris) and a bound
  on its size, read from the uvicorn config (``gateway.server.uvicorn_config``).
- ``WebSocketProtocol`` (websockets-sansio): a refused handshake counts as complete;
  the socket is paused only when the app falls behind, not after every message.

``HTTP_PROTOCOL`` is ``HTTPProtocol``. The uvicorn internals these rely on are listed in
``gateway._compat``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.frames import Frame

from gateway._compat import (
    UVICORN_COMPLETES_REFUSED_HANDSHAKES,
    ClientDisconnected,
    HttpToolsProtocol,
    RequestResponseCycle,
    WebSocketsSansIOProtocol,
)
from gateway.held_writes import HeldWrites
from gateway.middleware.timeouts import FLOW_EXTENSION
from gateway.proxy.websocket_rules import FRAGMENT_OVERHEAD_BYTES
from gateway.refusals import refused
from gateway.request_rules import Refusal, check_head
from gateway.watchdog import Watchdog

__all__ = ["FRAGMENT_OVERHEAD_BYTES", "HTTP_PROTOCOL", "WebSocketProtocol"]


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with two changes.

    - Before uvicorn 0.55, the handshake counts as complete after a refusal sent through
      ``websocket.http.response`` (as uvicorn's wsproto protocol does; uvicorn PR #3138,
      in 0.55). Without it every refused handshake (403 for a foreign Origin, the
      backend's own refusal) is also logged as "returned without completing handshake".
    - Reading pauses only when a message waits behind another one (the app is behind),
      and resumes when the app has taken them all. uvicorn pauses after every message
      and resumes when the app takes it: two event-loop registrations per message, even
      while the app is waiting for it. The queue stays bounded: at most two messages
      plus the rest of one socket read.
    - A client's invalid frame or invalid UTF-8 is logged as one line with its address
      (``gateway.refusals``, once a minute per client), not as an ERROR with a traceback.
    - The frame relay (``gateway.proxy.websocket_relay``): when the handshake negotiated
      no extension and ``config.ws_relay`` is set, the scope offers ``gateway.relay``;
      an app that answers with ``gateway.relay.accept`` (the accept's headers and
      subprotocol, and ``start``) gets the 101 sent and the transport handed over.
    - Bounded per connection against a hostile client:
      - pings: while the client does not read (the transport paused writing), its socket
        is not read either, and only the latest pong waits to be written; a client that
        keeps the write buffer full for ``ws_send_timeout_s`` is cut off;
      - fragments: each continuation frame counts ``FRAGMENT_OVERHEAD_BYTES`` on top of
        its payload towards the message limit (``ws_max_size``), so a message made of a
        million tiny (or empty) fragments is refused (1009) like a big one.
    """

    _reported = False
    _relay_stop: Callable[[int, str], None] | None = None
    _write_blocked = False
    _held_pong: bytes | None = None
    _stall_timer: asyncio.TimerHandle | None = None
    _message_bytes = 0

    # -- a client that does not read ------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_blocked = True
        if not self.read_paused:
            self.transport.pause_reading()
        timeout_s: float | None = getattr(self.config, "ws_send_timeout_s", None)
        if timeout_s is not None and self._stall_timer is None:
            self._stall_timer = self.loop.call_later(timeout_s, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_blocked = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._held_pong is not None and not self.transport.is_closing():
            self.transport.write(self._held_pong)
        self._held_pong = None
        if not self.read_paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().connection_lost(exc)

    def _stalled(self) -> None:
        self._stall_timer = None
        client = self.client[0] if self.client else None
        refused(
            "websocket_stalled",
            client,
            "WebSocket client %s read nothing for %g s while data waited: cut off",
            client,
            getattr(self.config, "ws_send_timeout_s", 0),
        )
        self.transport.abort()

    def handle_ping(self) -> None:
        output = self.conn.data_to_send()
        if not self._write_blocked:
            self.transport.write(b"".join(output))
            return
        # Only the latest pong waits (RFC 6455 5.5.3 allows answering only the last
        # ping); anything else (a close frame) is written.
        pongs = [chunk for chunk in output if chunk[:1] == _PONG_FRAME]
        if pongs:
            self._held_pong = pongs[-1]
        rest = [chunk for chunk in output if chunk[:1] != _PONG_FRAME]
        if rest:
            self.transport.write(b"".join(rest))

    # -- messages made of many fragments ------------------------------------------

    def handle_text(self, event: Frame) -> None:
        self._message_bytes = len(event.data) + FRAGMENT_OVERHEAD_BYTES
        super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        self._message_bytes = len(event.data) + FRAGMENT_OVERHEAD_BYTES
        super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if self.close_sent:
            return
        self._message_bytes += len(event.data) + FRAGMENT_OVERHEAD_BYTES
        limit = self.config.ws_max_size
        if limit and self._message_bytes > limit:
            self.frames = []
            client = self.client[0] if self.client else None
            refused(
                "websocket_fragments",
                client,
                "WebSocket client %s sent a message of too many fragments: closed with 1009",
                client,
            )
            self.conn.fail(1009, "message too big")
            self.handle_parser_exception()
            return
        super().handle_cont(event)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.parser_exc is not None and not self._reported:
            self._report(str(self.conn.parser_exc))

    def _report(self, what: str) -> None:
        self._reported = True
        close = self.conn.close_sent
        client = self.client[0] if self.client else None
        refused(
            "invalid_websocket_data",
            client,
            "invalid WebSocket data from %s: %s (closed with %s)",
            client,
            what,
            close.code if close is not None else "no close frame",
        )

    # -- the frame relay ---------------------------------------------------------------

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if (
            getattr(self.config, "ws_relay", False)
            and self.response.status_code == 101
            and not self.conn.extensions
            and not self.handshake_complete
        ):
            send_timeout_s = getattr(self.config, "ws_send_timeout_s", None)
            self.scope["extensions"]["gateway.relay"] = {"send_timeout_s": send_timeout_s}

    async def _relay_accept(self, message: Any) -> None:
        """Send the 101 like ``websocket.accept`` does, then hand the transport over."""
        await self.writable.wait()
        if self.disconnected or self.transport.is_closing():
            raise ClientDisconnected
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in (self.default_headers + list(message.get("headers", [])))
        ]
        if message.get("subprotocol"):
            headers.append(("Sec-WebSocket-Protocol", message["subprotocol"]))
        del self.response.headers["Date"]
        self.response.headers.update(headers)
        self.handshake_complete = True
        self.conn.send_response(self.response)
        self.transport.write(b"".join(self.conn.data_to_send()))
        # A client may not send frames before the 101; any it did are the relay's.
        leftover = bytes(self.conn.reader.buffer)
        self._relay_stop = message["stop"]
        message["start"](self.transport, leftover, self.connection_lost)
        # What only served the handshake and the ASGI messages goes: an idle relayed
        # session holds its sockets, the relay and the app's frames, little else.
        self.conn = self.request = self.response = None  # type: ignore[assignment]
        self.queue = _DISCARD  # type: ignore[assignment]
        self.writable = _ALWAYS

    def shutdown(self) -> None:
        if self._relay_stop is not None:  # the relay owns the connection
            self._relay_stop(1012, "service restart")
            return
        super().shutdown()

    def send(self, message: Any) -> Coroutine[Any, Any, None]:
        if message["type"] == "gateway.relay.accept":
            return self._relay_accept(message)
        # Not a coroutine itself: each relayed message costs no extra frame.
        if (
            not UVICORN_COMPLETES_REFUSED_HANDSHAKES
            and message["type"] == "websocket.http.response.body"
            and not message.get("more_body")
        ):
            return self._send_last_body(message)
        return super().send(message)

    async def _send_last_body(self, message: Any) -> None:
        await super().send(message)
        self.handshake_complete = True

    def send_receive_event_to_app(self) -> None:
        paused, closed = self.read_paused, self.close_sent
        self.read_paused = True  # uvicorn's method pauses only a socket it thinks is reading
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = paused
        if self.close_sent and not closed and not self._reported:
            # uvicorn closed the connection (1007) over a text message that is not UTF-8.
            self._report("a text message that is not UTF-8")
        if not paused and not self.close_sent and self.queue.qsize() > 1:
            self.read_paused = True
            self.transport.pause_reading()


class _Discard:
    """Where a relayed connection's end is reported to a queue nobody reads any more."""

    def put_nowait(self, item: object) -> None:
        pass


_DISCARD = _Discard()
_ALWAYS = asyncio.Event()  # a relayed connection's "writable": nobody waits on it
_ALWAYS.set()

# A server's unmasked PONG frame starts with FIN + opcode 0xA.
_PONG_FRAME = b"\x8a"


_HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 20\r\nconnection: close\r\n\r\n408 Request Timeout\n"
)
_HEAD_TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 36\r\n"
    b"connection: close\r\n\r\n431 Request Header Fields Too Large\n"
)


_MALFORMED = Refusal(400, "malformed", "400 Bad Request: malformed request\n")


class _RefusedHead(Exception):
    """Raised in a parser callback to stop parsing a head that ``check_head`` refused."""


class _Http10Cycle(RequestResponseCycle):
    """uvicorn's request cycle for HTTP/1.0 clients, which have no chunked encoding
    (RFC 9112 section 6.1): a response without Content-Length is close-delimited -
    its body is sent as it is and the connection closed after it - where uvicorn
    would frame it with ``Transfer-Encoding: chunked``."""

    _close_delimited = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            framed = any(
                name.lower() in (b"content-length", b"transfer-encoding")
                for name, _ in message.get("headers", ())
            )
            if (
                not framed
                and self.scope["method"] != "HEAD"
                and message["status"] not in (204, 304)
            ):
                self._close_delimited = True
                self.keep_alive = False  # uvicorn adds "connection: close"
                self.chunked_encoding = False  # and no Transfer-Encoding
        elif (
            self._close_delimited
            and message["type"] == "http.response.body"
            and not self.response_complete
        ):
            await self._send_close_delimited(message)
            return
        await super().send(message)

    async def _send_close_delimited(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        self.transport.write(message.get("body", b""))
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()
            self.on_response()


class HTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the defences an edge needs.

    - Strict request heads (``gateway.request_rules.check_head``): a missing,
      repeated or invalid Host, a request line without an HTTP/1.x version, HTTP/1.0
      with Transfer-Encoding... get 400/505 before any app runs.
    - Trailers of a chunked request are dropped (and counted): uvicorn appends them
      to the request's headers when they arrive in the same read as the head.
    - HTTP/1.0 responses without Content-Length are close-delimited, not chunked.
    - Malformed requests are answered and logged (once a minute per client) by
      ``gateway.refusals``, with the client's address.

    - uvicorn arms no timer on a new connection nor while a request head arrives
      (its keep-alive timer is cancelled by the first byte), so a client that opens
      a connection and sends nothing, or one header byte at a time, holds it for
      ever.  Here the request head must be complete within ``header_timeout_s``
      (nginx ``client_header_timeout``): otherwise 408 (or a silent close if not
      a byte came) and the connection is closed.
    - httptools buffers a header field of any size before the app can judge it;
      a head over ``max_head_bytes`` gets 431 and the connection is closed.
    - A response's head goes out with the first piece of its body, in one write
      (``gateway.held_writes``), where uvicorn writes each on its own.
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
        self._in_body = False
        self._refusal: Refusal | None = None
        # The cycles write through it (from connection_made on); before the protocol writes
        # to the transport directly, it is flushed: what a cycle holds goes first.
        self._writes: HeldWrites

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
            self._writes.flush()
            self.transport.write(_HEAD_TIMEOUT_RESPONSE)
        self.transport.close()
        return True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._writes = HeldWrites(transport, self.loop)
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
            self._writes.flush()
            self.transport.write(_HEAD_TOO_LARGE_RESPONSE)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The send deadline (TimeoutsMiddleware) is kept only while the client is not
        # taking the response: this connection's write flow control tells it when.
        self.scope["extensions"] = {FLOW_EXTENSION: {"flow": self.flow}}
        self._awaiting_head = True
        self._watch_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:  # a trailer: never one of the request's headers
            client = self.client[0] if self.client else None
            refused("request_trailer", client, "request trailer from %s dropped", client)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._unwatch_head()
        refusal = check_head(self.parser.get_http_version(), self.headers)
        if refusal is not None:
            self._refusal = refusal
            raise _RefusedHead  # httptools stops; uvicorn calls send_400_response
        super().on_headers_complete()
        self._in_body = True
        if self.cycle is not None:
            self.cycle.transport = self._writes  # type: ignore[assignment]
        if self.scope.get("http_version") == "1.0" and self.cycle is not None:
            self.cycle.__class__ = _Http10Cycle

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def shutdown(self) -> None:
        self._writes.flush()  # uvicorn closes an idle connection at once
        super().shutdown()

    def handle_websocket_upgrade(self) -> None:
        self._writes.flush()  # a pipelined response's last write goes before the handshake's answer
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to anything httptools refused, or to a head we refused.
        refusal, self._refusal = self._refusal or _MALFORMED, None
        client = self.client[0] if self.client else None
        refused(refusal.reason, client, "from %s: %s", client, refusal.message.strip())
        body = refusal.message.encode()
        phrase = {400: b"Bad Request", 505: b"HTTP Version Not Supported"}[refusal.status]
        self._writes.flush()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (refusal.status, phrase, len(body), body)
        )
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._writes.hold_next()  # the next response's head
        # The next request's head: counted (and timed) from its first byte on.
        self._awaiting_head = True
        self._head_bytes = 0


HTTP_PROTOCOL: Any = HTTPProtocol
