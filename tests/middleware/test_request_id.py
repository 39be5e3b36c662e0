"""Request id: the pure choice, the middleware in memory, and through a real proxy."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import connect

from gateway import ReverseProxy, WebSocketProxy
from gateway.middleware.request_id import (
    RequestIdMiddleware,
    choose_request_id,
    is_sane_request_id,
    new_request_id,
    replace_header,
)
from tests.conftest import header_values
from tests.middleware import asgi
from tests.proxy.ws_servers import ws_backend
from tests.servers import Backend, plain_config, run_server

HEX32 = re.compile(r"[0-9a-f]{32}")

# The pure decision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"abc",
        b"0f8fad5b-d9cb-469f-a165-70867728950e",
        b"01ARZ3NDEKTSV4RRFFQ69G5FAV",
        b"edge-1:42",
        b"a.b_c",
        b"x" * 128,
    ],
)
def test_sane_ids(value: bytes) -> None:
    assert is_sane_request_id(value)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"x" * 129,
        b"has space",
        b"quote'",
        b'"quoted"',
        b"semi;colon",
        b"new\nline",
        b"tab\t",
        b"caf\xc3\xa9",
        b"<script>",
        b"a,b",
    ],
)
def test_insane_ids(value: bytes) -> None:
    assert not is_sane_request_id(value)


def test_a_sane_incoming_id_is_kept() -> None:
    assert choose_request_id([b"abc-123"], trust_incoming=True) == "abc-123"


@pytest.mark.parametrize(
    ("incoming", "trust"),
    [
        ([], True),
        ([b"bad id"], True),
        ([b"x" * 129], True),
        ([b"one", b"two"], True),  # two ids: neither is the request's
        ([b"abc-123"], False),
    ],
)
def test_otherwise_an_id_is_generated(incoming: list[bytes], trust: bool) -> None:
    assert choose_request_id(incoming, trust_incoming=trust, generator=lambda: "gen-1") == "gen-1"


def test_generated_ids_are_32_hex_characters_and_distinct() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(HEX32.fullmatch(value) for value in ids)


@pytest.mark.parametrize("bad", ["", "with space", "crlf\r\nx-evil: 1", "é"])
def test_a_generator_returning_an_insane_id_is_an_error_not_an_injection(bad: str) -> None:
    with pytest.raises(ValueError, match="request id generator"):
        choose_request_id([], trust_incoming=True, generator=lambda: bad)


def test_replace_header_drops_every_old_value_case_insensitively() -> None:
    headers = [(b"host", b"h"), (b"X-Request-ID", b"old"), (b"x-request-id", b"older")]
    assert replace_header(headers, b"x-request-id", b"new") == [
        (b"host", b"h"),
        (b"x-request-id", b"new"),
    ]


def test_a_bad_header_name_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match=r"^request_id\.header: "):
        RequestIdMiddleware(Recorder(), header="x request id")


# The middleware in memory -------------------------------------------------------------------


class Recorder:
    """An ASGI app that records its scope and answers with a header of its own."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            headers = [(b"x-request-id", b"backend-echo"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.accept"})


async def run(app: Any, scope: Scope) -> list[Message]:
    return await asgi.run(app, scope, {"type": "http.request", "body": b""})


def http_scope(*headers: tuple[bytes, bytes]) -> Scope:
    return {"type": "http", "method": "GET", "path": "/", "headers": list(headers)}


async def test_the_id_goes_to_the_app_the_state_and_the_response() -> None:
    inner = Recorder()
    original = http_scope((b"host", b"h"), (b"x-request-id", b"abc-123"))
    sent = await run(RequestIdMiddleware(inner), original)
    seen = inner.scopes[0]
    assert seen["headers"] == [(b"host", b"h"), (b"x-request-id", b"abc-123")]
    assert seen["state"] is original["state"]  # shared with the layers further out
    assert original["state"] == {"request_id": "abc-123"}
    assert sent[0]["headers"] == [(b"content-length", b"0"), (b"x-request-id", b"abc-123")]


