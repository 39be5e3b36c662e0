"""The frame relay: WebSocket frames copied between the client's and the backend's
connections without decoding them, as nginx does after the handshake.

The bridge (``gateway.proxy.websocket``) ends the client's WebSocket at the gateway and
opens another to the backend: every message is parsed, unmasked, turned into an ASGI
message, validated, encoded, masked and framed again, per direction. When both legs
speak the same protocol - no extension on either, which the handshakes make sure of -
that work buys nothing: a client's frames are already masked as a client must send them
to a server, a server's frames need no mask. The relay reads each frame's header, and
forwards the bytes as they come, in as few writes as they arrived in.

What still applies, from frame headers alone:

- the message limit (payload bytes of a message, fragments summed, each continuation
  frame counting ``FRAGMENT_OVERHEAD_BYTES`` more): 1009 both ways;
- protocol errors a relay can see (reserved bits or opcodes, a wrongly masked frame, a
  continuation out of place, an oversized or fragmented control frame): 1002 both ways,
  and the leg at fault has its connection closed right after its close frame;
- the idle timeout (no data frame either way): 1001 both ways;
- keepalive pings from the gateway to each leg (their pongs are taken out, the others'
  pings and pongs pass); no pong within the timeout ends the session (1011);
- close frames pass as they are; a leg that drops without one gets a close from the
  gateway (1001 "client went away" to the backend, 1011 to the client);
- flow control: a leg that does not read pauses the other's socket; a client that
  reads nothing for ``send_timeout_s`` while data waits is cut off.

What does not: text messages are not checked for UTF-8 (the receiving endpoint does,
as it must), and nothing is decompressed (extensions are never negotiated here).

The relay owns both transports once ``start`` is called; ``done`` resolves when both
are closed, with the figures the session log reports in ``stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.frames import CloseCode

from gateway.proxy.websocket_rules import FRAGMENT_OVERHEAD_BYTES

__all__ = ["Relay", "RelayStats", "close_frame", "control_frame"]

_PING, _PONG, _CLOSE = 0x9, 0xA, 0x8
_PING_PAYLOAD_PREFIX = b"gw"  # the gateway's own pings: b"gw" + 4 random bytes


def control_frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One control frame (``payload`` at most 125 bytes); masked as a client sends it."""
    if not masked:
        return bytes((0x80 | opcode, len(payload))) + payload
    key = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + _mask(payload, key)


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """A close frame with ``code`` and ``reason`` (cut to fit 125 bytes)."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return control_frame(_CLOSE, payload, masked=masked)


def _mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (masking is its own inverse)."""
    if not data:
        return b""
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big"
    )


@dataclass(slots=True)
class RelayStats:
    """What the session log line and the metrics report."""

    messages_up: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    bytes_down: int = 0
    client_code: int | None = None
    backend_code: int | None = None
    detail: str = field(default="")


