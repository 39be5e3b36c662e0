"""WebSocketProxy: end the client's WebSocket at the gateway, open a second one to the backend.

The two legs are independent WebSocket connections: subprotocols offered by the client
are offered to the backend and its choice is accepted to the client (none offered ->
none sent); extensions (permessage-deflate) are negotiated per leg; messages are relayed
whole, text as text and binary as binary.  The rules (headers, request target, close
codes, error mapping) are pure functions in ``websocket_rules``; this module does I/O.

Session ends decided here, on top of the close-code table in ``websocket_rules``:

- no message either way for ``idle_timeout_s``: 1001 "idle timeout" on both legs;
- ``shutdown()`` or the task cancelled: 1001 "server shutdown" on both legs.  uvicorn's
  own shutdown closes the client leg with 1012 before the app can act, and the bridge
  relays that 1012 to the backend; call ``shutdown()`` first for a 1001 (with grace).

Limits: run the server with ``ws_max_size=wire_max_size(max_message_bytes)`` so the
client leg refuses what the backend leg would (the margin is for permessage-deflate
frames; the bridge enforces the exact message limit on both legs), and with
``ws_ping_interval``/``ws_ping_timeout`` for pings on the client leg (the backend leg
pings with ``ping_interval_s``).  At most one message per direction is in flight: the
next message is read only after the previous one was written, and both legs stop
reading when their peer does not (uvicorn pauses the client socket, the backend leg
buffers ``max_queue`` messages), so a slow reader slows the writer.

With an `Upstream` of several targets, each session goes to the target the balancing
policy picks (``ip_hash`` keeps a client on one target; ``least_conn`` counts open
sessions); a handshake that fails without an answer from the backend (refused,
unreachable, timed out, not WebSocket) is tried on the next target, within the
upstream's ``max_tries`` and ``try_timeout_s``; no available target is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.types import Receive, Scope, Send
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode
from websockets.typing import Subprotocol

from gateway.failures import failure_kind
from gateway.lifespan import serve_lifespan
from gateway.logs import get_logger
from gateway.proxy.forwarding import ForwardingOptions
from gateway.proxy.websocket_backend import (
    BackendLeg,
    LegOptions,
    RawLeg,
    open_backend_leg,
    open_raw_leg,
)
from gateway.proxy.websocket_relay import Relay, RelayStats, close_frame, relay_extension
from gateway.proxy.websocket_rules import (
    TEXT_PLAIN,
    BackendFailure,
    accept_headers,
    backend_target,
    gateway_error,
    handshake_headers,
    is_websocket_upgrade,
    map_backend_error,
    no_target_available,
    relay_client_close,
    utf8_size,
    wire_max_size,
)
from gateway.upstream import Peer, Target, Upstream, client_address
from gateway.watchdog import Watchdog, tick_for

if TYPE_CHECKING:
    from gateway.metrics import SessionObserver

__all__ = ["WebSocketProxy", "is_websocket_upgrade", "wire_max_size"]

logger = get_logger("gateway.websocket")


@dataclass(frozen=True, slots=True)
class _Ending:
    """Why a session ends: the close frames still to send (None: that leg is closed)."""

    to_client: tuple[int, str] | None
    to_backend: tuple[int, str] | None

    @classmethod
    def both(cls, code: int, reason: str) -> _Ending:
        return cls((code, reason), (code, reason))


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where the backend leg of a session goes: one URL, or one target of an `Upstream`."""

    uri: str  # ws[s]://authority/ (ws://localhost/ for a Unix socket)
    base_path: bytes
    host: bytes  # the Host to send when the client sent none, or the route overrides it
    unix_path: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def of_target(cls, target: Target, ssl_context: ssl.SSLContext | None) -> _Endpoint:
        scheme = "wss" if target.scheme == "https" else "ws"
        return cls(
            f"{scheme}://{target.authority}/",
            target.base_path.encode("utf-8"),
            target.authority.encode("idna"),
            target.unix_path,
            ssl_context if scheme == "wss" else None,
        )