async def test_an_existing_state_dict_is_kept() -> None:
    inner = Recorder()
    scope = http_scope()
    scope["state"] = {"lifespan": "value"}
    await run(RequestIdMiddleware(inner, generator=lambda: "g"), scope)
    assert scope["state"] == {"lifespan": "value", "request_id": "g"}


async def test_untrusted_incoming_ids_are_replaced() -> None:
    inner = Recorder()
    scope = http_scope((b"x-request-id", b"client-chosen"))
    await run(RequestIdMiddleware(inner, trust_incoming=False, generator=lambda: "g"), scope)
    assert inner.scopes[0]["headers"] == [(b"x-request-id", b"g")]


async def test_a_custom_header_name() -> None:
    inner = Recorder()
    scope = http_scope((b"x-correlation-id", b"c-1"))
    sent = await run(RequestIdMiddleware(inner, header="X-Correlation-ID"), scope)
    assert inner.scopes[0]["headers"] == [(b"x-correlation-id", b"c-1")]
    assert (b"x-correlation-id", b"c-1") in sent[0]["headers"]
    assert (b"x-request-id", b"backend-echo") in sent[0]["headers"]  # not ours: untouched


async def test_websocket_handshake_and_accept_carry_the_id() -> None:
    inner = Recorder()
    scope: Scope = {"type": "websocket", "path": "/ws", "headers": []}
    sent = await run(RequestIdMiddleware(inner, generator=lambda: "ws-1"), scope)
    assert inner.scopes[0]["headers"] == [(b"x-request-id", b"ws-1")]
    assert sent == [{"type": "websocket.accept", "headers": [(b"x-request-id", b"ws-1")]}]


async def test_other_scope_types_pass_through_untouched() -> None:
    inner = Recorder()
    scope: Scope = {"type": "lifespan"}
    await run(RequestIdMiddleware(inner), scope)
    assert inner.scopes == [{"type": "lifespan"}]


# Through a real proxy over sockets ----------------------------------------------------------


@pytest.fixture
async def proxy_url(backend: Backend) -> AsyncIterator[str]:
    proxy = ReverseProxy(f"http://127.0.0.1:{backend.port}")
    try:
        async with run_server(plain_config(RequestIdMiddleware(proxy))) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        await proxy.aclose()


async def test_an_incoming_id_reaches_the_backend_and_comes_back(
    proxy_url: str, backend: Backend
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{proxy_url}/echo", headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["trace-42"]
    assert header_values(backend.requests[0], "x-request-id") == ["trace-42"]


@pytest.mark.parametrize(
    "incoming",
    [None, "has spaces", "x" * 129, "a;b=c"],
    ids=["absent", "spaces", "too-long", "odd-characters"],
)
async def test_a_missing_or_insane_id_is_replaced_by_a_generated_one(
    proxy_url: str, backend: Backend, incoming: str | None
) -> None:
    headers = {"X-Request-ID": incoming} if incoming is not None else {}
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{proxy_url}/echo", headers=headers)
    [returned] = response.headers.get_list("x-request-id")
    assert HEX32.fullmatch(returned)
    assert header_values(backend.requests[0], "x-request-id") == [returned]


async def test_each_request_gets_its_own_id(proxy_url: str, backend: Backend) -> None:
    async with httpx.AsyncClient() as client:
        first = await client.get(f"{proxy_url}/echo")
        second = await client.get(f"{proxy_url}/echo")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_websocket_handshake_gets_the_id_both_ways() -> None:
    async with ws_backend() as backend:
        bridge = WebSocketProxy(backend.url)
        app = RequestIdMiddleware(bridge)
        async with run_server(plain_config(app)) as port:
            url = f"ws://127.0.0.1:{port}/ws"
            async with connect(url, additional_headers={"X-Request-ID": "ws-trace-7"}) as ws:
                await ws.send("ping")
                assert await ws.recv() == "ping"
                assert ws.response is not None
                assert ws.response.headers.get_all("x-request-id") == ["ws-trace-7"]
    assert backend.handshakes[0].get("x-request-id") == ["ws-trace-7"]
