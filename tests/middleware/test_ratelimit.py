"""Rate and connection limits: bucket arithmetic, stores, middleware, real sockets, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.middleware.ratelimit import (
    MemoryStore,
    RateLimitMiddleware,
    client_key,
    retry_after_seconds,
    take,
)
from tests.middleware import asgi
from tests.middleware.asgi import gateway_with
from tests.middleware.redis_fixture import RedisServer, redis_server, refusing_port
from tests.proxy.ws_servers import ws_backend
from tests.servers import Backend

# The pure arithmetic --------------------------------------------------------------------------


def test_a_full_bucket_allows_burst_requests_back_to_back() -> None:
    tokens, results = 3.0, []
    for _ in range(4):
        allowed, tokens, retry = take(tokens, 100.0, 100.0, rate=2.0, burst=3)
        results.append((allowed, tokens, retry))
    assert results == [(True, 2.0, 0.0), (True, 1.0, 0.0), (True, 0.0, 0.0), (False, 0.0, 0.5)]


def test_the_bucket_refills_at_rate_up_to_burst() -> None:
    assert take(0.0, 10.0, 10.25, rate=2.0, burst=3) == (False, 0.5, 0.25)
    assert take(0.0, 10.0, 10.5, rate=2.0, burst=3) == (True, 0.0, 0.0)
    assert take(0.0, 10.0, 1000.0, rate=2.0, burst=3) == (True, 2.0, 0.0)  # capped at burst


def test_a_clock_going_backwards_refills_nothing() -> None:
    assert take(0.5, 10.0, 9.0, rate=1.0, burst=1) == (False, 0.5, 0.5)


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, 1), (0.01, 1), (1.0, 1), (1.0001, 2), (2.0, 2), (59.5, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: int) -> None:
    assert retry_after_seconds(seconds) == header


@pytest.mark.parametrize(
    ("address", "prefix", "key"),
    [
        ("192.0.2.1", 64, "192.0.2.1"),
        ("::ffff:192.0.2.1", 64, "192.0.2.1"),
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa::1", 128, "2001:db8:1:2:aaaa::1"),
        ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
        ("not-an-address", 64, "not-an-address"),
    ],
)
def test_client_keys_group_ipv6_by_prefix(address: str, prefix: int, key: str) -> None:
    assert client_key(address, prefix) == key


# The memory store -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_store_buckets_are_per_key_and_refill() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    answers = [(await store.take("a", rate_per_s=1.0, burst=2)).allowed for _ in range(3)]
    assert answers == [True, True, False]
    assert (await store.take("b", rate_per_s=1.0, burst=2)).allowed
    refused = await store.take("a", rate_per_s=1.0, burst=2)
    assert refused.retry_after_s == pytest.approx(1.0)
    clock.now += 1.0
    assert (await store.take("a", rate_per_s=1.0, burst=2)).allowed


async def test_memory_store_forgets_buckets_that_have_refilled() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    for index in range(50):
        await store.take(f"client-{index}", rate_per_s=10.0, burst=5)
    assert len(store) == 50
    clock.now += 0.05  # half a token back: not yet full
    await store.take("late", rate_per_s=10.0, burst=5)
    assert len(store) == 51
    clock.now += 1.0  # everyone is full again
    await store.take("later", rate_per_s=10.0, burst=5)
    assert len(store) == 1


async def test_memory_store_stays_bounded_under_an_address_flood() -> None:
    store = MemoryStore(max_buckets=100, clock=Clock())
    for index in range(10_000):
        store.take_now(f"198.51.{index // 256}.{index % 256}", rate_per_s=0.001, burst=1)
    assert len(store) == 100
    # The most recent clients are the ones still limited.
    assert not store.take_now("198.51.39.15", rate_per_s=0.001, burst=1).allowed


def test_memory_store_validates_its_size() -> None:
    with pytest.raises(ValueError, match="max_buckets"):
        MemoryStore(max_buckets=0)


# The middleware in memory ---------------------------------------------------------------------


class App:
    """Records scopes; ``hold`` keeps each call open until set, ``fail`` raises."""

    def __init__(self, *, fail: bool = False) -> None:
        self.scopes: list[Scope] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.fail = fail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        await self.hold.wait()
        if self.fail:
            raise RuntimeError("app failed")


async def run(app: ASGIApp, scope: Scope) -> list[Message]:
    return await asgi.run(app, scope, {"type": "http.disconnect"})


def make_scope(kind: str = "http", peer: str | None = "203.0.113.5", **extra: Any) -> Scope:
    scope: Scope = {"type": kind, "path": "/", "headers": [], **extra}
    scope["client"] = (peer, 5000) if peer is not None else None
    if kind == "websocket":
        scope["extensions"] = {"websocket.http.response": {}}
    return scope


def status_of(sent: list[Message]) -> int | None:
    return sent[0]["status"] if sent else None


async def test_an_empty_bucket_answers_429_with_retry_after_and_skips_the_app() -> None:
    inner = App()
    middleware = RateLimitMiddleware(inner, rate_per_s=0.25, burst=2)
    assert [status_of(await run(middleware, make_scope())) for _ in range(2)] == [None, None]
    sent = await run(middleware, make_scope())
    assert sent[0]["status"] == 429
    headers = dict(sent[0]["headers"])
    assert headers[b"retry-after"] == b"4"
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert sent[1]["body"] == b"429 Too Many Requests\n"
    assert len(inner.scopes) == 2
    # WebSocket handshakes spend from the same bucket and are refused the same way.
    ws = await run(middleware, make_scope("websocket"))
    assert [ws[0]["type"], ws[0]["status"]] == ["websocket.http.response.start", 429]


async def test_clients_and_routes_have_their_own_buckets() -> None:
    inner = App()
    middleware = RateLimitMiddleware(inner, rate_per_s=0.01, burst=1, key="ip+route")
    assert status_of(await run(middleware, make_scope(root_path="/a"))) is None
    assert status_of(await run(middleware, make_scope(root_path="/a"))) == 429
    assert status_of(await run(middleware, make_scope(root_path="/b"))) is None
    assert status_of(await run(middleware, make_scope(peer="203.0.113.6", root_path="/a"))) is None
    fixed = RateLimitMiddleware(inner, rate_per_s=0.01, burst=1, key="ip+route", route="api")
    assert status_of(await run(fixed, make_scope(root_path="/a"))) is None
    assert status_of(await run(fixed, make_scope(root_path="/b"))) == 429


async def test_ipv6_clients_share_a_bucket_per_64() -> None:
    middleware = RateLimitMiddleware(App(), rate_per_s=0.01, burst=1)
    assert status_of(await run(middleware, make_scope(peer="2001:db8::1"))) is None
    assert status_of(await run(middleware, make_scope(peer="2001:db8::2"))) == 429
    assert status_of(await run(middleware, make_scope(peer="2001:db8:0:1::1"))) is None


async def test_requests_without_a_client_address_and_other_scopes_are_not_limited() -> None:
    inner = App()
    middleware = RateLimitMiddleware(inner, rate_per_s=0.01, burst=1)
    for _ in range(3):
        assert await run(middleware, make_scope(peer=None)) == []
    assert await run(middleware, {"type": "lifespan"}) == []
    assert len(inner.scopes) == 4


async def test_in_flight_slots_are_released_when_the_app_returns_or_fails() -> None:
    inner = App()
    inner.hold.clear()
    middleware = RateLimitMiddleware(inner, rate_per_s=100, burst=100, max_concurrent_per_ip=2)
    first = asyncio.create_task(run(middleware, make_scope()))
    second = asyncio.create_task(run(middleware, make_scope()))
    await asyncio.sleep(0.01)
    third = await run(middleware, make_scope())
    assert third[0]["status"] == 429
    assert dict(third[0]["headers"])[b"retry-after"] == b"1"
    assert third[1]["body"] == b"429 Too Many Requests: too many concurrent requests\n"
    other_client = asyncio.create_task(run(middleware, make_scope(peer="203.0.113.9")))
    await asyncio.sleep(0.01)
    assert len(inner.scopes) == 3  # another client is not held back
    inner.hold.set()
    assert list(await asyncio.gather(first, second, other_client)) == [[], [], []]
    inner.fail = True
    for _ in range(3):  # a failing app frees its slot too
        with pytest.raises(RuntimeError):
            await run(middleware, make_scope())
    inner.fail = False
    assert status_of(await run(middleware, make_scope())) is None


async def test_websocket_sessions_are_counted_apart_from_http() -> None:
    inner = App()
    inner.hold.clear()
    middleware = RateLimitMiddleware(
        inner, rate_per_s=100, burst=100, max_concurrent_per_ip=1, max_websockets_per_ip=1
    )
    session = asyncio.create_task(run(middleware, make_scope("websocket")))
    await asyncio.sleep(0.01)
    refused = await run(middleware, make_scope("websocket"))
    assert refused[0]["status"] == 429
    assert refused[1]["body"] == b"429 Too Many Requests: too many WebSocket sessions\n"
    request = asyncio.create_task(run(middleware, make_scope()))  # HTTP has its own count
    inner.hold.set()
    assert await request == []
    await session
    assert status_of(await run(middleware, make_scope("websocket"))) is None


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"rate_per_s": float("nan")}, "rate_per_s"),
        ({"burst": 0}, "burst"),
        ({"burst": 2.5}, "burst"),
        ({"key": "route"}, "key"),
        ({"max_concurrent_per_ip": 0}, "max_concurrent_per_ip"),
        ({"max_websockets_per_ip": -1}, "max_websockets_per_ip"),
        ({"ipv6_prefix_len": 129}, "ipv6_prefix_len"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies"),
    ],
)
def test_bad_options_are_errors_naming_the_key(options: dict[str, Any], key: str) -> None:
    arguments: dict[str, Any] = {"rate_per_s": 1.0, "burst": 1, **options}
    with pytest.raises(ValueError, match=f"^{key}: "):
        RateLimitMiddleware(App(), **arguments)


# Over real sockets ----------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def assert_429(response: httpx.Response, text: str, retry_after: str) -> None:
    assert response.status_code == 429
    assert response.headers["retry-after"] == retry_after
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == str(len(text.encode()))
    assert response.text == text


async def test_burst_then_429_with_retry_after(backend: Backend, http: httpx.AsyncClient) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return RateLimitMiddleware(app, rate_per_s=0.5, burst=2)

    async with gateway_with(wrap, backend) as url:
        responses = [await http.get(f"{url}/echo/{index}") for index in range(3)]
        # A spoofed X-Forwarded-For from an untrusted peer does not buy a fresh bucket.
        spoofed = await http.get(f"{url}/echo/spoofed", headers={"X-Forwarded-For": "192.0.2.1"})
    assert [response.status_code for response in responses[:2]] == [200, 200]
    assert_429(responses[2], "429 Too Many Requests\n", "2")
    assert_429(spoofed, "429 Too Many Requests\n", "2")
    assert [record["raw_path"] for record in backend.requests] == ["/echo/0", "/echo/1"]


async def test_trusted_proxy_clients_have_their_own_buckets(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return RateLimitMiddleware(app, rate_per_s=0.01, burst=1, trusted_proxies=["127.0.0.1"])

    async with gateway_with(wrap, backend) as url:
        codes = [
            (await http.get(f"{url}/echo", headers={"X-Forwarded-For": client})).status_code
            for client in ("192.0.2.1", "192.0.2.2", "192.0.2.1")
        ]
    assert codes == [200, 200, 429]
    assert len(backend.requests) == 2


async def test_concurrency_limit_with_slow_backend_requests(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return RateLimitMiddleware(app, rate_per_s=100, burst=100, max_concurrent_per_ip=1)

    async with gateway_with(wrap, backend) as url:
        slow = asyncio.create_task(http.get(f"{url}/slow/1"))
        while not backend.requests:
            await asyncio.sleep(0.01)
        refused = await http.get(f"{url}/echo/refused")
        assert (await slow).status_code == 200
        after = await http.get(f"{url}/echo/after")
    assert_429(refused, "429 Too Many Requests: too many concurrent requests\n", "1")
    assert after.status_code == 200
    assert [record["raw_path"] for record in backend.requests] == ["/slow/1", "/echo/after"]


async def test_a_client_that_hangs_up_keeps_its_slot_until_the_backend_is_done(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return RateLimitMiddleware(app, rate_per_s=100, burst=100, max_concurrent_per_ip=1)

    async with gateway_with(wrap, backend) as url:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{url}/slow/1", timeout=0.3)
        refused = await http.get(f"{url}/echo")
        async with asyncio.timeout(5):
            while (await http.get(f"{url}/echo/again")).status_code != 200:
                await asyncio.sleep(0.1)
    assert refused.status_code == 429
    assert [record["raw_path"] for record in backend.requests] == ["/slow/1", "/echo/again"]


async def test_websocket_connection_limit(backend: Backend) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return RateLimitMiddleware(app, rate_per_s=100, burst=100, max_websockets_per_ip=1)

    async with ws_backend() as ws, gateway_with(wrap, backend, ws.url) as url:
        ws_url = url.replace("http:", "ws:") + "/ws"
        async with connect(ws_url) as first:
            await first.send("one")
            assert await first.recv() == "one"
            with pytest.raises(InvalidStatus) as info:
                async with connect(ws_url):
                    pass
        async with asyncio.timeout(5):  # the slot is free once the bridge has closed
            while True:
                try:
                    async with connect(ws_url) as second:
                        await second.send("two")
                        assert await second.recv() == "two"
                    break
                except InvalidStatus:
                    await asyncio.sleep(0.05)
    response: Any = info.value.response
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.body == b"429 Too Many Requests: too many WebSocket sessions\n"
    assert len(ws.handshakes) == 2  # the refused handshake never reached the backend
    assert ws.messages == ["one", "two"]


# Shared limits in Redis -------------------------------------------------------------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    pytest.importorskip("redis")
    with redis_server(tmp_path) as server:
        yield server


@contextlib.asynccontextmanager
async def redis_store(url: str, **options: Any) -> AsyncIterator[Any]:
    from gateway.middleware.ratelimit_redis import RedisStore

    store = RedisStore(url, **options)
    try:
        yield store
    finally:
        await store.aclose()


async def test_redis_bucket_arithmetic_and_expiry(redis: RedisServer) -> None:
    import redis.asyncio as redis_client

    async with redis_store(redis.url, prefix="t:") as store:
        first = await store.take("a", rate_per_s=10.0, burst=1)
        second = await store.take("a", rate_per_s=10.0, burst=1)
        other = await store.take("b", rate_per_s=10.0, burst=1)
        await asyncio.sleep(0.12)
        third = await store.take("a", rate_per_s=10.0, burst=1)
    assert (first.allowed, second.allowed, other.allowed, third.allowed) == (
        True,
        False,
        True,
        True,
    )
    assert 0 < second.retry_after_s <= 0.1  # a token refills in 0.1 s at 10/s
    client = redis_client.Redis.from_url(redis.url)
    try:
        ttl_ms = await client.pttl("t:a")
        keys = sorted(await client.keys("*"))
    finally:
        await client.aclose()
    assert 0 < ttl_ms <= 1100  # gone once it would be full again (0.1 s) plus a second
    assert keys == [b"t:a", b"t:b"]


async def test_two_replicas_share_the_budget_through_redis(
    redis: RedisServer, backend: Backend, http: httpx.AsyncClient
) -> None:
    async with redis_store(redis.url) as store_a, redis_store(redis.url) as store_b:

        def replica(store: Any) -> Callable[[ASGIApp], ASGIApp]:
            return lambda app: RateLimitMiddleware(app, rate_per_s=0.01, burst=3, store=store)

        async with (
            gateway_with(replica(store_a), backend) as url_a,
            gateway_with(replica(store_b), backend) as url_b,
        ):
            responses = [
                await http.get(f"{url}/echo/{index}")
                for index, url in enumerate([url_a, url_b, url_a, url_b, url_a])
            ]
    assert [response.status_code for response in responses] == [200, 200, 200, 429, 429]
    # 0.01 token/s: the fourth token is 100 s away, less what refilled while the test ran.
    retry_after = responses[3].headers["retry-after"]
    assert_429(responses[3], "429 Too Many Requests\n", retry_after)
    assert 90 <= int(retry_after) <= 100
    assert [record["raw_path"] for record in backend.requests] == ["/echo/0", "/echo/1", "/echo/2"]


async def test_redis_down_fails_open_to_local_limits_with_a_warning(
    backend: Backend, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with refusing_port() as port:
        url = f"redis://:hunter2@127.0.0.1:{port}/0"
        async with redis_store(url, retry_interval_s=60) as store:
            codes = await three_requests(backend, http, store, caplog)
    assert codes == [200, 200, 429]  # each replica still limits on its own
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1  # not one per request: Redis is retried after the interval
    message = warnings[0].getMessage()
    assert "unreachable" in message
    assert "limiting per replica" in message
    assert "hunter2" not in message
    assert "redis://***@127.0.0.1" in message


async def three_requests(
    backend: Backend, http: httpx.AsyncClient, store: Any, caplog: pytest.LogCaptureFixture
) -> list[int]:
    """Status codes of three requests through a gateway limiting to burst 2 with ``store``."""

    def wrap(app: ASGIApp) -> ASGIApp:
        return RateLimitMiddleware(app, rate_per_s=0.01, burst=2, store=store)

    with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
        async with gateway_with(wrap, backend) as gateway_url:
            return [(await http.get(f"{gateway_url}/echo")).status_code for _ in range(3)]


async def test_redis_lost_mid_way_keeps_serving(
    redis: RedisServer,
    backend: Backend,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with redis_store(redis.url) as store:

        def wrap(app: ASGIApp) -> ASGIApp:
            return RateLimitMiddleware(app, rate_per_s=0.01, burst=5, store=store)

        with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
            async with gateway_with(wrap, backend) as url:
                before = (await http.get(f"{url}/echo")).status_code
                assert caplog.records == []
                redis.stop()
                after = (await http.get(f"{url}/echo")).status_code
    assert (before, after) == (200, 200)
    assert len(backend.requests) == 2
    assert ["unreachable" in record.getMessage() for record in caplog.records] == [True]


async def test_redis_down_fails_closed_when_asked(
    backend: Backend, http: httpx.AsyncClient
) -> None:
    with refusing_port() as port:
        url = f"redis://127.0.0.1:{port}/0"
        async with redis_store(url, fail_open=False, retry_interval_s=7) as store:

            def wrap(app: ASGIApp) -> ASGIApp:
                return RateLimitMiddleware(app, rate_per_s=100, burst=100, store=store)

            async with gateway_with(wrap, backend) as gateway_url:
                response = await http.get(f"{gateway_url}/echo")
    assert_429(response, "429 Too Many Requests\n", "7")
    assert backend.requests == []


def test_redis_store_configuration_is_checked_and_redacted() -> None:
    from gateway.middleware.ratelimit_redis import RedisStore, redact_url

    with pytest.raises(ValueError, match=r"^url: 'http://"):
        RedisStore("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match=r"^timeout_s: "):
        RedisStore("redis://127.0.0.1:6379", timeout_s=0)
    assert redact_url("redis://user:pw@host:1/0") == "redis://***@host:1/0"
    assert redact_url("redis://host:1/0") == "redis://host:1/0"