class _Pipe:
    """Frames from one leg (the source) to the other (``sink``), forwarded as they come.

    Parses frame headers only; keeps the bytes of a frame it must look into (close,
    pong: at most 125 bytes of payload). A frame split over reads is followed with
    ``_remaining``; a header split over reads waits in ``_head``.
    """

    __slots__ = (
        "_control",
        "_control_head",
        "_final",
        "_head",
        "_in_message",
        "_mask_bit",
        "_mask_bytes",
        "_message_bytes",
        "_pending",
        "_remaining",
        "bytes",
        "close_sink",
        "closed",
        "discarding",
        "finished",
        "from_client",
        "gateway_close",
        "messages",
        "relay",
        "sink",
    )

    def __init__(self, relay: Relay, sink: asyncio.Transport, *, from_client: bool) -> None:
        self.relay = relay
        self.sink = sink
        self.from_client = from_client  # frames from a client are masked, a server's not
        self._mask_bit = 0x80 if from_client else 0
        self._mask_bytes = 4 if from_client else 0
        self._remaining = 0
        self._head = b""
        self._control: bytearray | None = None
        self._control_head = 0
        self._in_message = False
        self._message_bytes = 0
        self._pending: list[bytes] = []  # frames to write at the next boundary
        self._final: bytes | None = None  # a close frame to write, then forward nothing
        self.finished = False  # a close frame was queued for the sink: nothing after it
        self.gateway_close = False  # ... and it was the gateway's own
        self.discarding = False  # the close frame was written: frames are not forwarded
        # The sink failed the protocol: its connection is closed once the close frame is
        # out, without waiting for a reply (RFC 6455 7.1.7, "Fail the WebSocket Connection").
        self.close_sink = False
        self.closed = False  # the source sent its close frame
        self.messages = 0
        self.bytes = 0

    def at_boundary(self) -> bool:
        return not self._remaining and not self._head and self._control is None

    def inject(self, frame: bytes) -> None:
        """Write ``frame`` (a control frame) to the sink between two frames."""
        if self.finished:
            return
        if self.at_boundary():
            self._write(frame)
        else:
            self._pending.append(frame)

    def finish(self, close: bytes, *, gateway: bool = False) -> None:
        """Write the close frame ``close`` at the next boundary, then forward nothing."""
        if self.finished:
            return
        self.finished, self.gateway_close = True, gateway
        if self.at_boundary():
            self._write_final(close)
        else:
            self._final = close

    def _write(self, data: bytes | memoryview) -> None:
        if not self.sink.is_closing():
            self.sink.write(data)

    def _write_final(self, close: bytes) -> None:
        self._write(close)
        self.discarding = True
        if self.close_sink and not self.sink.is_closing():
            self.sink.close()  # after what was written

    def _boundary(self) -> None:
        """At a frame boundary: write what waited for one."""
        if self._pending:
            if not self.discarding:
                for frame in self._pending:
                    self._write(frame)
            self._pending.clear()
        if self._final is not None:
            final, self._final = self._final, None
            self._write_final(final)

    def feed(self, data: bytes) -> None:
        # The common case first: the data is one whole unfragmented message of less than
        # 64 KiB (7- or 16-bit length), forwarded as the very bytes object that came,
        # between two messages with nothing to look into or to inject (checked inline:
        # a property call here costs a fifth of this path).
        size = len(data)
        if size >= 2 and not (
            self._remaining
            or self._head
            or self._in_message
            or self.discarding
            or self._pending
            or self._control is not None
            or self._final is not None
        ):
            first, second = data[0], data[1]
            length, head = second & 0x7F, 2
            if length == 126 and size >= 4:
                length, head = (data[2] << 8) | data[3], 4
            if (
                first & 0xF0 == 0x80  # FIN, no reserved bits
                and 0 < first & 0x0F < 3  # text or binary
                and second & 0x7F != 127  # a 64-bit length: the general path
                and second & 0x80 == self._mask_bit  # masked from a client, not from a server
                and size == head + self._mask_bytes + length
                and length <= self.relay.max_message_bytes
            ):
                self.messages += 1
                self.bytes += length
                self.relay.activity += 1
                self.sink.write(data)
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self._head:
            data = self._head + data
            self._head = b""
        view = memoryview(data)
        size = len(data)
        pos = start = 0  # data[start:pos] is forwarded as one write
        forwarding = not self.discarding
        remaining = self._remaining
        try:
            while pos < size:
                if remaining:
                    take = min(remaining, size - pos)
                    if self._control is not None:
                        self._control += view[pos : pos + take]
                        pos += take
                        start = pos
                        remaining -= take
                        if not remaining:
                            self._remaining = 0
                            self._control_done()
                            forwarding = not self.discarding
                    else:
                        pos += take
                        remaining -= take
                    continue
                # A frame boundary.
                if self._pending or self._final is not None:
                    if forwarding and start < pos:
                        self._write(view[start:pos])
                    start = pos
                    self._boundary()
                    forwarding = not self.discarding
                if size - pos < 2:
                    self._head = bytes(view[pos:])
                    break
                first, second = data[pos], data[pos + 1]
                length = second & 0x7F
                head = 2
                if length == 126:
                    head = 4
                    if size - pos < head:
                        self._head = bytes(view[pos:])
                        break
                    length = int.from_bytes(view[pos + 2 : pos + 4], "big")
                elif length == 127:
                    head = 10
                    if size - pos < head:
                        self._head = bytes(view[pos:])
                        break
                    length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                masked = second & 0x80
                if masked:
                    head += 4
                if size - pos < head:
                    self._head = bytes(view[pos:])
                    break
                opcode = first & 0x0F
                fin = first & 0x80
                problem = None
                if first & 0x70:
                    problem = "reserved bits set"
                elif bool(masked) is not self.from_client:
                    problem = "unmasked frame" if self.from_client else "masked frame"
                elif opcode >= 8:
                    if opcode > _PONG or not fin or length > 125:
                        problem = "bad control frame"
                elif opcode == 0:
                    if not self._in_message:
                        problem = "continuation without a message"
                elif opcode <= 2:
                    if self._in_message:
                        problem = "a new message inside another"
                    self._in_message = True
                    self._message_bytes = 0
                else:
                    problem = "reserved opcode"
                if problem is not None:
                    if forwarding and start < pos:
                        self._write(view[start:pos])
                    self._remaining = 0
                    self.relay._protocol_error(self, problem)
                    return
                if opcode < 8:
                    self._message_bytes += length + (FRAGMENT_OVERHEAD_BYTES if opcode == 0 else 0)
                    if self._message_bytes > self.relay.max_message_bytes:
                        if forwarding and start < pos:
                            self._write(view[start:pos])
                        self._remaining = 0
                        self.relay._too_big(self)
                        return
                    if fin:
                        self._in_message = False
                        if forwarding:
                            self.messages += 1
                    if forwarding:
                        self.bytes += length
                        self.relay.activity += 1
                    pos += head
                    remaining = length
                elif opcode == _PING:
                    pos += head
                    remaining = length
                else:  # close or pong: look into it before passing it on
                    if forwarding and start < pos:
                        self._write(view[start:pos])
                    self._control = bytearray(view[pos : pos + head])
                    self._control_head = head
                    pos += head
                    start = pos
                    remaining = length
                    if not remaining:
                        self._control_done()
                        forwarding = not self.discarding
            if forwarding and start < pos:
                self._write(view if start == 0 and pos == size else view[start:pos])
            self._remaining = remaining
            if (self._pending or self._final is not None) and self.at_boundary():
                self._boundary()  # the data ended with a frame
        finally:
            view.release()

    def _control_done(self) -> None:
        frame = bytes(self._control or b"")
        head = self._control_head
        self._control = None
        payload = frame[head:]
        if self.from_client:
            payload = _mask(payload, frame[head - 4 : head])
        opcode = frame[0] & 0x0F
        if opcode == _PONG:
            if not self.relay._own_pong(self, payload) and not self.discarding:
                self._write(frame)
        else:
            self.relay._close_received(self, frame, payload)
        self._boundary()


