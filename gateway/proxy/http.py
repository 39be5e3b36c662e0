"""ReverseProxy: an ASGI app that forwards each HTTP exchange to a backend over httpx,
and hands WebSocket upgrades to a `WebSocketProxy` for the same backend.

Bodies stream both ways with bounded memory; headers follow the rules in
``forwarding``; backend failures become 502/503/504 with a short body
(``gateway.failures``). The backend is an `Upstream` - a URL is one of a single target -
so every request takes one path: the target its balancing policy picks, failed attempts
moving on to the next target where ``gateway.upstream`` allows it, and no available
target a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.types import Message, Receive, Scope, Send

from gateway.failures import failure_kind, http_status
from gateway.lifespan import serve_lifespan
from gateway.logs import get_logger
from gateway.proxy.forwarding import (
    ForwardingOptions,
    request_headers,
    response_headers,
    strip_root_path,
)
from gateway.proxy.websocket import WebSocketProxy
from gateway.request_rules import declared_body_bytes
from gateway.responses import send_text
from gateway.transport import ResponseStream, UpstreamTransport
from gateway.upstream import Peer, Upstream, client_address, may_retry

__all__ = ["DEFAULT_TIMEOUT", "UPSTREAM_ERROR_STATE_KEY", "ReverseProxy"]

logger = get_logger("gateway.proxy")

# nginx's proxy_connect_timeout / proxy_read_timeout / proxy_send_timeout.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=5.0)

# Where a failed exchange leaves its backend errors for the metrics middleware:
# the exception, a list of them when attempts were retried, or "no_healthy_target".
UPSTREAM_ERROR_STATE_KEY = "upstream_error"


class RequestBodyTooLarge(Exception):
    """The client sent more than the configured body limit."""


class ClientDisconnected(Exception):
    """The client went away while its request body was being read."""


# The server sends its own (nginx drops the backend's too): never two of either.
_DATE_SERVER = frozenset({b"date", b"server"})


def _checked_url(url: str) -> str:
    """``url`` as a target: an absolute http(s) URL without credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"upstream {url!r} must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("upstream URLs cannot carry credentials (user:password@)")
    return url.rstrip("/")


def default_transport(timeout: httpx.Timeout) -> httpx.AsyncBaseTransport:
    """The transport used when none is given: the gateway's lean HTTP/1.1 client."""
    return UpstreamTransport(
        connect_timeout_s=timeout.connect or DEFAULT_TIMEOUT.connect or 5.0,
        read_timeout_s=timeout.read or DEFAULT_TIMEOUT.read or 60.0,
        write_timeout_s=timeout.write or DEFAULT_TIMEOUT.write or 60.0,
        pool_timeout_s=timeout.pool or DEFAULT_TIMEOUT.pool or 5.0,
    )


