"""Rate and concurrency limits per client IP: token bucket with burst, in-flight and WebSocket caps.

Three independent limits, each answered with ``429 Too Many Requests`` before the
wrapped app runs, so a refused request never reaches a backend:

- **Token bucket** (``rate_per_s``, ``burst``): every HTTP request and every WebSocket
  handshake takes a token; the bucket holds at most ``burst`` tokens (the number of
  requests a client may send back to back) and refills at ``rate_per_s``.  An empty
  bucket answers 429 with ``Retry-After``: the whole seconds, rounded up, until a token
  is back.  A request refused by a later limit has still spent its token, so probing
  costs the same as asking.
- **In-flight HTTP requests** (``max_concurrent_per_ip``): held from the call into the
  app until the app returns - when the response is complete, the app failed, or the
  app noticed the client's disconnect.  A client that hangs up while the backend is
  still working keeps its slot until the backend is done: the work is still in flight.
- **Open WebSocket sessions** (``max_websockets_per_ip``): the handshake is refused
  with 429 when the client has that many sessions open; a slot is freed when the
  session ends.

Buckets live in a ``RateStore``: ``MemoryStore`` (the default, one per process) or
``gateway.middleware.ratelimit_redis.RedisStore`` to share them between replicas.  The
two connection counts are always per process: they must be released reliably, and a
replica that dies must not leave counts behind in a shared store (nginx's
``limit_conn`` is per instance too).

Keys: the client address honours ``trusted_proxies`` (``gateway.middleware.client_ip``).
IPv6 clients are grouped by ``ipv6_prefix_len`` (default /64, the block one subscriber
usually owns, so rotating addresses inside it does not escape the limit).  With
``key="ip+route"`` buckets are per client and route, the route being ``route`` or the
mount prefix (``root_path``) the middleware sees.  Requests without a client address
(a Unix socket peer) are not limited.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.logs import get_logger
from gateway.middleware.client_ip import IPNetwork, client_ip, parse_address, parse_networks
from gateway.responses import send_text

__all__ = [
    "Decision",
    "MemoryStore",
    "RateLimitMiddleware",
    "RateStore",
    "client_key",
    "retry_after_seconds",
    "take",
]

logger = get_logger("gateway.ratelimit")

KeyMode = Literal["ip", "ip+route"]
_TOO_MANY_HTTP = "too many concurrent requests"
_TOO_MANY_WS = "too many WebSocket sessions"


def take(
    tokens: float, last_s: float, now_s: float, rate: float, burst: int
) -> tuple[bool, float, float]:
    """One request against a bucket: ``(allowed, tokens_left, retry_after_s)``.

    ``tokens`` were in the bucket at ``last_s``; it refills at ``rate`` per second up
    to ``burst``.  A clock that went backwards refills nothing.
    """
    tokens = min(float(burst), tokens + max(0.0, now_s - last_s) * rate)
    if tokens >= 1.0:
        return True, tokens - 1.0, 0.0
    return False, tokens, (1.0 - tokens) / rate


def retry_after_seconds(retry_after_s: float) -> int:
    """The ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(retry_after_s))


def client_key(address: str, ipv6_prefix_len: int = 128) -> str:
    """The limit key of a client: its address, or its IPv6 network of that prefix length."""
    ip = parse_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ipv6_prefix_len < 128:
        return str(ipaddress.IPv6Network((ip, ipv6_prefix_len), strict=False))
    return address if ip is None else str(ip)


@dataclass(frozen=True, slots=True)
class Decision:
    """A bucket's answer: allowed, or refused until ``retry_after_s`` from now."""

    allowed: bool
    retry_after_s: float = 0.0