class _Side(asyncio.Protocol):
    """The asyncio protocol of one of the relay's two transports; its ``data_received``
    is the pipe's ``feed`` itself (one call per read, no frame in between)."""

    def __init__(self, relay: Relay, pipe: _Pipe, *, client: bool) -> None:
        self.relay = relay
        self.client = client
        self.data_received = pipe.feed  # type: ignore[method-assign]

    def eof_received(self) -> bool | None:
        return None  # close the transport: a WebSocket does not half-close

    def pause_writing(self) -> None:
        self.relay._paused(client=self.client)

    def resume_writing(self) -> None:
        self.relay._resumed(client=self.client)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay._lost(client=self.client)


class Relay:
    """Copies frames between a client's and a backend's WebSocket connections."""

    def __init__(
        self,
        *,
        max_message_bytes: int,
        idle_timeout_s: float,
        ping_interval_s: float | None,
        ping_timeout_s: float | None,
        close_timeout_s: float,
        send_timeout_s: float | None = None,
        stats: RelayStats | None = None,
    ) -> None:
        """``stats``: where the session's figures go (the caller's, to log them)."""
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.close_timeout_s = close_timeout_s
        self.send_timeout_s = send_timeout_s
        self.stats = stats if stats is not None else RelayStats()
        self._loop = asyncio.get_running_loop()
        self.now: Callable[[], float] = self._loop.time
        self.last_activity = self.now()
        # Data frames relayed so far: the idle check compares it between its ticks
        # (cheaper than reading the clock for every frame).
        self.activity = 0
        self._seen_activity = 0
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._client: asyncio.Transport | None = None
        self._backend: asyncio.Transport | None = None
        self._on_client_lost: Callable[[Exception | None], None] | None = None
        self._up: _Pipe
        self._down: _Pipe
        self._client_open = self._backend_open = False
        self._ending = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        # Keepalive: the payload of the ping in flight to each leg and when it went.
        self._pings: dict[bool, tuple[bytes, float]] = {}
        self._next_ping_at = self.last_activity + (ping_interval_s or 0)

    # -- start and stop ----------------------------------------------------------------

    def start(
        self,
        client: asyncio.Transport,
        client_leftover: bytes,
        on_client_lost: Callable[[Exception | None], None] | None = None,
        *,
        backend: asyncio.Transport,
        backend_leftover: bytes,
    ) -> None:
        """Take both transports over (their protocols are replaced) and start copying;
        ``*_leftover``: bytes each leg received after its handshake."""
        self._client, self._backend = client, backend
        self._on_client_lost = on_client_lost
        self._up = _Pipe(self, backend, from_client=True)
        self._down = _Pipe(self, client, from_client=False)
        self._client_open = self._backend_open = True
        client.set_protocol(_Side(self, self._up, client=True))
        backend.set_protocol(_Side(self, self._down, client=False))
        self.last_activity = self.now()
        self._next_ping_at = self.last_activity + (self.ping_interval_s or 0)
        if backend_leftover:
            self._down.feed(backend_leftover)
        if client_leftover:
            self._up.feed(client_leftover)
        # Transports paused by their previous protocols read from now on.
        for transport in (client, backend):
            with contextlib.suppress(AttributeError, RuntimeError):
                transport.resume_reading()

    def stop(self, code: int, reason: str) -> None:
        """End the session from the gateway: a close frame to each leg."""
        self._end(code, reason, code, reason)

    def check(self, now: float) -> bool:
        """A watchdog tick: idle timeout (True once it ended the session), keepalive."""
        if self._ending or self.done.done():
            return self.done.done()
        if self.activity != self._seen_activity:  # data frames since the last tick
            self._seen_activity = self.activity
            self.last_activity = now
        if now - self.last_activity >= self.idle_timeout_s:
            self.stats.detail = "idle timeout"
            self.stop(CloseCode.GOING_AWAY, "idle timeout")
            return True
        if self.ping_interval_s is None:
            return False
        timeout_s = self.ping_timeout_s
        for client, (_, sent_at) in list(self._pings.items()):
            if timeout_s is not None and now - sent_at >= timeout_s:
                self.stats.detail = f"no pong from the {'client' if client else 'backend'}"
                if client:  # the client is gone: tell the backend, drop the client
                    self._end(None, None, CloseCode.GOING_AWAY, "client went away")
                else:
                    self._end(CloseCode.INTERNAL_ERROR, "backend connection lost", None, None)
                self._abort(client=client)
                return True
        if now >= self._next_ping_at:
            self._next_ping_at = now + self.ping_interval_s
            for client, pipe in ((True, self._down), (False, self._up)):
                if client not in self._pings:
                    payload = _PING_PAYLOAD_PREFIX + os.urandom(4)
                    self._pings[client] = (payload, now)
                    pipe.inject(control_frame(_PING, payload, masked=not client))
        return False

    # -- what the pipes report -----------------------------------------------------------

    def _own_pong(self, pipe: _Pipe, payload: bytes) -> bool:
        """True if ``payload`` answers the gateway's own ping to the pipe's source."""
        client = pipe.from_client
        waiting = self._pings.get(client)
        if waiting is not None and waiting[0] == payload:
            del self._pings[client]
            return True
        return payload.startswith(_PING_PAYLOAD_PREFIX) and len(payload) == 6

    def _close_received(self, pipe: _Pipe, frame: bytes, payload: bytes) -> None:
        """The pipe's source sent a close frame: pass it on, or end its leg if it answers
        the gateway's own close."""
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        if pipe.from_client:
            self.stats.client_code = self.stats.client_code or code
        else:
            self.stats.backend_code = self.stats.backend_code or code
        if pipe.closed:
            return  # a second close frame: the source is done already
        pipe.closed = True
        other = self._down if pipe.from_client else self._up
        if other.gateway_close:  # the reply to the gateway's close: this leg is done
            self._close_transport(client=pipe.from_client)
            return
        pipe.finish(frame)
        if other.closed:  # both closes have passed: the closing handshake is over
            self._close_transport(client=True)
            self._close_transport(client=False)
        else:
            self._arm_close_timer()

    def _too_big(self, pipe: _Pipe) -> None:
        self.stats.detail = "message too big"
        self._end(CloseCode.MESSAGE_TOO_BIG, "message too big", CloseCode.MESSAGE_TOO_BIG,
                  "message too big")  # fmt: skip

    def _protocol_error(self, pipe: _Pipe, problem: str) -> None:
        leg = "client" if pipe.from_client else "backend"
        self.stats.detail = f"protocol error from the {leg}: {problem}"
        (self._down if pipe.from_client else self._up).close_sink = True  # the leg at fault
        self._end(CloseCode.PROTOCOL_ERROR, "protocol error", CloseCode.PROTOCOL_ERROR,
                  "protocol error")  # fmt: skip

    def _end(
        self,
        client_code: int | None,
        client_reason: str | None,
        backend_code: int | None,
        backend_reason: str | None,
    ) -> None:
        """Close frames from the gateway to the legs named (None: that leg is not told)."""
        self._ending = True
        if client_code is not None and self._client_open and not self._down.finished:
            self.stats.client_code = self.stats.client_code or client_code
            frame = close_frame(client_code, client_reason or "", masked=False)
            self._down.finish(frame, gateway=True)
        if backend_code is not None and self._backend_open and not self._up.finished:
            self.stats.backend_code = self.stats.backend_code or backend_code
            frame = close_frame(backend_code, backend_reason or "", masked=True)
            self._up.finish(frame, gateway=True)
        self._arm_close_timer()

    # -- transports ------------------------------------------------------------------------

    def _arm_close_timer(self) -> None:
        if self._close_timer is None:
            self._close_timer = self._loop.call_later(self.close_timeout_s, self._abort_both)

    def _abort_both(self) -> None:
        self._abort(client=True)
        self._abort(client=False)

    def _abort(self, *, client: bool) -> None:
        transport = self._client if client else self._backend
        if transport is not None:
            transport.abort()

    def _close_transport(self, *, client: bool) -> None:
        transport = self._client if client else self._backend
        if transport is not None and not transport.is_closing():
            transport.close()

    def _paused(self, *, client: bool) -> None:
        """A leg's write buffer is full: stop reading the other one."""
        source = self._backend if client else self._client
        if source is not None and not source.is_closing():
            source.pause_reading()
        if client and self.send_timeout_s is not None and self._stall_timer is None:
            self._stall_timer = self._loop.call_later(self.send_timeout_s, self._stalled)

    def _resumed(self, *, client: bool) -> None:
        source = self._backend if client else self._client
        if source is not None and not source.is_closing():
            source.resume_reading()
        if client and self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        self.stats.detail = "client read nothing while data waited"
        self._end(None, None, CloseCode.GOING_AWAY, "client went away")
        self._abort(client=True)

    def _lost(self, *, client: bool) -> None:
        """A transport closed: tell the other leg (a close frame if its stream is between
        two frames, else it is closed too); the session ends when both are closed."""
        if client:
            self._client_open = False
            if self.stats.client_code is None:
                self.stats.client_code = CloseCode.ABNORMAL_CLOSURE
            if self._on_client_lost is not None:
                callback, self._on_client_lost = self._on_client_lost, None
                callback(None)
            pipe, other_open = self._up, self._backend_open
        else:
            self._backend_open = False
            if self.stats.backend_code is None:
                self.stats.backend_code = CloseCode.ABNORMAL_CLOSURE
            pipe, other_open = self._down, self._client_open
        if other_open:
            if pipe.closed and (self._down if client else self._up).closed:
                self._close_transport(client=not client)  # the handshake was complete
            elif pipe.finished or not pipe.at_boundary():
                # A close is on its way (then the timer bounds the wait), or the stream
                # stopped inside a frame and cannot carry one.
                if pipe.at_boundary():
                    self._arm_close_timer()
                else:
                    self._close_transport(client=not client)
            elif client:
                self._end(None, None, CloseCode.GOING_AWAY, "client went away")
            else:
                self._end(CloseCode.INTERNAL_ERROR, "backend connection lost", None, None)
        if not self._client_open and not self._backend_open:
            self._finish()

    def _finish(self) -> None:
        for timer in (self._close_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._stall_timer = None
        stats = self.stats
        stats.messages_up, stats.bytes_up = self._up.messages, self._up.bytes
        stats.messages_down, stats.bytes_down = self._down.messages, self._down.bytes
        if not self.done.done():
            self.done.set_result(None)


def relay_extension(scope: dict[str, Any] | Any, key: str | None = None) -> Any:
    """The server's offer to relay this session's frames (``gateway.relay``, a dict), or
    one of its values (``key``); None without the offer."""
    extensions = scope.get("extensions") or {}
    offer = extensions.get("gateway.relay")
    if offer is None or key is None:
        return offer
    return offer.get(key)
