"""Request size limits: the pure decision, the body counter in memory, a real proxy."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway import ReverseProxy
from gateway.middleware.limits import (
    RequestLimits,
    RequestLimitsMiddleware,
    declared_body_bytes,
    head_refusal,
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

LIMITS = RequestLimits(
    max_body_bytes=1000, max_header_count=5, max_header_bytes=200, max_url_bytes=50
)


def refusal(headers: list[tuple[bytes, bytes]], target_bytes: int = 10) -> int | None:
    result = head_refusal(LIMITS, headers=headers, target_bytes=target_bytes)
    return None if result is None else result[0]


def test_a_request_within_every_limit_passes() -> None:
    headers = [(b"host", b"h"), (b"content-length", b"1000")]
    assert refusal(headers, target_bytes=50) is None


def test_url_over_the_limit_is_414() -> None:
    assert head_refusal(LIMITS, headers=[], target_bytes=51) == (414, "URL of 51 bytes")


def test_too_many_header_fields_is_431() -> None:
    assert refusal([(b"x", b"1")] * 5) is None
    assert head_refusal(LIMITS, headers=[(b"x", b"1")] * 6, target_bytes=0) == (
        431,
        "6 header fields",
    )


def test_header_bytes_count_name_value_and_separators() -> None:
    just_fits = [(b"x", b"v" * 195)]  # 1 + 195 + len(": \r\n")
    assert refusal(just_fits) is None
    assert refusal([(b"x", b"v" * 196)]) == 431


def test_declared_body_over_the_limit_is_413() -> None:
    assert refusal([(b"content-length", b"1001")]) == 413
    assert head_refusal(RequestLimits(max_body_bytes=None), headers=[], target_bytes=0) is None
    unlimited = RequestLimits(max_body_bytes=None)
    assert head_refusal(unlimited, headers=[(b"content-length", b"10000")], target_bytes=0) is None


def test_the_url_is_judged_first_then_headers_then_the_body() -> None:
    flood = [(b"content-length", b"99999")] * 6
    assert refusal(flood, target_bytes=99) == 414
    assert refusal(flood) == 431


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], 0),
        ([(b"content-length", b"12")], 12),
        ([(b"transfer-encoding", b"chunked")], None),
        ([(b"content-length", b"12"), (b"transfer-encoding", b"chunked")], None),
        ([(b"content-length", b"twelve")], None),
    ],
)
def test_declared_body_bytes(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert declared_body_bytes(headers) == expected


def test_an_http2_body_without_content_length_is_not_announced() -> None:
    # Counted as it streams (None), not taken for "no body" as in HTTP/1.1.
    assert declared_body_bytes([], "2") is None
    assert declared_body_bytes([], "1.1") == 0
    assert declared_body_bytes([(b"content-length", b"12")], "2") == 12


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_body_bytes": -1}, "max_body_bytes"),
        ({"max_header_count": 1.5}, "max_header_count"),
        ({"max_header_bytes": None}, "max_header_bytes"),
        ({"max_url_bytes": True}, "max_url_bytes"),
    ],
)
def test_bad_limits_are_configuration_errors(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        RequestLimits(**kwargs)


# The body counter in memory -----------------------------------------------------------------


def chunked_scope() -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"transfer-encoding", b"chunked")],
    }


def feeder(*chunks: bytes) -> Receive:
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


class Reader:
    """An app that may start its response first, then reads the body and answers."""

    def __init__(self, *, respond_first: bool = False) -> None:
        self.respond_first = respond_first
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": []}
        if self.respond_first:
            await send(start)
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if not self.respond_first:
            await send(start)
        await send({"type": "http.response.body", "body": b"done"})


async def run_chunked(app: Reader, *chunks: bytes, limit: int) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = RequestLimitsMiddleware(app, max_body_bytes=limit)
    await middleware(chunked_scope(), feeder(*chunks), send)
    return sent


async def test_a_chunked_body_within_the_limit_passes_untouched() -> None:
    app = Reader()
    sent = await run_chunked(app, b"a" * 5, b"b" * 5, limit=10)
    assert [message.get("body") for message in app.received] == [b"a" * 5, b"b" * 5, b""]
    assert sent[0]["status"] == 200


async def test_crossing_the_limit_answers_413_and_the_app_sees_a_disconnect() -> None:
    app = Reader()
    sent = await run_chunked(app, b"a" * 6, b"b" * 6, b"never read", limit=10)
    assert app.received == [
        {"type": "http.request", "body": b"a" * 6, "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert sent[0]["status"] == 413
    assert sent[1]["body"] == f"{status_text(413)}\n".encode()
    assert len(sent) == 2  # the app's own 200 was swallowed


async def test_after_the_response_started_crossing_the_limit_only_cuts_the_app_off() -> None:
    app = Reader(respond_first=True)
    sent = await run_chunked(app, b"a" * 11, limit=10)
    assert app.received == [{"type": "http.disconnect"}]
    assert sent == [{"type": "http.response.start", "status": 200, "headers": []}]


class ClientDisconnect(Exception):
    """What Starlette's ``Request.stream()`` raises on ``http.disconnect``."""