class RateStore(Protocol):
    """Where token buckets live; ``take`` must be atomic per key."""

    async def take(self, key: str, *, rate_per_s: float, burst: int) -> Decision:
        """Take one token from bucket ``key`` (created full) and say whether it was there."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...


class MemoryStore:
    """Token buckets in this process, bounded to ``max_buckets``.

    Buckets are kept in least-recently-used order.  A bucket that has refilled is
    dropped (a full bucket is what a new client gets anyway), so memory follows the
    number of recently active clients; beyond ``max_buckets`` (an address flood) the
    least recently used buckets go first, even if not yet full.
    """

    def __init__(
        self, *, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_buckets < 1:
            raise ValueError(f"max_buckets: must be at least 1, got {max_buckets!r}")
        self.max_buckets = max_buckets
        self._clock = clock
        # key -> (tokens, last_s, full_at_s)
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return f"MemoryStore(max_buckets={self.max_buckets})"

    async def take(self, key: str, *, rate_per_s: float, burst: int) -> Decision:
        """Take a token (see ``take_now``)."""
        return self.take_now(key, rate_per_s=rate_per_s, burst=burst)

    def take_now(self, key: str, *, rate_per_s: float, burst: int) -> Decision:
        """Take a token synchronously (no await: atomic on the event loop)."""
        now = self._clock()
        state = self._buckets.pop(key, None)
        tokens, last = (float(burst), now) if state is None else (state[0], state[1])
        allowed, tokens, retry = take(tokens, last, now, rate_per_s, burst)
        self._buckets[key] = (tokens, now, now + (burst - tokens) / rate_per_s)
        self._evict(now)
        return Decision(allowed, retry)

    def _evict(self, now: float) -> None:
        while self._buckets:
            key, (_, _, full_at) = next(iter(self._buckets.items()))
            if full_at > now and len(self._buckets) <= self.max_buckets:
                return
            del self._buckets[key]

    async def aclose(self) -> None:
        """Nothing to release."""


class _Counter:
    """Open slots per key; a key is forgotten at zero, so memory follows live connections."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def acquire(self, key: str, limit: int) -> bool:
        count = self.counts.get(key, 0)
        if count >= limit:
            return False
        self.counts[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self.counts.pop(key) - 1
        if count:
            self.counts[key] = count


class RateLimitMiddleware:
    """Answer 429 to clients over their request rate, in-flight or WebSocket limits."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        # Token bucket (None: no rate limit, only the connection limits)
        rate_per_s: float | None,
        burst: int = 20,
        key: KeyMode = "ip",
        route: str | None = None,
        store: RateStore | None = None,
        # Connection limits (per process)
        max_concurrent_per_ip: int | None = None,
        max_websockets_per_ip: int | None = None,
        # Who the client is
        trusted_proxies: Sequence[str | IPNetwork] = (),
        ipv6_prefix_len: int = 64,
    ) -> None:
        if rate_per_s is not None and (not rate_per_s > 0 or math.isinf(rate_per_s)):
            raise ValueError(f"rate_per_s: must be a positive number, got {rate_per_s!r}")
        if rate_per_s is None and max_concurrent_per_ip is None and max_websockets_per_ip is None:
            raise ValueError("set rate_per_s, max_concurrent_per_ip or max_websockets_per_ip")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst: must be a whole number of at least 1, got {burst!r}")
        if key not in ("ip", "ip+route"):
            raise ValueError(f"key: must be 'ip' or 'ip+route', got {key!r}")
        for name, limit in (
            ("max_concurrent_per_ip", max_concurrent_per_ip),
            ("max_websockets_per_ip", max_websockets_per_ip),
        ):
            if limit is not None and limit < 1:
                raise ValueError(f"{name}: must be at least 1 or None, got {limit!r}")
        if not 0 < ipv6_prefix_len <= 128:
            raise ValueError(f"ipv6_prefix_len: must be 1..128, got {ipv6_prefix_len!r}")
        self.app = app
        self.rate_per_s = float(rate_per_s) if rate_per_s is not None else None
        self.burst = burst
        self.key = key
        self.route = route
        self.store: RateStore = store if store is not None else MemoryStore()
        self.max_concurrent_per_ip = max_concurrent_per_ip
        self.max_websockets_per_ip = max_websockets_per_ip
        self.trusted_proxies = parse_networks("trusted_proxies", trusted_proxies)
        self.ipv6_prefix_len = ipv6_prefix_len
        self._in_flight = _Counter()
        self._websockets = _Counter()

    def __repr__(self) -> str:
        return (
            f"RateLimitMiddleware(rate_per_s={self.rate_per_s!r}, burst={self.burst!r}, "
            f"key={self.key!r}, store={self.store!r})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        address = client_ip(scope, self.trusted_proxies)
        if address is None:
            await self.app(scope, receive, send)
            return
        client = client_key(address, self.ipv6_prefix_len)
        if self.rate_per_s is not None:
            decision = await self.store.take(
                self._bucket(scope, client), rate_per_s=self.rate_per_s, burst=self.burst
            )
            if not decision.allowed:
                await self._refuse(scope, send, client, "rate", decision.retry_after_s)
                return
        if scope["type"] == "http":
            counter, limit, reason = self._in_flight, self.max_concurrent_per_ip, _TOO_MANY_HTTP
        else:
            counter, limit, reason = self._websockets, self.max_websockets_per_ip, _TOO_MANY_WS
        if limit is None:
            await self.app(scope, receive, send)
            return
        if not counter.acquire(client, limit):
            await self._refuse(scope, send, client, reason, 1.0)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            counter.release(client)

    def _bucket(self, scope: Scope, client: str) -> str:
        if self.key == "ip":
            return client
        route = self.route if self.route is not None else scope.get("root_path", "")
        return f"{client} {route}"

    async def _refuse(
        self, scope: Scope, send: Send, client: str, reason: str, retry_after_s: float
    ) -> None:
        logger.info(
            "rate limited: client=%s path=%s reason=%s", client, scope.get("path", ""), reason
        )
        text = "429 Too Many Requests" if reason == "rate" else f"429 Too Many Requests: {reason}"
        retry_after = str(retry_after_seconds(retry_after_s)).encode()
        await send_text(scope, send, 429, text, headers=[(b"retry-after", retry_after)])
