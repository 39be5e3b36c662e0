"""Pure rules of the HTTP/2 edge (no I/O): which new streams a connection takes, which
it refuses, and what a client's frames cost against the control-frame budget.

hypercorn's HTTP/2 protocol (mended in ``gateway._compat``) hands each batch of h2
events - what one read of the socket produced - to ``screen`` before it acts on them:

- a stream over ``max_concurrent_streams``, or one opened after the connection began to
  drain (``max_requests_per_connection`` reached), is refused with REFUSED_STREAM, a
  stream error that clients retry (RFC 9113 5.1.2 and 8.7); its data is acknowledged for
  flow control and dropped, and the connection goes on;
- frames that make the gateway work without carrying a request count against a budget of
  ``max_control_frames_per_s`` (a token bucket holding one second's worth): PING and
  SETTINGS (each answered), RST_STREAM (rapid reset, CVE-2023-44487), PRIORITY frames
  of their own, empty DATA frames that do not end their stream (CVE-2019-9518) and
  refused streams. Past it the connection ends with GOAWAY ENHANCE_YOUR_CALM, as nginx
  and nghttp2 end floods (CVE-2019-9512, -9513, -9515);
- DATA for a stream whose response is complete while the client still sends its body
  (an early 413, a backend that answered without reading the upload) is acknowledged
  for flow control and dropped; once the response's END_STREAM has gone out, the stream
  is reset with NO_ERROR, which asks the client to stop sending (RFC 9113 8.1). hypercorn
  failed the whole connection on such DATA (KeyError);
- priority signals are dropped: RFC 9113 5.3.2 deprecates them and lets servers ignore
  them, and hypercorn kept a node in its priority tree for every stream a PRIORITY
  frame named, opened or not (1,000 of them and the connection failed).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import h2.events as h2_events

__all__ = ["FrameBudget", "Screened", "StreamWindow", "screen"]


@dataclass(slots=True)
class FrameBudget:
    """A token bucket: ``per_s`` frames a second, at most one second's worth at once."""

    per_s: float
    at: float  # when the bucket was last filled up to
    tokens: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.per_s  # full

    def spend(self, frames: int, now: float) -> bool:
        """Take ``frames`` from the budget; False once it is overdrawn."""
        self.tokens = min(self.per_s, self.tokens + (now - self.at) * self.per_s) - frames
        self.at = now
        return self.tokens >= 0


@dataclass(frozen=True, slots=True)
class StreamWindow:
    """The connection's streams when a batch of events arrives."""

    open_streams: int
    max_streams: int
    taken: int  # requests taken on the connection so far
    max_requests: int
    draining: bool  # max_requests reached before this batch: every new stream is refused
    served: Container[int]  # the streams an app still serves (taken and not yet answered)


@dataclass(slots=True)
class Screened:
    """What to do with one batch of events."""

    events: list[Any] = field(default_factory=list)  # to be handled, in order
    refused: list[int] = field(default_factory=list)  # streams to refuse (REFUSED_STREAM)
    unread: list[tuple[int, int]] = field(default_factory=list)  # (stream, flow-controlled
    # bytes) received on refused or answered streams: acknowledged, never handled
    answered: list[int] = field(default_factory=list)  # streams whose app has ended while
    # the client still sends their body: reset with NO_ERROR once the response is out
    last_taken: int = 0  # the stream that reached max_requests (then GOAWAY); 0: none
    overhead: int = 0  # frames that count against the control-frame budget


def screen(events: list[Any], window: StreamWindow) -> Screened:
    """Decide, for one batch of h2 events, which streams are taken and what it costs."""
    out = Screened()
    refused: set[int] = set()
    open_streams, taken, draining = window.open_streams, window.taken, window.draining
    carried: set[int] = set()  # the priority signals HEADERS frames carried (they follow)
    opened: set[int] = set()  # streams taken in this batch (not yet served)
    for event in events:
        if isinstance(event, h2_events.RequestReceived):
            if event.priority_updated is not None:
                carried.add(id(event.priority_updated))
            if draining or open_streams >= window.max_streams:
                refused.add(event.stream_id)
                out.refused.append(event.stream_id)
                out.overhead += 1
                continue
            opened.add(event.stream_id)
            open_streams += 1
            taken += 1
            if taken >= window.max_requests:
                draining = True
                out.last_taken = event.stream_id
        elif getattr(event, "stream_id", None) in refused:
            if isinstance(event, h2_events.DataReceived):
                out.unread.append((event.stream_id, event.flow_controlled_length))
            continue
        elif (
            isinstance(event, h2_events.DataReceived)
            and event.stream_id not in opened
            and event.stream_id not in window.served
        ):
            out.unread.append((event.stream_id, event.flow_controlled_length))
            if event.stream_id not in out.answered:
                out.answered.append(event.stream_id)
            out.overhead += not event.data and event.stream_ended is None
            continue
        elif isinstance(event, h2_events.PriorityUpdated):
            out.overhead += id(event) not in carried
            continue
        elif isinstance(
            event, h2_events.PingReceived | h2_events.RemoteSettingsChanged | h2_events.StreamReset
        ) or (
            isinstance(event, h2_events.DataReceived)
            and not event.data
            and event.stream_ended is None
        ):
            out.overhead += 1
        out.events.append(event)
    return out
