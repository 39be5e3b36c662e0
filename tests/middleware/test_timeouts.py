"""Request deadlines: the pure decision, the timer in memory, a real proxy over sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway import ReverseProxy
from gateway.middleware.timeouts import (
    FLOW_EXTENSION,
    TimeoutsMiddleware,
    check_deadlines,
    has_request_body,
)
from gateway.responses import status_text
from tests.servers import (
    Backend,
    eventually,
    parse_response,
    plain_config,
    raw_exchange,
    run_server,
)

# The pure decision --------------------------------------------------------------------------


def test_no_deadlines_means_nothing_to_watch() -> None:
    assert check_deadlines(100.0, body_deadline=None, request_deadline=None) == (None, None)


def test_the_next_deadline_is_the_earlier_one() -> None:
    assert check_deadlines(100.0, body_deadline=105.0, request_deadline=110.0) == (None, 105.0)
    assert check_deadlines(100.0, body_deadline=None, request_deadline=110.0) == (None, 110.0)
    assert check_deadlines(100.0, body_deadline=112.0, request_deadline=110.0) == (None, 110.0)


@pytest.mark.parametrize(
    ("body", "whole", "status"),
    [
        (100.0, None, 408),
        (None, 100.0, 504),
        (99.0, 100.0, 408),  # the body wait expired first
        (100.0, 99.0, 504),
        (99.0, 120.0, 408),
    ],
)
def test_a_passed_deadline_decides_the_status(
    body: float | None, whole: float | None, status: int
) -> None:
    assert check_deadlines(100.0, body_deadline=body, request_deadline=whole) == (status, None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], False),
        ([(b"content-length", b"0")], False),
        ([(b"content-length", b"10")], True),
        ([(b"transfer-encoding", b"chunked")], True),
    ],
)
def test_has_request_body(headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert has_request_body(headers) is expected
    assert has_request_body(headers, "1.0") is expected


def test_an_http2_request_without_content_length_may_have_a_body() -> None:
    # HTTP/2 and 3 end a body with the stream: no header announces it.
    assert has_request_body([], "2") is True
    assert has_request_body([], "3") is True
    assert has_request_body([(b"content-length", b"0")], "2") is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"body_timeout_s": 0},
        {"body_timeout_s": -1},
        {"request_timeout_s": "5"},
        {"body_timeout_s": True},
    ],
)
def test_bad_timeouts_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TimeoutsMiddleware(Ok(), **kwargs)


# The timer in memory ------------------------------------------------------------------------


class Ok:
    """Reads the whole body, then answers 200."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def http_scope(*headers: tuple[bytes, bytes]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}


