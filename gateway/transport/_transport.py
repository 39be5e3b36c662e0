"""`UpstreamTransport`: the httpx transport the gateway reaches its backends with."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpx

from gateway.transport._pool import ConnectionPool, Origin, PoolLimits


def _positive(key: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _count(key: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 client transport on asyncio and httptools, with a keep-alive pool per origin.

    It sends the request as the caller built it: the target from `request.url.raw_path`
    (or the `"target"` request extension, as in httpcore, for targets httpx would
    normalise such as dot segments), the headers of `request.headers.raw` in order with
    duplicates, and `Host` only when absent. Bodies stream both ways with bounded
    memory and come back raw (de-chunked, never decompressed). Timeouts can be
    overridden per request with httpx's `request.extensions["timeout"]` dict.

    A request with the `"unix_socket"` extension (a path) goes to that Unix socket
    instead of the URL's host and port (plain HTTP only); its pool is keyed by the path.
    """

    def __init__(
        self,
        *,
        # Timeouts
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        write_timeout_s: float = 60.0,
        pool_timeout_s: float = 5.0,
        # Limits
        max_connections_per_origin: int = 512,
        max_idle_per_origin: int = 64,
        keepalive_expiry_s: float = 60.0,
        max_response_header_bytes: int = 64 * 1024,
        # TLS (https upstreams); None: ssl.create_default_context()
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout_s = _positive("connect_timeout_s", connect_timeout_s)
        self.read_timeout_s = _positive("read_timeout_s", read_timeout_s)
        self.write_timeout_s = _positive("write_timeout_s", write_timeout_s)
        self.pool_timeout_s = _positive("pool_timeout_s", pool_timeout_s)
        self.max_connections_per_origin = _count(
            "max_connections_per_origin", max_connections_per_origin, 1
        )
        self.max_idle_per_origin = _count("max_idle_per_origin", max_idle_per_origin, 0)
        self.keepalive_expiry_s = _positive("keepalive_expiry_s", keepalive_expiry_s)
        self.max_response_header_bytes = _count(
            "max_response_header_bytes", max_response_header_bytes, 1024
        )
        self.ssl_context = ssl_context
        self._default_ssl_context: ssl.SSLContext | None = None
        self._limits = PoolLimits(
            max_connections=self.max_connections_per_origin,
            max_idle=self.max_idle_per_origin,
            keepalive_expiry_s=self.keepalive_expiry_s,
            max_header_bytes=self.max_response_header_bytes,
        )
        self._timeouts = (
            self.connect_timeout_s,
            self.read_timeout_s,
            self.write_timeout_s,
            self.pool_timeout_s,
        )
        self._pool: ConnectionPool | None = None

    def __repr__(self) -> str:
        return (
            f"UpstreamTransport(connect_timeout_s={self.connect_timeout_s},"
            f" read_timeout_s={self.read_timeout_s}, write_timeout_s={self.write_timeout_s},"
            f" pool_timeout_s={self.pool_timeout_s},"
            f" max_connections_per_origin={self.max_connections_per_origin},"
            f" max_idle_per_origin={self.max_idle_per_origin},"
            f" keepalive_expiry_s={self.keepalive_expiry_s},"
            f" max_response_header_bytes={self.max_response_header_bytes},"
            f" ssl_context={self.ssl_context!r})"
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` upstream; return the response once its head has arrived.

        The caller must read the body to its end or `aclose()` the response: that is
        what returns the connection to the pool (or closes it, when cut short).
        """
        pool = self._pool
        loop = asyncio.get_running_loop()
        if pool is None:
            pool = self._pool = ConnectionPool(loop, self._limits)
        elif pool.loop is not loop:
            raise RuntimeError(
                "UpstreamTransport is bound to another event loop; aclose() it first"
            )
        url = request.url
        extensions = request.extensions
        unix_path: str | None = extensions.get("unix_socket")
        if unix_path is None:
            key = (url.scheme, url.host, url.port)
        else:
            key = (url.scheme + "+unix", unix_path, None)
        origin = pool.origins.get(key)
        if origin is None:
            origin = self._new_origin(pool, key, url.scheme, unix_path)
        timeout: dict[str, Any] | None = extensions.get("timeout")
        if timeout is None:
            connect_s, read_s, write_s, pool_s = self._timeouts
        else:
            connect_s = timeout.get("connect", self.connect_timeout_s)
            read_s = timeout.get("read", self.read_timeout_s)
            write_s = timeout.get("write", self.write_timeout_s)
            pool_s = timeout.get("pool", self.pool_timeout_s)
        conn = await origin.acquire(request, connect_s, pool_s)
        try:
            return await conn.send(request, read_s, write_s)
        except httpx.TransportError:
            if not conn.retry_safe:
                raise
        # The keep-alive race: the upstream closed the reused connection as the request
        # went out, and nothing of it was answered or consumed. Once, on a new one.
        conn = await origin.acquire(request, connect_s, pool_s, fresh=True)
        return await conn.send(request, read_s, write_s)

    def _new_origin(
        self,
        pool: ConnectionPool,
        key: tuple[str, str, int | None],
        scheme: str,
        unix_path: str | None,
    ) -> Origin:
        _, host, _ = key
        if not host:
            raise httpx.UnsupportedProtocol(f"request URL has no host: {key!r}")
        if unix_path is not None:
            if scheme != "http":
                raise httpx.UnsupportedProtocol(f"a Unix socket carries http only, not {scheme!r}")
            return pool.origin(key, None, unix_path)
        if scheme == "http":
            return pool.origin(key, None)
        if scheme != "https":
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        context = self.ssl_context
        if context is None:
            context = self._default_ssl_context
            if context is None:
                context = self._default_ssl_context = ssl.create_default_context()
        return pool.origin(key, context)

    def pool_stats(self) -> dict[str, int]:
        """Counts over all origins: `connections` (open or opening), `idle`, `waiting`."""
        if self._pool is None:
            return {"connections": 0, "idle": 0, "waiting": 0}
        return self._pool.stats()

    async def aclose(self) -> None:
        """Close every connection, idle or active; the transport stays usable."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await asyncio.sleep(0)  # let the aborted sockets run connection_lost and close
