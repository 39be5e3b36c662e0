"""HTTP/2 on the TLS listener (``listen.http2``): connections that chose ``h2`` by ALPN
are served by hypercorn's HTTP/2 protocol, the others by uvicorn's HTTP/1.1 protocol.

One listener, one TLS context, one app: ``gateway.listener.TLSListener`` accepts,
answers plain HTTP, picks the certificate by SNI and runs the handshake as for HTTP/1.1;
``by_alpn`` then hands each connection to the server that speaks what the client chose.
Reload (the app reads the live configuration), certificate reload (the same context),
workers and the admin listener therefore need nothing of their own.

Per stream, hypercorn gives the app the scope HTTP/1.1 gives: ``host`` from
``:authority`` (a ``host`` header next to it is dropped), no pseudo-headers, and h2
itself refuses connection-specific fields (``connection``, ``upgrade``, ``te`` other
than ``trailers``).  WebSocket over HTTP/2 (RFC 8441, extended CONNECT, announced with
``SETTINGS_ENABLE_CONNECT_PROTOCOL``) reaches the app as a ``websocket`` scope and is
bridged like one over HTTP/1.1.  Cleartext HTTP/2 (h2c, by upgrade or prior knowledge)
is never served: only a TLS handshake can choose ``h2``.

Bounds (``settings.Http2Settings``): concurrent streams per connection (one more is
refused with REFUSED_STREAM), header list size (``limits.max_header_bytes``), frame
size, requests per connection (after which the connection ends with a graceful GOAWAY),
control frames per second (PING, SETTINGS, RST_STREAM, PRIORITY, empty DATA: past it
GOAWAY ENHANCE_YOUR_CALM - floods and rapid reset), idle connections (keep-alive
timeout); the decisions are ``gateway.http2_rules``.  Answers to SETTINGS and PING go
into the same write buffer as responses; a client that does not read stops being read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from gateway._compat import HypercornParts, hypercorn_parts
from gateway.errors import MissingExtra
from gateway.logs import get_logger
from gateway.refusals import refused

__all__ = ["H2Limits", "Http2Server", "by_alpn", "require_hypercorn"]

H2 = "h2"
_CANCELS = 5  # times a connection is cancelled at shutdown, _CANCEL_WAIT_S apart
_CANCEL_WAIT_S = 1.0

logger = get_logger("gateway.http2")


def require_hypercorn() -> HypercornParts:
    """hypercorn's parts; ``MissingExtra`` unless the ``http2`` extra is installed."""
    try:
        return hypercorn_parts()
    except ImportError:
        raise MissingExtra("listen.http2", "http2", "hypercorn") from None


@dataclass(frozen=True, slots=True)
class H2Limits:
    """What one HTTP/2 connection may hold."""

    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 65536
    max_frame_bytes: int = 16384
    max_requests: int = 500
    keep_alive_s: float = 5.0
    max_control_frames_per_s: int = 200
    # One Date and one Server per response (False: the backend's are passed instead).
    date_and_server: bool = True


class Http2Server:
    """Serves HTTP/2 connections handed over by ``by_alpn`` with hypercorn's protocol,
    running ``app`` (the ASGI app uvicorn runs too) with the lifespan ``state``."""

    def __init__(self, app: Any, state: dict[str, Any], limits: H2Limits) -> None:
        self.parts = require_hypercorn()
        self.app = self.parts.asgi_wrapper(app)
        self.state = state
        self.config = _config(self.parts.config, limits)
        self.context = self.parts.worker_context(None)
        self.connections: dict[asyncio.Task[None], Any] = {}  # task -> hypercorn's TCPServer

    def serve(self, transport: asyncio.Transport) -> None:
        """Take ``transport`` (TLS, ``h2`` negotiated) over and serve it."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        server = self.parts.tcp_server(
            self.app, loop, self.config, self.context, self.state, reader, writer
        )
        peer = transport.get_extra_info("peername")
        task = loop.create_task(_run(server.run(), peer[0] if peer else None), name="HTTP/2")
        self.connections[task] = server
        task.add_done_callback(self.connections.pop)

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking streams (GOAWAY to idle connections, new streams refused), let the
        open ones finish within ``grace_s``, then close what is left."""
        await self.context.terminated.set()
        if not self.connections:
            return
        _, pending = await asyncio.wait(set(self.connections), timeout=grace_s)
        # Closed as hypercorn closes an idle connection: its streams' apps are told the
        # client is gone (the proxy lets the backend go) and end on their own.
        for task in pending:
            server = self.connections.get(task)  # None: it ended meanwhile
            if server is not None:
                await server._initiate_server_close()
        if pending:
            _, pending = await asyncio.wait(pending, timeout=_CANCEL_WAIT_S)
        # Cancelled, a hypercorn stream task answers 500 in its ``finally`` and may wait
        # there for a writer that was cancelled too: it is cancelled again until it ends.
        for _ in range(_CANCELS):
            if not pending:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=_CANCEL_WAIT_S)
        logger.warning("%d HTTP/2 connections did not end when cancelled", len(pending))


async def _run(connection: Coroutine[Any, Any, None], client: str | None) -> None:
    """Serve one connection; what ends it abnormally is one counted, rate-limited line."""
    try:
        await connection
    except Exception as exc:  # a protocol error of the client's, a TLS error at close
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # type: ignore[assignment]
        refused("http2_error", client, "HTTP/2 connection from %s ended: %r", client, exc)


def _config(base: type[Any], limits: H2Limits) -> Any:
    """hypercorn's Config for ``limits``: one Date and one Server (the gateway's)."""

    class _Config(base):  # type: ignore[misc]
        def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
            headers: list[tuple[bytes, bytes]] = super().response_headers(protocol)
            if limits.date_and_server:
                headers.append((b"server", b"gateway"))
            return headers

    config = _Config()
    config.h2_max_concurrent_streams = limits.max_concurrent_streams
    config.h2_max_header_list_size = limits.max_header_list_bytes
    config.h2_max_inbound_frame_size = limits.max_frame_bytes
    # hypercorn's own limit ends streams in flight: gateway._compat's GOAWAY is graceful.
    config.keep_alive_max_requests = 2**62
    config.gateway_max_requests = limits.max_requests
    config.gateway_control_frames_per_s = limits.max_control_frames_per_s
    config.keep_alive_timeout = limits.keep_alive_s
    config.include_server_header = False
    config.include_date_header = limits.date_and_server
    config.accesslog = None  # the gateway's own access log (log.access_log) covers streams
    config.errorlog = logging.getLogger("gateway.http2")
    return config


class _ByAlpn(asyncio.Protocol):
    """The first protocol of a TLS connection: once the handshake is done, hands the
    transport to HTTP/2 or to the HTTP/1.1 protocol, by the ALPN protocol chosen."""

    __slots__ = ("http1", "http2")

    def __init__(self, http1: Callable[[], asyncio.Protocol], http2: Http2Server) -> None:
        self.http1 = http1
        self.http2 = http2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == H2:
            self.http2.serve(transport)
            return
        protocol = self.http1()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def by_alpn(
    http1: Callable[[], asyncio.Protocol], http2: Http2Server
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for the TLS listener: HTTP/2 where ``h2`` was negotiated."""
    return lambda: _ByAlpn(http1, http2)