async def test_without_a_body_or_for_websockets_nothing_is_wrapped() -> None:
    seen: list[tuple[Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        pass

    middleware = TimeoutsMiddleware(app, body_timeout_s=1)
    await middleware(http_scope(), receive, send)
    await middleware({"type": "websocket", "headers": []}, receive, send)
    await TimeoutsMiddleware(app, request_timeout_s=1)({"type": "lifespan"}, receive, send)
    assert seen == [(receive, send)] * 3


async def test_a_fast_upload_arms_one_timer_not_one_per_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        timers.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    chunks = 200

    async def receive() -> Message:
        nonlocal chunks
        await asyncio.sleep(0)
        chunks -= 1
        return {"type": "http.request", "body": b"x", "more_body": chunks > 0}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = TimeoutsMiddleware(Ok(), body_timeout_s=5, request_timeout_s=10)
    await middleware(http_scope((b"transfer-encoding", b"chunked")), receive, send)
    assert sent[0]["status"] == 200
    assert len(timers) == 1  # the watchdog's tick, armed when the request began
    # Concurrent requests share the tick: the one timer is still pending.
    chunks = 200
    await asyncio.gather(
        *(middleware(http_scope(), receive, send) for _ in range(20)),
        middleware(http_scope((b"transfer-encoding", b"chunked")), receive, send),
    )
    assert len(timers) == 1


async def test_waiting_for_a_disconnect_after_the_body_is_not_timed() -> None:
    async def watcher(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the whole body
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    messages = [{"type": "http.request", "body": b"x"}, {"type": "http.disconnect"}]

    async def receive() -> Message:
        if len(messages) == 1:
            await asyncio.sleep(0.3)  # three body timeouts of silence
        return messages.pop(0)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = TimeoutsMiddleware(watcher, body_timeout_s=0.1)
    await middleware(http_scope((b"content-length", b"1")), receive, send)
    assert sent[0]["status"] == 200


async def test_a_cancellation_from_outside_is_not_swallowed() -> None:
    started = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await asyncio.sleep(10)

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    middleware = TimeoutsMiddleware(app, request_timeout_s=5)
    task = asyncio.create_task(middleware(http_scope(), receive, send))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class Flow:
    """The ``gateway.flow`` extension's object: ``write_paused`` as the server sets it."""

    def __init__(self, paused: bool) -> None:
        self.write_paused = paused


def get_scope(flow: Flow | None = None) -> Scope:
    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    if flow is not None:
        scope["extensions"] = {FLOW_EXTENSION: {"flow": flow}}
    return scope


@pytest.mark.parametrize("flow", [None, Flow(paused=True)], ids=["no-extension", "paused"])
async def test_a_send_that_waits_past_the_send_deadline_is_cut(flow: Flow | None) -> None:
    """Only the send deadline to keep (no body, no request deadline): it is watched while
    a piece of the body waits for the client, and cuts the response past it."""
    cancelled = asyncio.Event()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("more_body"):
            await asyncio.sleep(10)  # a client that stopped reading

    async def big(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        except asyncio.CancelledError:
            cancelled.set()
            raise
        await send({"type": "http.response.body", "body": b""})  # never reached

    middleware = TimeoutsMiddleware(big, body_timeout_s=5, send_timeout_s=0.2)
    await asyncio.wait_for(middleware(get_scope(flow), receive_nothing, send), 5)
    assert cancelled.is_set()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


async def test_while_the_client_takes_the_response_nothing_is_watched() -> None:
    """With the server's flow control in the scope, sends that cannot wait are not timed:
    the watchdog holds nothing during them (no set insertion, no clock read)."""
    middleware = TimeoutsMiddleware(Ok(), body_timeout_s=5, send_timeout_s=0.2)
    watched: list[int] = []

    async def send(message: Message) -> None:
        watched.append(len(middleware.watchdog))

    await middleware(get_scope(Flow(paused=False)), receive_nothing, send)
    await middleware(get_scope(), receive_nothing, send)  # no extension: the body is timed
    assert watched == [0, 0, 0, 1]


async def test_an_outside_cancellation_of_a_waiting_send_is_not_swallowed() -> None:
    waiting = asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            waiting.set()
            await asyncio.sleep(10)

    middleware = TimeoutsMiddleware(Ok(), body_timeout_s=5, send_timeout_s=5)
    task = asyncio.create_task(middleware(get_scope(Flow(paused=True)), receive_nothing, send))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(middleware.watchdog) == 0


async def receive_nothing() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


# Through a real proxy over sockets ----------------------------------------------------------


@contextlib.asynccontextmanager
async def timed_gateway(backend: Backend, **timeouts: Any) -> AsyncIterator[int]:
    proxy = ReverseProxy(f"http://127.0.0.1:{backend.port}")
    try:
        async with run_server(plain_config(TimeoutsMiddleware(proxy, **timeouts))) as port:
            yield port
    finally:
        await proxy.aclose()


async def test_a_stalled_body_gets_408_and_the_backend_sees_a_disconnect(
    backend: Backend,
) -> None:
    async with timed_gateway(backend, body_timeout_s=0.3) as port:
        # Headers announcing 100 bytes, then silence; the server closes after the 408.
        head = b"POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nonly-this"
        started = asyncio.get_running_loop().time()
        raw = await raw_exchange(port, head, timeout=5)
        elapsed = asyncio.get_running_loop().time() - started
        await eventually(lambda: backend.disconnects == 1)
    status, headers, content = parse_response(raw)
    assert status == 408
    assert ("connection", "close") in headers
    assert ("content-type", "text/plain; charset=utf-8") in headers
    assert content == f"{status_text(408)}\n".encode()
    assert 0.3 <= elapsed < 3
    assert backend.requests == []


async def test_a_slow_but_steady_upload_is_not_a_timeout(backend: Backend) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(8):  # 0.8 s in all, never 0.4 s of silence
            await asyncio.sleep(0.1)
            yield b"a" * 1000

    async with (
        timed_gateway(backend, body_timeout_s=0.4) as port,
        httpx.AsyncClient() as client,
    ):
        response = await client.post(f"http://127.0.0.1:{port}/echo", content=trickle())
    assert response.status_code == 200
    assert response.json()["body_bytes"] == 8000


async def test_a_request_past_its_deadline_gets_504(backend: Backend) -> None:
    async with (
        timed_gateway(backend, request_timeout_s=0.3) as port,
        httpx.AsyncClient() as client,
    ):
        response = await client.get(f"http://127.0.0.1:{port}/slow/1")
        fast = await client.get(f"http://127.0.0.1:{port}/echo")
    assert response.status_code == 504
    assert response.headers["connection"] == "close"
    assert response.text == f"{status_text(504)}\n"
    assert fast.status_code == 200


async def test_past_the_deadline_a_started_response_is_cut_and_the_app_cancelled() -> None:
    cancelled = asyncio.Event()

    async def stalls(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = TimeoutsMiddleware(stalls, request_timeout_s=0.3)
    async with run_server(plain_config(app, log_level="critical")) as port:
        status, _, content = parse_response(
            await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", timeout=5)
        )
    assert status == 200
    assert content == b"7\r\npartial\r\n"  # chunked, never terminated: the client knows
    assert cancelled.is_set()