class WebSocketProxy:
    """Bridge WebSocket sessions to ``upstream``: ``ws[s]://`` or ``http[s]://host[:port][/base]``,
    or an `Upstream` of several targets.

    A plain ASGI app: usable on its own or mounted under a prefix, which is removed
    from the path (``root_path``) before the backend URL is built.  See the module
    docstring for the close-code mapping and the limits the server must share.  With
    an `Upstream`, TLS to ``wss`` targets follows the upstream's settings
    (``backend_ssl`` must be None) and the upstream is started and closed by its owner,
    or by this app's lifespan events when it runs on its own.  An ``observer``
    (``gateway.metrics.SessionObserver``, e.g. a route's metrics) hears of each accepted
    session, its end with message and byte counts, and each failure to open a backend leg.
    """

    def __init__(
        self,
        upstream: str | Upstream,
        *,
        forwarding: ForwardingOptions | None = None,
        backend_compression: bool = False,
        backend_ssl: ssl.SSLContext | None = None,
        # Timeouts
        open_timeout_s: float = 5.0,
        idle_timeout_s: float = 86400.0,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float | None = 20.0,
        close_timeout_s: float = 10.0,
        # Limits
        max_message_bytes: int = 1024 * 1024,
        max_queue: int = 16,
        # Frames copied without decoding where the server offers it (gateway.relay)
        relay: bool = True,
        # Metrics
        observer: SessionObserver | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/") if isinstance(upstream, str) else upstream
        if isinstance(upstream, Upstream):
            if backend_ssl is not None:
                raise ValueError("an Upstream brings its TLS settings: pass them to Upstream(...)")
            self.pool = upstream
        else:
            parts = urlsplit(upstream)
            scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
            if scheme not in ("ws", "wss") or not parts.hostname:
                raise ValueError(
                    f"upstream {upstream!r} must be an absolute ws(s):// or http(s):// URL"
                )
            if parts.username or parts.password or parts.query or parts.fragment:
                raise ValueError(
                    f"upstream {upstream!r} must not have credentials, query or fragment"
                )
            try:
                parts.port  # noqa: B018 - urlsplit checks the port lazily
            except ValueError as exc:
                raise ValueError(f"upstream {upstream!r}: {exc}") from None
            # One code path: a URL is an upstream of one target.
            self.pool = Upstream(
                [upstream.rstrip("/")], name=upstream.rstrip("/"), ssl_context=backend_ssl
            )
        self._endpoints = [
            _Endpoint.of_target(peer.target, self.pool.ssl_context) for peer in self.pool.peers
        ]
        for key, value in (
            ("open_timeout_s", open_timeout_s),
            ("idle_timeout_s", idle_timeout_s),
            ("close_timeout_s", close_timeout_s),
            ("ping_interval_s", ping_interval_s),
            ("ping_timeout_s", ping_timeout_s),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{key} must be > 0, got {value!r}")
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {max_message_bytes!r}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue!r}")
        self.forwarding = forwarding if forwarding is not None else ForwardingOptions()
        self.idle_timeout_s = idle_timeout_s
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.max_message_bytes = max_message_bytes
        self.close_timeout_s = close_timeout_s
        # The relay needs the same protocol on both legs: no compression towards the backend.
        self.relay = relay and not backend_compression
        self.observer = observer
        # How backend legs open, read and close (TLS settings are per endpoint).
        self._leg_options = LegOptions(
            open_timeout_s=open_timeout_s,
            close_timeout_s=close_timeout_s,
            # Compressed frames may exceed the message limit; the bridge checks messages.
            max_size=wire_max_size(max_message_bytes) if backend_compression else max_message_bytes,
            max_queue=max_queue,
            compression=backend_compression,
        )
        self._sessions: set[_Session] = set()
        self._closing = False
        # Idle timeouts and backend pings are checked on this watchdog's ticks.
        self.watchdog = Watchdog(tick_for(idle_timeout_s, ping_interval_s, ping_timeout_s))

    def __repr__(self) -> str:
        return f"WebSocketProxy({self.upstream!r})"

    @property
    def active_sessions(self) -> int:
        """Number of sessions currently bridged or opening."""
        return len(self._sessions)

    async def shutdown(
        self,
        *,
        grace_s: float = 0.0,
        code: int = CloseCode.GOING_AWAY,
        reason: str = "server shutdown",
    ) -> None:
        """Refuse new sessions (503), let open ones run up to ``grace_s``, then close them.

        Call it before the server closes connections itself (uvicorn closes the
        client leg with 1012 on its own shutdown).
        """
        self._closing = True
        if self._sessions and grace_s > 0:
            await asyncio.wait([session.finished for session in self._sessions], timeout=grace_s)
        for session in list(self._sessions):
            session.stop(code, reason)
        if self._sessions:
            await asyncio.wait([session.finished for session in self._sessions])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            session = _Session(self, scope, receive, send)
            self._sessions.add(session)
            try:
                await session.run()
            finally:
                self._sessions.discard(session)
        elif scope["type"] == "http":
            await _upgrade_required(send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async def shutdown() -> None:
            await self.shutdown()
            await self.pool.aclose()

        await serve_lifespan(receive, send, startup=self.pool.start, shutdown=shutdown)

    def _open(
        self, scope: Scope, endpoint: _Endpoint, *, raw: bool = False
    ) -> Coroutine[Any, Any, BackendLeg | RawLeg]:
        """The opening of a backend leg for this client (raises ValueError on bad input);
        ``raw``: for the frame relay."""
        target = backend_target(scope, endpoint.base_path)
        headers = handshake_headers(scope, upstream_host=endpoint.host, options=self.forwarding)
        return (open_raw_leg if raw else open_backend_leg)(
            endpoint.uri,
            request_target=target,
            # The client's User-Agent is among them; the leg adds none of its own.
            headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers],
            subprotocols=[Subprotocol(name) for name in scope.get("subprotocols", ())],
            options=self._leg_options,
            unix_path=endpoint.unix_path,
            ssl_context=endpoint.ssl_context,
        )


async def _upgrade_required(send: Send) -> None:
    body = b"426 Upgrade Required: this endpoint only accepts WebSocket connections\n"
    headers = [
        TEXT_PLAIN,
        (b"content-length", str(len(body)).encode()),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
    ]
    await send({"type": "http.response.start", "status": 426, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(slots=True)
class _Stats(RelayStats):
    """What the session log line reports: a relayed session's figures (the relay writes
    them here itself), and the status of a refused handshake."""

    status: int | None = None


class _Session:
    """One client session: opens the backend leg, relays messages, closes both legs."""

    __slots__ = (
        "_backend",
        "_ended",
        "_next_ping_at",
        "_ping_sent_at",
        "_pong",
        "_pumps_running",
        "_relay",
        "finished",
        "last_activity",
        "peer",
        "proxy",
        "receive",
        "scope",
        "send",
        "stats",
        "stopping",
    )

    def __init__(self, proxy: WebSocketProxy, scope: Scope, receive: Receive, send: Send) -> None:
        self.proxy = proxy
        self.scope = scope
        self.receive = receive
        self.send = send
        self.stats = _Stats()
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        self.finished: asyncio.Future[None] = loop.create_future()
        # The first reason to end the bridged session: a pump's, stop()'s or the idle check's.
        self._ended: asyncio.Future[_Ending] = loop.create_future()
        self._pumps_running = 0
        self.stopping: tuple[int, str] | None = None  # set by stop()
        # The backend leg's keepalive pings, driven by check().
        self._backend: BackendLeg | None = None
        self._next_ping_at = 0.0
        self._ping_sent_at = 0.0
        self._pong: asyncio.Future[None] | None = None
        self.peer: Peer | None = None  # the upstream target in use, released at the end
        self._relay: Relay | None = None  # the frame relay, once it runs

    def stop(self, code: int, reason: str) -> None:
        """Ask the session to close both legs with ``code`` (used by ``shutdown``)."""
        if self.stopping is None:
            self.stopping = (code, reason)
            self._end(_Ending.both(code, reason))
            if self._relay is not None:
                self._relay.stop(code, reason)

    def _end(self, ending: _Ending) -> None:
        if not self._ended.done():
            self._ended.set_result(ending)

    def check(self, now: float) -> bool:
        """The proxy watchdog's tick: the idle timeout (True once it ended the session)
        and the backend leg's keepalive pings."""
        if self._relay is not None:
            return self._relay.check(now)
        if now - self.last_activity >= self.proxy.idle_timeout_s:
            self._end(_Ending.both(CloseCode.GOING_AWAY, "idle timeout"))
            return True
        if self._backend is not None and self.proxy.ping_interval_s is not None:
            self._keepalive(self._backend, now, self.proxy.ping_interval_s)
        return False

    def _keepalive(self, backend: BackendLeg, now: float, interval_s: float) -> None:
        """Ping the backend every ``interval_s``; no pong within ``ping_timeout_s`` ends
        the session as a lost backend (what websockets' own keepalive would do)."""
        pong = self._pong
        if pong is not None and not pong.done():
            timeout_s = self.proxy.ping_timeout_s
            if timeout_s is not None and now - self._ping_sent_at >= timeout_s:
                self._pong = None
                self.stats.backend_code = CloseCode.INTERNAL_ERROR
                backend.abort()
                failure = gateway_error(502, "backend connection lost")
                self._end(_Ending((failure.close_code, failure.reason), None))
            return
        if now >= self._next_ping_at:
            self._ping_sent_at = now
            self._next_ping_at = now + interval_s
            self._pong = backend.ping()  # None once closing: the pumps see the end

    async def run(self) -> None:
        started = time.monotonic()
        try:
            message = await self.receive()
            if message["type"] != "websocket.connect":
                return
            if self.proxy.relay and relay_extension(self.scope) is not None:
                await self._run_relay()
                return
            backend = await self._open_backend()
            if backend is not None:
                try:
                    await self._bridge(backend)
                finally:
                    if self.proxy.observer is not None:
                        stats = self.stats
                        self.proxy.observer.websocket_closed(
                            stats.messages_up, stats.bytes_up, stats.messages_down, stats.bytes_down
                        )
        finally:
            if self.peer is not None:
                self.proxy.pool.release(self.peer)
            self._ended.cancel()
            self.finished.set_result(None)
            self._log(time.monotonic() - started)

    async def _run_relay(self) -> None:
        """Open a raw backend leg, accept the client and copy frames until both close."""
        if self.proxy._closing:
            await self._refuse(gateway_error(503, "server shutting down"), "shutting down")
            return
        leg = await self._connect(self.proxy.pool, raw=True)
        if not isinstance(leg, RawLeg):
            return
        if self.stopping is not None:  # shutdown() began while we were connecting
            code, reason = self.stopping
            leg.transport.write(close_frame(code, reason, masked=True))
            leg.transport.close()
            await self._refuse(gateway_error(503, "server shutting down"), "shutting down")
            return
        proxy = self.proxy
        relay = Relay(
            max_message_bytes=proxy.max_message_bytes,
            idle_timeout_s=proxy.idle_timeout_s,
            ping_interval_s=proxy.ping_interval_s,
            ping_timeout_s=proxy.ping_timeout_s,
            close_timeout_s=proxy.close_timeout_s,
            send_timeout_s=relay_extension(self.scope, "send_timeout_s"),
            stats=self.stats,
        )

        accept: dict[str, Any] = {
            "type": "gateway.relay.accept",
            "headers": accept_headers(leg.response.headers),
            "start": functools.partial(
                relay.start, backend=leg.transport, backend_leftover=leg.leftover
            ),
            "stop": relay.stop,
        }
        if leg.subprotocol is not None:
            accept["subprotocol"] = leg.subprotocol
        try:
            await self.send(accept)
        except OSError:  # the client left while the backend was answering
            self.stats.client_code = CloseCode.ABNORMAL_CLOSURE
            self.stats.backend_code = CloseCode.GOING_AWAY
            leg.transport.write(close_frame(CloseCode.GOING_AWAY, "client went away", masked=True))
            leg.transport.close()
            return
        del accept, leg  # the handshake's objects are not needed any more
        observer = proxy.observer
        if observer is not None:
            observer.websocket_opened()
        self._relay = relay
        proxy.watchdog.watch(self)
        try:
            await asyncio.shield(relay.done)
        except asyncio.CancelledError:  # the enclosing app gave up: close both legs
            relay.stop(CloseCode.GOING_AWAY, "server shutdown")
            raise
        finally:
            proxy.watchdog.unwatch(self)
            stats = self.stats
            if observer is not None:
                observer.websocket_closed(
                    stats.messages_up, stats.bytes_up, stats.messages_down, stats.bytes_down
                )

    async def _open_backend(self) -> BackendLeg | None:
        """Open the backend leg and accept the client, or refuse the client; None if refused."""
        if self.proxy._closing:
            await self._refuse(gateway_error(503, "server shutting down"), "shutting down")
            return None
        backend = await self._connect(self.proxy.pool)
        if not isinstance(backend, BackendLeg):
            return None
        if self.stopping is not None:  # shutdown() began while we were connecting
            await backend.close(*self.stopping)
            await self._refuse(gateway_error(503, "server shutting down"), "shutting down")
            return None
        assert backend.response is not None  # set by a completed handshake
        accept: dict[str, Any] = {
            "type": "websocket.accept",
            "headers": accept_headers(backend.response.headers),
        }
        if backend.subprotocol is not None:
            accept["subprotocol"] = backend.subprotocol
        try:
            await self.send(accept)
        except OSError:  # the client left while the backend was answering
            self.stats.client_code = CloseCode.ABNORMAL_CLOSURE
            await self._close_backend(backend, relay_client_close(CloseCode.ABNORMAL_CLOSURE, ""))
            return None
        if self.proxy.observer is not None:
            self.proxy.observer.websocket_opened()
        return backend

    def _report(self, error: BaseException | str) -> None:
        """Tell the observer (metrics) the backend leg could not be opened, and why."""
        if self.proxy.observer is not None:
            self.proxy.observer.upstream_error(error)

    async def _connect(self, pool: Upstream, *, raw: bool = False) -> BackendLeg | RawLeg | None:
        """Open the backend leg to a target of ``pool``, moving on while handshakes fail."""
        client_ip = client_address(self.scope) if pool.balance == "ip_hash" else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pool.try_timeout_s
        tried: list[int] = []
        failure: Exception | None = None
        while (peer := pool.select(client_ip, tried)) is not None:
            tried.append(peer.index)
            try:
                opener = self.proxy._open(self.scope, self.proxy._endpoints[peer.index], raw=raw)
            except ValueError as exc:  # the client's request cannot be sent anywhere
                pool.release(peer)
                await self._refuse(gateway_error(400, "bad request"), str(exc))
                return None
            try:
                backend = await opener
            except Exception as exc:  # the websockets -> HTTP boundary: see map_backend_error
                pool.release(peer)
                self._report(exc)
                kind = failure_kind(exc)
                if kind is None:  # the backend's refusal, passed on as it is; or a bug
                    if isinstance(exc, InvalidStatus):
                        pool.succeeded(peer)
                    else:
                        logger.exception("unexpected error opening the WebSocket backend leg")
                    await self._refuse(map_backend_error(exc), f"{type(exc).__name__}: {exc}")
                    return None
                detail = f"{type(exc).__name__}: {exc}"
                pool.failed(peer, kind, detail)
                failure = exc
                retry = len(tried) < pool.max_tries and loop.time() < deadline
                logger.warning(
                    "websocket path=%s -> %s failed: %s%s",
                    self.scope.get("path", ""),
                    peer.target.url,
                    detail,
                    "; trying another target" if retry else "",
                )
                if not retry:
                    break
                continue
            pool.succeeded(peer)
            self.peer = peer
            return backend
        if failure is not None:
            await self._refuse(map_backend_error(failure), f"{type(failure).__name__}: {failure}")
        else:
            self._report("no_healthy_target")
            retry_after = pool.retry_after_s()
            await self._refuse(no_target_available(retry_after), f"no target available in {pool!r}")
        return None

    async def _refuse(self, failure: BackendFailure, detail: str) -> None:
        self.stats.status = failure.status
        self.stats.detail = detail
        with contextlib.suppress(OSError):  # the client may be gone already
            await self._send_refusal(failure)

    async def _send_refusal(self, failure: BackendFailure) -> None:
        if "websocket.http.response" in self.scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": failure.status}
            await self.send({**start, "headers": list(failure.headers)})
            await self.send({"type": "websocket.http.response.body", "body": failure.body})
        else:  # without the extension the server answers a close before accept with 403
            await self.send({"type": "websocket.close", "code": CloseCode.INTERNAL_ERROR})

    async def _bridge(self, backend: BackendLeg) -> None:
        self.last_activity = asyncio.get_running_loop().time()
        pumps = (
            asyncio.create_task(self._client_to_backend(backend)),
            asyncio.create_task(self._backend_to_client(backend)),
        )
        self._pumps_running = len(pumps)
        for pump in pumps:
            pump.add_done_callback(self._pump_done)
        if self.proxy.ping_interval_s is not None:
            self._backend = backend
            self._next_ping_at = self.last_activity + self.proxy.ping_interval_s
        # Idle sessions are found on the watchdog's ticks: no timer per session.
        watchdog = self.proxy.watchdog
        watchdog.watch(self)
        ending = _Ending.both(CloseCode.INTERNAL_ERROR, "internal error")
        try:
            ending = await self._ended
        except asyncio.CancelledError:  # server shutdown, or the enclosing app gave up
            ending = _Ending.both(CloseCode.GOING_AWAY, "server shutdown")
            raise
        finally:
            watchdog.unwatch(self)
            self._backend = None
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await self._finish(backend, ending)

    def _pump_done(self, pump: asyncio.Task[_Ending | None]) -> None:
        self._pumps_running -= 1
        ending = self._pump_result(pump)
        if ending is not None:
            self._end(ending)
        elif self._pumps_running == 0:  # both pumps ended without a close to relay
            self._end(_Ending(None, relay_client_close(CloseCode.ABNORMAL_CLOSURE, "")))

    def _pump_result(self, pump: asyncio.Future[Any]) -> _Ending | None:
        if pump.cancelled():
            return None
        exc = pump.exception()
        if exc is not None:
            logger.error("websocket bridge failed", exc_info=exc)
            return _Ending.both(CloseCode.INTERNAL_ERROR, "internal error")
        result: _Ending | None = pump.result()
        return result

    async def _client_to_backend(self, backend: BackendLeg) -> _Ending | None:
        limit = self.proxy.max_message_bytes
        loop = asyncio.get_running_loop()
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code", CloseCode.NO_STATUS_RCVD)
                self.stats.client_code = code
                return _Ending(None, relay_client_close(code, message.get("reason") or ""))
            if message["type"] != "websocket.receive":
                continue
            text = message.get("text")
            data: str | bytes = text if text is not None else message.get("bytes") or b""
            size = utf8_size(data)
            if size > limit:
                return _Ending.both(CloseCode.MESSAGE_TOO_BIG, "message too big")
            self.last_activity = loop.time()
            try:
                await backend.send(data)
            except ConnectionClosed as exc:
                return self._backend_closed(exc)
            self.stats.messages_up += 1
            self.stats.bytes_up += size

    async def _backend_to_client(self, backend: BackendLeg) -> _Ending | None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await backend.recv()
            except ConnectionClosed as exc:
                return self._backend_closed(exc)
            size = utf8_size(data)
            if size > self.proxy.max_message_bytes:
                return _Ending.both(CloseCode.MESSAGE_TOO_BIG, "message too big")
            self.last_activity = loop.time()
            key = "text" if isinstance(data, str) else "bytes"
            try:
                await self.send({"type": "websocket.send", key: data})
            except OSError:  # the client is gone; its disconnect event ends the session
                return None
            self.stats.messages_down += 1
            self.stats.bytes_down += size

    def _backend_closed(self, exc: ConnectionClosed) -> _Ending:
        close = exc.rcvd or exc.sent
        self.stats.backend_code = close.code if close is not None else CloseCode.ABNORMAL_CLOSURE
        failure = map_backend_error(exc)
        return _Ending((failure.close_code, failure.reason), None)

    async def _finish(self, backend: BackendLeg, ending: _Ending) -> None:
        if ending.to_client is not None:
            code, reason = ending.to_client
            self.stats.client_code = code
            with contextlib.suppress(OSError):
                await self.send({"type": "websocket.close", "code": code, "reason": reason})
        if ending.to_backend is not None:
            await self._close_backend(backend, ending.to_backend)
        else:
            await backend.close()  # already closed: only makes sure the socket is released

    async def _close_backend(self, backend: BackendLeg, close: tuple[int, str]) -> None:
        if self.stats.backend_code is None:
            self.stats.backend_code = close[0]
        await backend.close(*close)

    def _log(self, duration_s: float) -> None:
        client = self.scope.get("client")
        stats = self.stats
        # The path only: query strings often carry tokens.
        where = f"client={client[0]}:{client[1]}" if client else "client=-"
        where += f" path={self.scope.get('path', '')} http={self.scope.get('http_version', '1.1')}"
        if stats.status is not None:
            logger.info(
                "websocket refused %s status=%d duration=%.3fs detail=%s",
                where,
                stats.status,
                duration_s,
                stats.detail,
            )
            return
        logger.info(
            "websocket session %s mode=%s duration=%.3fs up=%d msgs/%d B down=%d msgs/%d B "
            "close client=%s backend=%s%s",
            where,
            "relay" if self._relay is not None else "bridge",
            duration_s,
            stats.messages_up,
            stats.bytes_up,
            stats.messages_down,
            stats.bytes_down,
            stats.client_code,
            stats.backend_code,
            f" ({stats.detail})" if stats.detail else "",
        )