async def test_an_app_raising_about_the_disconnect_after_the_413_is_not_an_error() -> None:
    async def strict(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        raise ClientDisconnect

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await RequestLimitsMiddleware(strict, max_body_bytes=3)(chunked_scope(), feeder(b"abcd"), send)
    assert sent[0]["status"] == 413


async def test_an_app_error_before_the_limit_is_passed_on() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise ClientDisconnect

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    with pytest.raises(ClientDisconnect):
        await RequestLimitsMiddleware(broken, max_body_bytes=3)(chunked_scope(), feeder(), send)


async def test_other_scope_types_pass_through() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    lifespan: Scope = {"type": "lifespan"}
    await RequestLimitsMiddleware(app, max_body_bytes=0)(lifespan, feeder(), send)
    assert seen == [lifespan]


# Through a real proxy over sockets ----------------------------------------------------------


@pytest.fixture
async def gateway_url(backend: Backend) -> AsyncIterator[str]:
    proxy = ReverseProxy(f"http://127.0.0.1:{backend.port}")
    app = RequestLimitsMiddleware(
        proxy, max_body_bytes=100_000, max_header_count=50, max_header_bytes=8192, max_url_bytes=512
    )
    try:
        async with run_server(plain_config(app)) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        await proxy.aclose()


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.text == f"{status_text(status)}\n"


async def test_a_declared_body_over_the_limit_never_reaches_the_backend(
    gateway_url: str, backend: Backend
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{gateway_url}/echo", content=b"x" * 100_001)
        # The connection stays usable: the server skipped the unread body.
        after = await client.post(f"{gateway_url}/echo", content=b"y" * 100_000)
    assert_refused(response, 413)
    assert after.status_code == 200
    assert [record["body_bytes"] for record in backend.requests] == [100_000]


async def body(size: int, chunk: int = 16 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        piece = min(chunk, size - sent)
        sent += piece
        yield b"z" * piece


async def test_a_chunked_body_over_the_limit_is_413_and_the_backend_sees_a_disconnect(
    gateway_url: str, backend: Backend
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{gateway_url}/echo", content=body(400_000))
    assert_refused(response, 413)
    # The proxy had started forwarding; the backend saw its client go away mid-body.
    await eventually(lambda: backend.disconnects == 1)
    assert backend.requests == []


async def test_a_chunked_body_within_the_limit_arrives_whole(
    gateway_url: str, backend: Backend
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{gateway_url}/echo", content=body(100_000))
    assert response.status_code == 200
    assert response.json()["body_sha256"] == hashlib.sha256(b"z" * 100_000).hexdigest()
    assert response.json()["headers"].count(["transfer-encoding", "chunked"]) == 1


async def test_a_header_flood_is_431_before_the_backend(gateway_url: str, backend: Backend) -> None:
    port = int(gateway_url.rsplit(":", 1)[1])
    flood = b"".join(b"X-Flood-%d: %d\r\n" % (n, n) for n in range(200))
    request = b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n" + flood + b"\r\n"
    status, headers, content = parse_response(await raw_exchange(port, request))
    assert status == 431
    assert ("content-type", "text/plain; charset=utf-8") in headers
    assert content == f"{status_text(431)}\n".encode()
    assert backend.requests == []


async def test_oversized_headers_are_431(gateway_url: str, backend: Backend) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{gateway_url}/echo", headers={"Cookie": "c" * 9000})
    assert_refused(response, 431)
    assert backend.requests == []


async def test_a_long_url_is_414(gateway_url: str, backend: Backend) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{gateway_url}/echo", params={"q": "x" * 600})
        fits = await client.get(f"{gateway_url}/echo", params={"q": "x" * 400})
    assert_refused(response, 414)
    assert fits.status_code == 200
    assert len(backend.requests) == 1


async def test_a_websocket_handshake_with_a_header_flood_gets_431() -> None:
    reached: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    limited = RequestLimitsMiddleware(app, max_body_bytes=None, max_header_count=20)
    flood = [(f"X-Flood-{n}", "1") for n in range(30)]
    async with run_server(plain_config(limited)) as port:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{port}/ws", additional_headers=flood):
                pass
    assert info.value.response.status_code == 431
    assert info.value.response.body == f"{status_text(431)}\n".encode()
    assert reached == []