class ReverseProxy:
    """Proxy HTTP requests and WebSocket sessions to ``upstream``: an
    ``http[s]://host[:port][/base]`` URL (a pool of one target) or an `Upstream`.

    The whole of an nginx ``location`` with ``proxy_pass``: HTTP requests go through
    httpx, WebSocket upgrades are bridged to the same targets as ``ws[s]://`` (by a
    `WebSocketProxy`, made on the first upgrade; ``websocket=False`` refuses upgrades).
    Usable on its own (``uvicorn module:proxy``) or mounted under a prefix in any ASGI
    app: the mount prefix (``root_path``) is removed before forwarding.

    With a URL it needs no lifespan events: ``aclose()`` closes what it opened. An
    `Upstream` (``transport`` must then be None) is started and closed by its owner, or
    by this app's lifespan events when it runs on its own.

    The backend's ``Date`` and ``Server`` headers are dropped, as nginx does, so that the
    server's own are the only ones (``pass_date_server=True`` passes them on; then run
    the server without its own).
    """

    def __init__(
        self,
        upstream: str | Upstream,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        forwarding: ForwardingOptions | None = None,
        max_body_bytes: int | None = None,
        rewrite_location: bool = True,
        pass_date_server: bool = False,
        websocket: bool | WebSocketProxy = True,
    ) -> None:
        self.upstream = upstream
        if isinstance(upstream, Upstream):
            if transport is not None:
                raise ValueError("an Upstream brings its transport: pass it to Upstream(...)")
            self.pool = upstream
            self._owns_pool = False
        else:
            self.pool = Upstream(
                [_checked_url(upstream)],
                name=upstream.rstrip("/"),
                transport=transport if transport is not None else default_transport(timeout),
            )
            self._owns_pool = True
            self._owns_transport = transport is None
        self._endpoints = [_Endpoint(peer) for peer in self.pool.peers]
        self.timeout = timeout
        self._timeout_ext = timeout.as_dict()
        self.forwarding = forwarding if forwarding is not None else ForwardingOptions()
        self.max_body_bytes = max_body_bytes
        self.rewrite_location = rewrite_location
        self.pass_date_server = pass_date_server
        self._websocket_option = websocket
        self._websocket: WebSocketProxy | None = (
            websocket if isinstance(websocket, WebSocketProxy) else None
        )

    def __repr__(self) -> str:
        return f"ReverseProxy({self.upstream!r})"

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The HTTP transport to the backend (the pool's)."""
        return self.pool.transport

    @property
    def websocket(self) -> WebSocketProxy | None:
        """The bridge for WebSocket upgrades to the same targets (None: upgrades refused)."""
        if self._websocket is None and self._websocket_option is True:
            self._websocket = WebSocketProxy(
                self.pool,
                forwarding=self.forwarding,
                open_timeout_s=self.timeout.connect or 5.0,
            )
        return self._websocket

    async def aclose(self) -> None:
        """Close what this proxy opened for a URL (an `Upstream` is closed by its owner)."""
        if self._websocket is not None:
            await self._websocket.shutdown()
        if self._owns_pool:
            await self.pool.aclose()  # the pool was given the transport: it leaves it open
            if self._owns_transport:
                await self.pool.transport.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._forward(scope, receive, send, self.pool)
        elif scope["type"] == "websocket":
            bridge = self.websocket
            if bridge is None:
                await send({"type": "websocket.close", "code": 1008})
            else:
                await bridge(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async def shutdown() -> None:
            await self.aclose()
            if not self._owns_pool:
                await self.pool.aclose()

        await serve_lifespan(receive, send, startup=self.pool.start, shutdown=shutdown)

    def _build_request(
        self,
        scope: Scope,
        endpoint: _Endpoint,
        body: httpx.AsyncByteStream,
        chunked: bool,
    ) -> httpx.Request:
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        target = endpoint.base_path + strip_root_path(raw_path, scope.get("root_path", ""))
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        client = scope.get("client")
        headers = request_headers(
            scope["headers"],
            peer=client[0] if client else None,
            scheme="https" if scope["scheme"] in ("https", "wss") else "http",
            upstream_host=endpoint.host,
            options=self.forwarding,
        )
        if chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        extensions: dict[str, Any] = {"timeout": self._timeout_ext, "target": target}
        if endpoint.unix_path is not None:
            extensions["unix_socket"] = endpoint.unix_path
        return httpx.Request(
            scope["method"],
            endpoint.origin_url,
            headers=headers,
            stream=body,
            extensions=extensions,
        )

    async def _forward(self, scope: Scope, receive: Receive, send: Send, pool: Upstream) -> None:
        """Forward to the target the policy picks; move on to the next one where safe."""
        version = scope.get("http_version", "1.1")
        declared = declared_body_bytes(scope["headers"], version)
        limit = self.max_body_bytes
        if declared is not None and limit is not None and declared > limit:
            await send_text(scope, send, 413)
            return
        client_ip = client_address(scope) if pool.balance == "ip_hash" else None
        # Most bodies come whole in the first message: they go out from memory, in one
        # write with the head, and can be sent again to another target. Any other body
        # is one stream for every attempt: it knows whether the client's bytes started
        # to flow, after which the request can no longer be replayed elsewhere.
        body: _RequestBody | None = None
        content = b""
        if declared != 0:  # HTTP/2 and 3 without Content-Length: the first message tells
            first = await receive()
            if first["type"] != "http.request":
                return  # the client left before its body came
            if first.get("more_body", False):
                body = _RequestBody(receive, limit, first)
            else:
                content = first.get("body", b"")
                if limit is not None and len(content) > limit:
                    await send_text(scope, send, 413)
                    return
        stream = body if body is not None else httpx.ByteStream(content)
        # A streamed body of unknown length goes on chunked, as nginx does unbuffered.
        chunked = body is not None and declared is None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pool.try_timeout_s
        tried: list[int] = []
        last_error: httpx.HTTPError | None = None
        while True:
            peer = pool.select(client_ip, tried)
            if peer is None:
                break
            tried.append(peer.index)
            endpoint = self._endpoints[peer.index]
            request = self._build_request(scope, endpoint, stream, chunked)
            try:
                response = await pool.transport.handle_async_request(request)
            except RequestBodyTooLarge:
                pool.release(peer)
                await send_text(scope, send, 413)
                return
            except ClientDisconnected:
                pool.release(peer)
                return
            except httpx.HTTPError as exc:
                pool.release(peer)
                last_error = exc
                if not self._retry_after_failure(scope, pool, peer, exc, body, tried, deadline):
                    break
                continue
            except BaseException:
                pool.release(peer)
                raise
            pool.succeeded(peer)
            try:
                await self._respond(scope, receive, send, response, endpoint.base_url)
            finally:
                await response.aclose()
                pool.release(peer)
            return
        if last_error is not None:  # the last attempt's failure is the answer
            status = http_status(last_error)
            if peer is None:
                logger.warning(
                    "%s %s -> upstream %r: no other target available",
                    scope["method"],
                    scope["path"],
                    pool,
                )
            retry_after = str(pool.retry_after_s()).encode()
            headers = [(b"retry-after", retry_after)] if status == 503 else []
            await send_text(scope, send, status, headers=headers)
            return
        _note_error(scope, "no_healthy_target")
        logger.warning(
            "%s %s -> upstream %r: no target available", scope["method"], scope["path"], pool
        )
        retry_after = str(pool.retry_after_s()).encode()
        await send_text(scope, send, 503, headers=[(b"retry-after", retry_after)])

    def _retry_after_failure(
        self,
        scope: Scope,
        pool: Upstream,
        peer: Peer,
        exc: httpx.HTTPError,
        body: _RequestBody | None,
        tried: list[int],
        deadline: float,
    ) -> bool:
        """Report a failed attempt; True if the request may go to another target."""
        kind = failure_kind(exc)
        pool.failed(peer, kind or type(exc).__name__, f"{type(exc).__name__}: {exc}")
        _note_error(scope, exc)
        retry = (
            may_retry(scope["method"], kind, body is not None and body.started)
            and len(tried) < pool.max_tries
            and asyncio.get_running_loop().time() < deadline
        )
        logger.warning(
            "%s %s -> %s failed: %s: %s%s",
            scope["method"],
            scope["path"],
            peer.target.url,
            type(exc).__name__,
            exc,
            "; trying another target" if retry else "",
        )
        return retry

    async def _respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        response: httpx.Response,
        upstream_base: str,
    ) -> None:
        public_base = None
        if self.rewrite_location:
            public_base = _public_base(scope)
        headers = response_headers(
            response.headers.raw,
            upstream_base=upstream_base if public_base is not None else None,
            public_base=public_base,
            via=self.forwarding.via,
            drop=frozenset() if self.pass_date_server else _DATE_SERVER,
        )
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        chunks = aiter(stream)
        try:
            # Most responses fit in one chunk: send it without watching for disconnects.
            first = await anext(chunks, None)
            if first is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            whole = isinstance(stream, ResponseStream) and stream.complete
            if whole or len(first) == _content_length(headers):
                # The whole body in one chunk: no second read, no disconnect watcher.
                await send({"type": "http.response.body", "body": first, "more_body": False})
                return
            await send({"type": "http.response.body", "body": first, "more_body": True})
            await _stream_rest(chunks, receive, send)
        except httpx.HTTPError as exc:
            # The status is already sent: the only honest signal left is to cut the
            # connection, which uvicorn does when the app returns with the body incomplete.
            logger.warning(
                "%s %s <- %s response body failed: %s: %s",
                scope["method"],
                scope["path"],
                upstream_base,
                type(exc).__name__,
                exc,
            )


class _Endpoint:
    """What requests to one target of an `Upstream` are built from, worked out once."""

    __slots__ = ("base_path", "base_url", "host", "origin_url", "unix_path")

    def __init__(self, peer: Peer) -> None:
        target = peer.target
        self.origin_url = peer.origin_url
        self.base_path = target.base_path.encode("utf-8")
        self.host = target.authority.encode("idna")
        self.base_url = target.base_url
        self.unix_path = target.unix_path


def _note_error(scope: Scope, error: BaseException | str) -> None:
    """Leave ``error`` for the metrics middleware (a list once there are several)."""
    state = scope.setdefault("state", {})
    previous = state.get(UPSTREAM_ERROR_STATE_KEY)
    if previous is None:
        state[UPSTREAM_ERROR_STATE_KEY] = error
    elif isinstance(previous, list):
        previous.append(error)
    else:
        state[UPSTREAM_ERROR_STATE_KEY] = [previous, error]


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The declared body length, or -1."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else -1
    return -1


async def _stream_rest(chunks: AsyncIterator[bytes], receive: Receive, send: Send) -> None:
    """Stream the rest of a large body, stopping when the client goes away."""
    task = asyncio.current_task()
    assert task is not None
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone.is_set():
            raise
        task.uncancel()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _public_base(scope: Scope) -> str | None:
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    if host is None:
        return None
    scheme = "https" if scope["scheme"] in ("https", "wss") else "http"
    return f"{scheme}://{host.decode('latin-1')}{scope.get('root_path', '')}"


class _RequestBody(httpx.AsyncByteStream):
    """The client's request body as an async byte stream, read on demand.

    ``started`` turns True when the first message is taken from the client: from then
    on the body cannot be sent again (it is never buffered).
    """

    def __init__(self, receive: Receive, limit: int | None, first: Message | None = None) -> None:
        self._receive = receive
        self._limit = limit
        self._first = first  # a message taken already, to be read first
        self.started = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        received = 0
        more = True
        while more:
            message, self._first = self._first or await self._receive(), None
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            received += len(body)
            if self._limit is not None and received > self._limit:
                raise RequestBodyTooLarge
            if body:
                yield body
