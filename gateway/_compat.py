"""Every dependence of the gateway on another library's internals, in one place.

The gateway subclasses uvicorn's HTTP and WebSocket protocols, its request cycle, its
``Config`` and ``Server``, Starlette's ``Starlette`` and ``StaticFiles``, formats
metric bounds with prometheus_client's ``floatToGoString``, and (``listen.http2``) runs
hypercorn's connection server on transports of its own (``hypercorn_parts``, imported
only when HTTP/2 is on: hypercorn is the optional ``http2`` extra). None of these are promised
APIs, so the classes are imported here only, and ``RELIES_ON`` names each method and
attribute the gateway's code uses, with what for. ``tests/test_compat.py`` checks every
entry against the installed versions: a release that renames or reshapes one fails that
one clear test instead of a hundred odd ones elsewhere. The version bounds in
``pyproject.toml`` admit only releases that pass it (lowest and newest are tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client.utils import floatToGoString
from starlette.applications import Starlette
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = [
    "RELIES_ON",
    "UVICORN_COMPLETES_REFUSED_HANDSHAKES",
    "ClientDisconnected",
    "HttpToolsProtocol",
    "HypercornParts",
    "NotModifiedResponse",
    "Reliance",
    "RequestResponseCycle",
    "Starlette",
    "StaticFiles",
    "UvicornConfig",
    "UvicornServer",
    "WebSocketsSansIOProtocol",
    "floatToGoString",
    "hypercorn_parts",
    "hypercorn_reliances",
]

UvicornConfig = uvicorn.Config
UvicornServer = uvicorn.Server


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


# uvicorn 0.55 marks a handshake refused through ``websocket.http.response`` as complete
# itself (its PR #3138); before, gateway.protocols.WebSocketProtocol does it.
UVICORN_COMPLETES_REFUSED_HANDSHAKES = _version(uvicorn.__version__) >= (0, 55)


@dataclass(frozen=True, slots=True)
class Reliance:
    """``owner.attribute`` is used by the gateway (``why``). ``parameters``: names the
    callable must accept, in order after ``self``; ``instance``: set by ``__init__``
    (checked in its source) rather than defined on the class; ``setting``: a class
    attribute that is not callable (a default the gateway overrides)."""

    owner: object
    attribute: str
    why: str
    parameters: tuple[str, ...] | None = None
    instance: bool = False
    setting: bool = False


_HTTP = "gateway.protocols.HTTPProtocol"
_CYCLE = "gateway.protocols._Http10Cycle"
_WS = "gateway.protocols.WebSocketProtocol"
_SERVER = "gateway.server.GatewayServer"

RELIES_ON: tuple[Reliance, ...] = (
    # uvicorn's httptools protocol: head checks, trailers, head deadline and size.
    Reliance(HttpToolsProtocol, "__init__", _HTTP, ("config", "server_state", "app_state")),
    Reliance(HttpToolsProtocol, "connection_made", _HTTP, ("transport",)),
    Reliance(HttpToolsProtocol, "connection_lost", _HTTP, ("exc",)),
    Reliance(HttpToolsProtocol, "data_received", _HTTP, ("data",)),
    Reliance(HttpToolsProtocol, "on_message_begin", _HTTP, ()),
    Reliance(HttpToolsProtocol, "on_header", _HTTP + " drops trailers", ("name", "value")),
    Reliance(HttpToolsProtocol, "on_headers_complete", _HTTP + " judges the head", ()),
    Reliance(HttpToolsProtocol, "on_message_complete", _HTTP, ()),
    Reliance(HttpToolsProtocol, "on_response_complete", _HTTP, ()),
    Reliance(HttpToolsProtocol, "send_400_response", _HTTP + " answers refusals", ("msg",)),
    Reliance(HttpToolsProtocol, "parser", _HTTP + " reads version", instance=True),
    Reliance(HttpToolsProtocol, "headers", _HTTP + " judges them", instance=True),
    Reliance(HttpToolsProtocol, "cycle", _HTTP + " swaps its class", instance=True),
    Reliance(HttpToolsProtocol, "client", _HTTP + " logs the address", instance=True),
    Reliance(HttpToolsProtocol, "transport", _HTTP, instance=True),
    Reliance(HttpToolsProtocol, "config", _HTTP + " reads its limits", instance=True),
    # uvicorn's request cycle: HTTP/1.0 responses without a length are close-delimited.
    Reliance(RequestResponseCycle, "send", _CYCLE, ("message",)),
    Reliance(RequestResponseCycle, "keep_alive", _CYCLE, instance=True),
    Reliance(RequestResponseCycle, "chunked_encoding", _CYCLE, instance=True),
    Reliance(RequestResponseCycle, "response_started", _CYCLE, instance=True),
    Reliance(RequestResponseCycle, "response_complete", _CYCLE, instance=True),
    Reliance(RequestResponseCycle, "flow", _CYCLE, instance=True),
    Reliance(RequestResponseCycle, "message_event", _CYCLE, instance=True),
    Reliance(RequestResponseCycle, "on_response", _CYCLE, instance=True),
    Reliance(RequestResponseCycle, "disconnected", _CYCLE, instance=True),
    Reliance(RequestResponseCycle, "scope", _CYCLE, instance=True),
    # Every write, close and is_closing of a response goes through the cycle's transport.
    Reliance(RequestResponseCycle, "transport", _HTTP + " holds a head back", instance=True),
    Reliance(HttpToolsProtocol, "shutdown", _HTTP + " flushes first", ()),
    Reliance(HttpToolsProtocol, "handle_websocket_upgrade", _HTTP + " flushes first", ()),
    # uvicorn's websockets-sansio protocol: pausing, pings, fragments, refusals, logs.
    Reliance(WebSocketsSansIOProtocol, "send", _WS, ("message",)),
    Reliance(WebSocketsSansIOProtocol, "send_receive_event_to_app", _WS, ()),
    Reliance(WebSocketsSansIOProtocol, "data_received", _WS, ("data",)),
    Reliance(WebSocketsSansIOProtocol, "handle_ping", _WS + " holds pongs", ()),
    Reliance(WebSocketsSansIOProtocol, "handle_text", _WS + " counts fragments", ("event",)),
    Reliance(WebSocketsSansIOProtocol, "handle_bytes", _WS + " counts fragments", ("event",)),
    Reliance(WebSocketsSansIOProtocol, "handle_cont", _WS + " counts fragments", ("event",)),
    Reliance(WebSocketsSansIOProtocol, "handle_parser_exception", _WS, ()),
    Reliance(WebSocketsSansIOProtocol, "pause_writing", _WS + " stops reading", ()),
    Reliance(WebSocketsSansIOProtocol, "resume_writing", _WS, ()),
    Reliance(WebSocketsSansIOProtocol, "connection_lost", _WS, ("exc",)),
    Reliance(
        WebSocketsSansIOProtocol, "conn", _WS + " (websockets' ServerProtocol)", instance=True
    ),
    Reliance(WebSocketsSansIOProtocol, "read_paused", _WS, instance=True),
    Reliance(WebSocketsSansIOProtocol, "close_sent", _WS, instance=True),
    Reliance(WebSocketsSansIOProtocol, "frames", _WS, instance=True),
    Reliance(WebSocketsSansIOProtocol, "queue", _WS, instance=True),
    Reliance(WebSocketsSansIOProtocol, "loop", _WS + " arms the stall timer", instance=True),
    Reliance(WebSocketsSansIOProtocol, "handshake_complete", _WS, instance=True),
    # ... and for the frame relay's takeover after its own 101.
    Reliance(WebSocketsSansIOProtocol, "handle_connect", _WS + " offers the relay", ("event",)),
    Reliance(WebSocketsSansIOProtocol, "shutdown", _WS + " leaves relays to the app", ()),
    Reliance(WebSocketsSansIOProtocol, "scope", _WS, instance=True),
    Reliance(WebSocketsSansIOProtocol, "response", _WS + " (the 101 to send)", instance=True),
    Reliance(WebSocketsSansIOProtocol, "default_headers", _WS, instance=True),
    Reliance(WebSocketsSansIOProtocol, "writable", _WS, instance=True),
    Reliance(WebSocketsSansIOProtocol, "disconnected", _WS, instance=True),
    Reliance(WebSocketsSansIOProtocol, "transport", _WS, instance=True),
    # uvicorn's Config and Server: the hardened TLS context, listeners, shutdown order.
    Reliance(UvicornConfig, "load", "gateway.server._Config hardens the TLS context", ()),
    Reliance(UvicornConfig, "ssl", "gateway.server._Config", instance=True),
    Reliance(UvicornConfig, "http_protocol_class", _SERVER, instance=True),
    Reliance(UvicornServer, "startup", _SERVER + " starts TLSListener", ("sockets",)),
    Reliance(UvicornServer, "shutdown", _SERVER + " drains WebSockets first", ("sockets",)),
    Reliance(UvicornServer, "capture_signals", _SERVER + " leaves signals to _serve", ()),
    Reliance(UvicornServer, "serve", "gateway.server._serve", ("sockets",)),
    Reliance(UvicornServer, "servers", _SERVER + " appends its listeners", instance=True),
    Reliance(UvicornServer, "server_state", _SERVER, instance=True),
    Reliance(UvicornServer, "lifespan", _SERVER, instance=True),
    Reliance(LifespanOn, "shutdown", _SERVER + " runs it after HTTP/2 drained", ()),
    Reliance(UvicornServer, "started", "gateway.server._say_ready", instance=True),
    Reliance(UvicornServer, "should_exit", "gateway.server._serve", instance=True),
    # Starlette: the lifespan and user middleware without its per-request layers.
    Reliance(Starlette, "build_middleware_stack", "gateway.app._GatewayApp", ()),
    Reliance(Starlette, "user_middleware", "gateway.app._GatewayApp", instance=True),
    Reliance(Starlette, "router", "gateway.app._GatewayApp (lifespan)", instance=True),
    # Starlette's StaticFiles: its conditional-request check and 304 response.
    Reliance(
        StaticFiles,
        "__init__",
        "gateway.static.StaticDirectory",
        ("directory", "packages", "html", "check_dir", "follow_symlink"),
    ),
    Reliance(
        StaticFiles,
        "is_not_modified",
        "gateway.static.StaticDirectory",
        ("response_headers", "request_headers"),
    ),
    Reliance(NotModifiedResponse, "__init__", "gateway.static.StaticDirectory", ("headers",)),
    # prometheus_client: the text of histogram bucket bounds, as its own exposition.
    Reliance(floatToGoString, "__call__", "gateway.metrics bucket labels", None),
)


@dataclass(frozen=True, slots=True)
class HypercornParts:
    """What ``gateway.http2`` takes from hypercorn (see ``hypercorn_reliances``)."""

    tcp_server: Any  # hypercorn.asyncio.tcp_server.TCPServer
    worker_context: Any  # hypercorn.asyncio.worker_context.WorkerContext
    asgi_wrapper: Any  # hypercorn.app_wrappers.ASGIWrapper
    config: Any  # hypercorn.config.Config


def hypercorn_parts() -> HypercornParts:
    """hypercorn's classes; ImportError when the ``http2`` extra is not installed.

    Defects of hypercorn's HTTP/2 protocol (0.17-0.18) mended here, each found by a test
    in tests/test_http2.py:

    - the per-stream send buffer is not bounded: ``StreamBuffer.pop`` releases a waiting
      writer when the bytes *popped* are few, so a client that never opens its
      flow-control window (nothing can be popped) lets the app write without end - a
      50 MB response was read from the backend into memory. Released when the bytes
      *left* are few, the writer waits (and ``timeouts.send_s`` ends the stream);
    - an app that ends before its response does (a timeout cut it) leaves the stream
      open for ever: no END_STREAM, no RST_STREAM. It is reset (INTERNAL_ERROR) here,
      as HTTP/1.1 closes the connection;
    - its GOAWAY after the requests per connection loses the streams in flight;
    - a stream whose client went away before its response waits for ever for its body
      to drain (one task per disconnect, until shutdown);
    - the configured frame size is never announced and neither it nor the header list
      size is enforced (h2's defaults are);
    - a stream over the concurrency limit ends the whole connection (RFC 9113 5.1.2: a
      stream error), and data in the same read for a stream it refused raised KeyError;
    - control frames are answered without bound and PRIORITY frames for streams never
      opened fill its priority tree (``gateway.http2_rules`` for both).
    """
    import hypercorn.protocol as protocol
    import hypercorn.protocol.h2 as h2_protocol
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.config import Config

    if not issubclass(h2_protocol.StreamBuffer, _BoundedStreamBuffer):
        bounded = _bounded(h2_protocol.StreamBuffer, h2_protocol.BUFFER_LOW_WATER)
        h2_protocol.StreamBuffer = bounded  # type: ignore[misc]
    # ProtocolWrapper makes its HTTP/2 protocol from this module's name.
    if not issubclass(getattr(protocol, "H2Protocol"), _MendedH2):  # noqa: B009
        setattr(protocol, "H2Protocol", _mended(h2_protocol.H2Protocol))  # noqa: B010
    return HypercornParts(TCPServer, WorkerContext, ASGIWrapper, Config)


class _BoundedStreamBuffer:
    """Marks hypercorn's StreamBuffer once ``_bounded`` replaced it."""


class _MendedH2:
    """Marks hypercorn's H2Protocol once ``_mended`` replaced it."""


def _mended(base: type[Any]) -> type[Any]:
    import asyncio
    import contextlib
    import time
    from collections import deque

    from h2.errors import ErrorCodes
    from h2.events import DataReceived, StreamEnded, StreamReset
    from h2.exceptions import ProtocolError, StreamClosedError
    from h2.settings import SettingCodes, Settings
    from hypercorn.events import Closed
    from hypercorn.protocol.events import Body, EndBody, StreamClosed
    from hypercorn.protocol.http_stream import HTTPStream
    from hyperframe.frame import GoAwayFrame

    # nginx's connection window: each stream's own window bounds what it may hold, so that
    # a stream whose body waits does not shut the connection's window on the others.
    connection_window = 2**31 - 1

    def queue_of(stream: Any) -> asyncio.Queue[Any] | None:
        """The stream's queue of request messages for its app (spawn_app hands out its
        put), or None when it has none (no app, or not an HTTP stream)."""
        if not isinstance(stream, HTTPStream):
            return None
        queue = getattr(stream.app_put, "__self__", None)
        return queue if isinstance(queue, asyncio.Queue) else None

    from gateway.http2_rules import FrameBudget, StreamWindow, screen
    from gateway.refusals import refused

    class MendedH2Protocol(base, _MendedH2):  # type: ignore[misc]
        # Requests per connection: hypercorn's own limit closes h2's state machine with
        # its GOAWAY, so the streams still in flight never get their responses (h2load:
        # one failed request per connection and limit). Here the GOAWAY is graceful: new
        # streams are refused (REFUSED_STREAM, which clients retry), the open ones end,
        # then the connection closes. ``gateway_max_requests`` and
        # ``gateway_control_frames_per_s`` are set by gateway.http2; what is taken,
        # refused and counted is decided by gateway.http2_rules.screen.
        _draining = False
        _budget: FrameBudget
        _max_requests: int
        # Request bodies: a stream whose app has no room for the next message (hypercorn
        # queues 10) keeps the rest here, unacknowledged, and a task of its own hands it
        # on; hypercorn waited for room in the connection's reading, holding every
        # stream. What a stream holds is bounded by its flow-control window.
        _held: dict[int, deque[tuple[bytes, int] | None]]
        _pumps: dict[int, asyncio.Task[None]]

        async def initiate(
            self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
        ) -> None:
            # hypercorn announces its frame size nowhere and leaves h2 enforcing its own
            # defaults (16 KiB frames, 64 KiB header lists) whatever was configured: here
            # the announced bounds are the enforced ones.
            announced = {
                SettingCodes.MAX_CONCURRENT_STREAMS: self.config.h2_max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.config.h2_max_header_list_size,
                SettingCodes.MAX_FRAME_SIZE: self.config.h2_max_inbound_frame_size,
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            }
            connection = self.connection
            connection.local_settings = Settings(client=False, initial_values=announced)
            connection.max_inbound_frame_size = self.config.h2_max_inbound_frame_size
            connection.decoder.max_header_list_size = self.config.h2_max_header_list_size
            await super().initiate(headers, settings)
            # Streams over the announced limit are refused one by one (screen), a stream
            # error as RFC 9113 5.1.2 asks; h2 itself would end the connection, so its own
            # check is left for clients that ignore the limit by as much again.
            announced[SettingCodes.MAX_CONCURRENT_STREAMS] *= 2
            connection.local_settings = Settings(client=False, initial_values=announced)
            self.connection.increment_flow_control_window(
                connection_window - self.connection.inbound_flow_control_window
            )
            await self._flush()
            # A response complete while the client still sends its body (an early 413, a
            # backend that answered an upload unread): RST_STREAM NO_ERROR asks it to
            # stop (RFC 9113 8.1, as nginx does), right after hypercorn's END_STREAM.
            end_stream = self.connection.end_stream

            def end_stream_and_the_body(stream_id: int) -> None:
                end_stream(stream_id)
                stream = self.connection.streams.get(stream_id)
                if stream is not None and not stream.closed:
                    with contextlib.suppress(ProtocolError):  # the connection has ended
                        self.connection.reset_stream(stream_id, ErrorCodes.NO_ERROR)

            self.connection.end_stream = end_stream_and_the_body
            self._held, self._pumps = {}, {}
            # Read once per connection (absent when hypercorn serves another app here).
            self._max_requests = getattr(self.config, "gateway_max_requests", 2**62)
            per_s = getattr(self.config, "gateway_control_frames_per_s", 2**62)
            self._budget = FrameBudget(per_s, time.monotonic())

        async def _handle_events(self, events: list[Any]) -> None:
            screened = screen(
                events,
                StreamWindow(
                    open_streams=len(self.streams),
                    max_streams=self.config.h2_max_concurrent_streams,
                    taken=self.keep_alive_requests,
                    max_requests=self._max_requests,
                    draining=self._draining,
                    served=self.streams,
                ),
            )
            if not self._budget.spend(screened.overhead, time.monotonic()):
                client = self.client[0] if self.client else None
                refused(
                    "http2_flood",
                    client,
                    "HTTP/2 connection from %s ended: more control frames than "
                    "http2.max_control_frames_per_s (GOAWAY ENHANCE_YOUR_CALM)",
                    client,
                )
                self.connection.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
                await self._flush()
                await self.handle(Closed())  # the streams end now, not after the TLS close
                await self.send(Closed())
                return
            for stream_id in screened.refused:
                # StreamClosedError: the client reset it in the same read (rapid reset).
                with contextlib.suppress(StreamClosedError):
                    self.connection.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            for stream_id, length in screened.unread:
                self.connection.acknowledge_received_data(length, stream_id)
            for stream_id in screened.answered:
                self._answered(stream_id)
            for event in screened.events:
                if isinstance(event, DataReceived | StreamEnded):
                    stream = self.streams.get(event.stream_id)
                    if stream is None and isinstance(event, DataReceived):
                        # Answered while this batch was handled (hypercorn: KeyError).
                        self.connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                        self._answered(event.stream_id)
                        continue
                    queue = queue_of(stream)
                    if queue is not None:
                        await self._deliver(stream, queue, event)
                        continue
                elif isinstance(event, StreamReset):
                    self._let_go(event.stream_id)  # then hypercorn closes it
                await super()._handle_events([event])
            await self._flush()  # the acknowledgements (WINDOW_UPDATE) of this batch
            if screened.last_taken:  # after this read's refusals: GOAWAY, state kept open
                self._draining = True
                goaway = GoAwayFrame(stream_id=0, last_stream_id=screened.last_taken)
                self.connection._prepare_for_sending([goaway])
                await self._flush()

        async def _deliver(
            self, stream: Any, queue: asyncio.Queue[Any], event: DataReceived | StreamEnded
        ) -> None:
            """A piece of a request body (or its end) to the stream's app, in order, never
            waiting here for room in its queue."""
            stream_id = event.stream_id
            item = (
                (event.data, event.flow_controlled_length)
                if isinstance(event, DataReceived)
                else None
            )
            held = self._held.get(stream_id)
            if held is None and not queue.full():
                await self._hand_on(stream, item)
                return
            if held is None:
                held = self._held[stream_id] = deque()
                self._pumps[stream_id] = asyncio.get_running_loop().create_task(
                    self._pump(stream, held)
                )
            held.append(item)

        async def _pump(self, stream: Any, held: deque[tuple[bytes, int] | None]) -> None:
            """Hand a stream's held body to its app as it makes room; acknowledge each
            piece then, so that the client sends more only as the app takes it."""
            stream_id = stream.stream_id
            try:
                while held:
                    await self._hand_on(stream, held[0])  # waits for room in the queue
                    if held.popleft() is not None:
                        await self._flush()  # the acknowledgement
            finally:
                if self._held.get(stream_id) is held:
                    del self._held[stream_id]
                    del self._pumps[stream_id]

        async def _hand_on(self, stream: Any, item: tuple[bytes, int] | None) -> None:
            """One piece of a body (or its end: None) to the stream's app; a piece is
            acknowledged once the app's queue has taken it."""
            if item is None:
                await stream.handle(EndBody(stream_id=stream.stream_id))
                return
            await stream.handle(Body(stream_id=stream.stream_id, data=item[0]))
            self.connection.acknowledge_received_data(item[1], stream.stream_id)

        def _let_go(self, stream_id: int) -> None:
            """The stream ends (client reset, app gone, connection closed): its held body
            is dropped (acknowledged, for the connection's window) and its queue emptied, so
            that the disconnect hypercorn puts there never waits for room."""
            pump = self._pumps.pop(stream_id, None)
            held = self._held.pop(stream_id, None)
            if pump is not None:
                pump.cancel()
            for item in held or ():
                if item is not None:
                    self.connection.acknowledge_received_data(item[1], stream_id)
            queue = queue_of(self.streams.get(stream_id))
            if queue is not None:
                while not queue.empty():
                    queue.get_nowait()

        def _answered(self, stream_id: int) -> None:
            """The app of ``stream_id`` has ended, the client still sends its body: once
            the response's END_STREAM has gone out, ask it to stop (RFC 9113 8.1)."""
            if stream_id not in self.stream_buffers:
                with contextlib.suppress(ProtocolError):  # reset or ended already
                    self.connection.reset_stream(stream_id, ErrorCodes.NO_ERROR)

        async def handle(self, event: Any) -> None:
            if isinstance(event, Closed):
                for stream_id in list(self.streams):
                    self._let_go(stream_id)
            await super().handle(event)
            if isinstance(event, Closed):
                # A stream waiting for its body to drain would wait for ever: the send
                # task that drains it ended with the connection.
                for buffer in list(self.stream_buffers.values()):
                    await buffer.close()

        async def stream_send(self, event: Any) -> None:
            if isinstance(event, StreamClosed):
                # The app has ended: nothing reads its queue of request messages any more.
                self._let_go(event.stream_id)
            if isinstance(event, StreamClosed) and not self.closed:
                buffer = self.stream_buffers.get(event.stream_id)
                if buffer is not None and not buffer._complete:  # the response did not end
                    try:
                        self.connection.reset_stream(event.stream_id, ErrorCodes.INTERNAL_ERROR)
                    except ProtocolError:
                        pass  # the stream is closed already
                    else:
                        await self._flush()
            await super().stream_send(event)
            if self._draining and not self.closed and not self.streams:
                self.connection.close_connection(last_stream_id=event.stream_id)
                await self._flush()
                await self.send(Closed())

    return MendedH2Protocol


def _bounded(base: type[Any], low_water: float) -> type[Any]:
    class BoundedStreamBuffer(base, _BoundedStreamBuffer):  # type: ignore[misc]
        async def pop(self, max_length: int) -> bytes:
            length = min(len(self.buffer), max_length)
            data = bytes(self.buffer[:length])
            del self.buffer[:length]
            if len(self.buffer) < low_water:
                await self._paused.set()
            if len(self.buffer) == 0:
                await self._is_empty.set()
            return data

    return BoundedStreamBuffer


def hypercorn_reliances() -> tuple[Reliance, ...]:
    """``RELIES_ON`` for hypercorn (checked by tests/test_compat.py when it is installed)."""
    parts = hypercorn_parts()
    import hypercorn.protocol.h2 as h2_protocol
    import hypercorn.protocol.http_stream as http_stream

    why = "gateway.http2.Http2Server"
    config = parts.config
    return (
        Reliance(
            parts.tcp_server,
            "__init__",
            why + " serves a connection it accepted",
            ("app", "loop", "config", "context", "state", "reader", "writer"),
        ),
        Reliance(parts.tcp_server, "run", why, ()),
        Reliance(parts.tcp_server, "_initiate_server_close", why + " ends streams at shutdown", ()),
        # The stream buffer's pop, replaced to bound it (see hypercorn_parts).
        Reliance(h2_protocol.StreamBuffer, "pop", "gateway._compat bounds it", ("max_length",)),
        Reliance(h2_protocol.StreamBuffer, "push", "gateway._compat", ("data",)),
        Reliance(h2_protocol.StreamBuffer, "buffer", "gateway._compat", instance=True),
        Reliance(h2_protocol.StreamBuffer, "_paused", "gateway._compat", instance=True),
        Reliance(h2_protocol.StreamBuffer, "_is_empty", "gateway._compat", instance=True),
        Reliance(h2_protocol, "BUFFER_LOW_WATER", "gateway._compat", setting=True),
        Reliance(h2_protocol.StreamBuffer, "_complete", "gateway._compat", instance=True),
        Reliance(h2_protocol.StreamBuffer, "close", "gateway._compat", ()),
        # H2Protocol: stream_send, extended to reset a stream whose response did not end;
        # initiate, to announce and enforce the configured bounds; _handle_events, to
        # screen each batch (gateway.http2_rules); handle, to release drains on close.
        Reliance(h2_protocol.H2Protocol, "stream_send", "gateway._compat", ("event",)),
        Reliance(h2_protocol.H2Protocol, "initiate", "gateway._compat", ("headers", "settings")),
        Reliance(h2_protocol.H2Protocol, "client", "gateway._compat", instance=True),
        Reliance(h2_protocol.H2Protocol, "_handle_events", "gateway._compat", ("events",)),
        Reliance(h2_protocol.H2Protocol, "keep_alive_requests", "gateway._compat", instance=True),
        Reliance(h2_protocol.H2Protocol, "streams", "gateway._compat", instance=True),
        Reliance(h2_protocol.H2Protocol, "send", "gateway._compat", instance=True),
        Reliance(h2_protocol.H2Protocol, "config", "gateway._compat", instance=True),
        Reliance(h2_protocol.H2Protocol, "_flush", "gateway._compat", ()),
        Reliance(h2_protocol.H2Protocol, "handle", "gateway._compat", ("event",)),
        Reliance(h2_protocol.H2Protocol, "closed", "gateway._compat", instance=True),
        Reliance(h2_protocol.H2Protocol, "connection", "gateway._compat", instance=True),
        Reliance(h2_protocol.H2Protocol, "stream_buffers", "gateway._compat", instance=True),
        # Each stream's queue of request messages (spawn_app hands out its put): bodies are
        # handed to it as it has room, and it is emptied when the stream ends.
        Reliance(http_stream.HTTPStream, "app_put", "gateway._compat", instance=True),
        Reliance(http_stream.HTTPStream, "handle", "gateway._compat", ("event",)),
        Reliance(http_stream.HTTPStream, "stream_id", "gateway._compat", instance=True),
        Reliance(parts.worker_context, "__init__", why, ("max_requests",)),
        Reliance(parts.worker_context, "terminated", why + " drains on shutdown", instance=True),
        Reliance(parts.asgi_wrapper, "__init__", why, ("app",)),
        Reliance(config, "response_headers", why + " adds Server: gateway", ("protocol",)),
        *(
            Reliance(config, name, why + " sets it from [http2]", setting=True)
            for name in (
                "h2_max_concurrent_streams",
                "h2_max_header_list_size",
                "h2_max_inbound_frame_size",
                "keep_alive_max_requests",
                "keep_alive_timeout",
                "include_server_header",
                "include_date_header",
                "accesslog",
                "errorlog",
            )
        ),
    )
