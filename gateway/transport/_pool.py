"""Keep-alive connections per origin: LIFO reuse, a hard limit, FIFO waiters.

Nothing here scans connections on the request path. Idle connections sit in a deque
ordered by the time they went idle: the hot end serves requests (LIFO keeps few
connections warm), the cold end is where expiry happens, checked by one sweep timer
that only runs while something is idle. A connection the upstream closes while idle
removes itself at once (`Connection.connection_lost` -> `Origin.discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque

import httpx

from gateway.transport._connection import Connection
from gateway.transport._errors import to_httpx_error


class PoolLimits:
    """Limits shared by every origin of one transport."""

    __slots__ = ("keepalive_expiry_s", "max_connections", "max_header_bytes", "max_idle")

    def __init__(
        self,
        *,
        max_connections: int,
        max_idle: int,
        keepalive_expiry_s: float,
        max_header_bytes: int,
    ) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.keepalive_expiry_s = keepalive_expiry_s
        self.max_header_bytes = max_header_bytes


class Origin:
    """The connections of one (scheme, host, port)."""

    def __init__(
        self,
        pool: ConnectionPool,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        unix_path: str | None = None,
    ) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._limits = pool.limits
        self.host = host
        self.port = port
        self._ssl_context = ssl_context
        self.unix_path = unix_path
        self._label = f"{host}:{port}" if unix_path is None else f"unix:{unix_path}"
        self.idle: deque[Connection] = deque()
        self.connections: set[Connection] = set()
        self.total = 0  # connecting + active + idle; may exceed len(connections) briefly
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()

    def __repr__(self) -> str:
        return (
            f"<Origin {self._label} total={self.total} idle={len(self.idle)}"
            f" waiting={len(self.waiters)}>"
        )

    async def acquire(
        self,
        request: httpx.Request,
        connect_timeout_s: float | None,
        pool_timeout_s: float | None,
        *,
        fresh: bool = False,
    ) -> Connection:
        """Return a live connection: the most recently idle one, a new one, or the next freed."""
        while True:
            idle = self.idle
            if idle and not fresh:
                now = self._loop.time()
                expiry_s = self._limits.keepalive_expiry_s
                while idle:
                    conn = idle.pop()
                    conn.idle = False
                    if now - conn.idle_since < expiry_s:
                        return conn
                    conn.close()
            if self.total < self._limits.max_connections:
                self.total += 1
                return await self._connect(request, connect_timeout_s)
            conn_or_slot = await self._wait(request, pool_timeout_s)
            if conn_or_slot is None:  # a slot was handed over: total already counts it
                return await self._connect(request, connect_timeout_s)
            if not conn_or_slot.closed:
                return conn_or_slot

    async def _wait(
        self, request: httpx.Request, pool_timeout_s: float | None
    ) -> Connection | None:
        waiter: asyncio.Future[Connection | None] = self._loop.create_future()
        self.waiters.append(waiter)
        timer = None
        if pool_timeout_s is not None:
            timer = self._loop.call_later(pool_timeout_s, _expire_waiter, waiter)
        try:
            return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a connection or slot, then cancelled before resuming: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._slot_freed()
                else:
                    self.release(handed)
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                message = f"no connection to {self._label} free within {pool_timeout_s} s"
                raise to_httpx_error(exc, "pool", request, message) from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _connect(self, request: httpx.Request, connect_timeout_s: float | None) -> Connection:
        limits = self._limits
        conn = Connection(
            self._loop,
            label=self._label,
            max_header_bytes=limits.max_header_bytes,
            on_release=self.release,
            on_close=self.discard,
        )
        self.connections.add(conn)
        ssl_context = self._ssl_context
        try:
            async with asyncio.timeout(connect_timeout_s):
                if self.unix_path is not None:
                    await self._loop.create_unix_connection(lambda: conn, self.unix_path)
                else:
                    await self._loop.create_connection(
                        lambda: conn,
                        self.host,
                        self.port,
                        ssl=ssl_context,
                        server_hostname=self.host if ssl_context is not None else None,
                    )
        except BaseException as exc:
            if conn.closed:
                pass  # discard() already gave the slot back
            elif conn.connected:
                conn.close()  # discard() gives the slot back
            else:
                self.connections.discard(conn)
                self._slot_freed()
            if isinstance(exc, OSError):  # TimeoutError included
                raise to_httpx_error(exc, "connect", request, f"upstream {self._label}") from exc
            raise
        if conn.closed:  # the transport was closed meanwhile
            cause = OSError("transport closed while connecting")
            raise to_httpx_error(cause, "connect", request, f"upstream {self._label}")
        return conn

    def release(self, conn: Connection) -> None:
        """Take back a connection whose exchange completed and may be reused."""
        if conn.closed:
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle = True
        conn.idle_since = self._loop.time()
        self.idle.append(conn)
        if len(self.idle) > self._limits.max_idle:
            oldest = self.idle.popleft()
            oldest.idle = False
            oldest.close()
        self._pool.schedule_sweep()

    def discard(self, conn: Connection) -> None:
        """Forget a closed connection and free its slot (called once per connection)."""
        if conn.idle:
            conn.idle = False
            self.idle.remove(conn)
        self.connections.discard(conn)
        self._slot_freed()

    def _slot_freed(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the waiter inherits the slot
                return
        self.total -= 1

    def sweep(self, now: float) -> float | None:
        """Close connections idle for too long; return when the next one expires."""
        idle = self.idle
        expiry_s = self._limits.keepalive_expiry_s
        while idle and now - idle[0].idle_since >= expiry_s:
            conn = idle.popleft()
            conn.idle = False
            conn.close()
        return idle[0].idle_since + expiry_s if idle else None


class ConnectionPool:
    """All origins of one transport, and the idle-expiry sweep."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: PoolLimits) -> None:
        self.loop = loop
        self.limits = limits
        self.origins: dict[tuple[str, str, int | None], Origin] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None

    def origin(
        self,
        key: tuple[str, str, int | None],
        ssl_context: ssl.SSLContext | None,
        unix_path: str | None = None,
    ) -> Origin:
        """Create the origin for `key` = (scheme, host, port or None for the default).

        With `unix_path` the origin connects to that Unix socket instead (its key is
        `("http+unix", unix_path, None)`).
        """
        scheme, host, port = key
        if port is None:
            port = 443 if scheme == "https" else 80
        origin = self.origins[key] = Origin(self, host, port, ssl_context, unix_path)
        return origin

    def schedule_sweep(self) -> None:
        """Make sure expired idle connections get closed even without traffic."""
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(self.limits.keepalive_expiry_s, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        now = self.loop.time()
        next_at = [at for origin in self.origins.values() if (at := origin.sweep(now)) is not None]
        if next_at:
            self._sweep_handle = self.loop.call_at(min(next_at), self._sweep)

    def close(self) -> None:
        """Abort every connection, idle or active."""
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for origin in self.origins.values():
            for conn in list(origin.connections):
                conn.close()

    def stats(self) -> dict[str, int]:
        """Connection counts over all origins."""
        origins = self.origins.values()
        return {
            "connections": sum(origin.total for origin in origins),
            "idle": sum(len(origin.idle) for origin in origins),
            "waiting": sum(len(origin.waiters) for origin in origins),
        }


def _expire_waiter(waiter: asyncio.Future[Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
