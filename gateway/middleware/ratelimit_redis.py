"""Token buckets in Redis, so that several gateway replicas share one budget per client.

Each bucket is a Redis hash (``tokens``, ``last``) updated by one Lua script, which Redis
runs atomically: two replicas taking from the same bucket at the same instant cannot
both spend its last token.  The script reads the time from Redis (``TIME``), so the
replicas' clocks need not agree, and sets an expiry at the moment the bucket would be
full again - an expired bucket and a full one are the same thing - so Redis memory
follows the number of recently active clients.

When Redis cannot be reached (connection refused, timeout, error reply) the store
**fails open to local limits**: requests are decided by a per-process ``MemoryStore``
as if this replica were alone, a warning is logged, and Redis is tried again after
``retry_interval_s`` (so an outage costs each request no connect timeout).  An outage
of the shared store should not take the site down with it, and a flooding client is
still slowed by every replica.  With ``fail_open=False`` every request is refused with
429 until Redis answers again.

Needs ``redis>=5`` (redis-py's asyncio client), an optional dependency of the gateway, and a
Redis server 5 or later (scripts that read ``TIME`` before writing).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway import redaction
from gateway.logs import get_logger
from gateway.middleware.ratelimit import Decision, MemoryStore

__all__ = ["TOKEN_BUCKET_LUA", "RedisStore"]

logger = get_logger("gateway.ratelimit")

# KEYS[1] bucket; ARGV[1] rate per second, ARGV[2] burst.  Returns {allowed, retry_after_s}.
# The same arithmetic as ``gateway.middleware.ratelimit.take``.  Numbers go back as strings:
# Redis would truncate a Lua number to an integer.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = burst
  last = now
end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(retry)}
"""  # noqa: S105 - a script, not a password


def redact_url(url: str) -> str:
    """``url`` without its credentials, for logs and ``repr`` (``gateway.redaction``)."""
    return redaction.redact_url(url)


class RedisStore:
    """Token buckets in Redis at ``url`` (``redis://[:password@]host:port/db``, ``rediss://``).

    Replicas share buckets when they use the same URL and ``prefix``.  Call ``aclose()``
    at shutdown.  See the module docstring for what happens when Redis is down.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gateway:ratelimit:",
        # Failure handling
        timeout_s: float = 0.5,
        fail_open: bool = True,
        retry_interval_s: float = 5.0,
    ) -> None:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"url: {redact_url(url)!r} is not a redis://, rediss:// or unix:// URL"
            )
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be positive, got {timeout_s!r}")
        if not retry_interval_s >= 0:
            raise ValueError(f"retry_interval_s: must not be negative, got {retry_interval_s!r}")
        self.url = url
        self.prefix = prefix
        self.fail_open = fail_open
        self.retry_interval_s = retry_interval_s
        # One immediate retry replaces a pooled connection that died with a restart;
        # longer outages are handled below, not by retrying inside a request.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._script = self._client.register_script(TOKEN_BUCKET_LUA)
        self._fallback = MemoryStore()
        self._down_until = 0.0

    def __repr__(self) -> str:
        return f"RedisStore({redact_url(self.url)!r}, prefix={self.prefix!r})"

    async def take(self, key: str, *, rate_per_s: float, burst: int) -> Decision:
        """Take a token from the shared bucket, or decide locally while Redis is down."""
        now = time.monotonic()
        if now >= self._down_until:
            try:
                allowed, retry = await self._script(
                    keys=[self.prefix + key], args=[repr(float(rate_per_s)), burst]
                )
                return Decision(bool(int(allowed)), float(retry))
            except Exception as exc:  # any store failure: decide without the store
                self._store_failed(exc)
        if self.fail_open:
            return await self._fallback.take(key, rate_per_s=rate_per_s, burst=burst)
        return Decision(False, max(self._down_until - time.monotonic(), 0.0))

    def _store_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if now >= self._down_until:  # once per outage, not once per waiting request
            logger.warning(
                "rate limit store %s unreachable (%s: %s); %s for %.0f s",
                redact_url(self.url),
                type(exc).__name__,
                exc,
                "limiting per replica" if self.fail_open else "refusing requests",
                self.retry_interval_s,
            )
        self._down_until = now + self.retry_interval_s

    async def aclose(self) -> None:
        """Close the connections to Redis."""
        await self._client.aclose()
