"""HTTP forwarding through the gateway over real TLS sockets, one test per contract point."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.types import Message, Receive

from gateway import ReverseProxy
from tests.conftest import GatewayFactory, header_values
from tests.servers import (
    Backend,
    eventually,
    expected_bytes,
    parse_response,
    raw_exchange,
    raw_server,
    read_request_head,
)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def test_get_is_forwarded_with_body_and_status(
    gateway: str, backend: Backend, client: httpx.AsyncClient
) -> None:
    response = await client.get(f"{gateway}/echo/hello?a=1")
    assert response.status_code == 200
    assert response.json()["raw_path"] == "/echo/hello"
    assert response.json()["query"] == "a=1"
    assert len(backend.requests) == 1


async def test_raw_path_and_query_pass_exactly(
    backend: Backend, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    # Dot segments are refused by default (limits.reject_dot_segments); off, they pass too.
    target = b"/a%2Fb/../c/./d//e?x=1&x=2&y=%zz&z"
    upstream = f"http://127.0.0.1:{backend.port}"
    async with gateway_factory(upstream, limits={"reject_dot_segments": False}) as gateway:
        raw = await raw_exchange(
            port_of(gateway),
            b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            client_ssl,
        )
    status, _, _ = parse_response(raw)
    assert status == 200
    seen = backend.requests[0]
    assert seen["raw_path"] + "?" + seen["query"] == target.decode()


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_methods_with_body(
    method: str, gateway: str, backend: Backend, client: httpx.AsyncClient
) -> None:
    body = b"x" * 1000
    response = await client.request(method, f"{gateway}/echo", content=body)
    assert response.status_code == 200
    assert response.json()["method"] == method
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_head_keeps_content_length(
    gateway: str, backend: Backend, client: httpx.AsyncClient
) -> None:
    response = await client.head(f"{gateway}/bytes/12345")
    assert response.status_code == 200
    assert response.headers["content-length"] == "12345"
    assert response.content == b""
    # The connection is still usable afterwards (no body bytes were expected).
    again = await client.get(f"{gateway}/bytes/10")
    assert again.content == expected_bytes(10)


async def test_expect_100_continue(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port_of(gateway), ssl=client_ssl, server_hostname="localhost"
    )
    try:
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        final = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status, _, body = parse_response(final)
    assert status == 200
    assert json.loads(body)["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert not header_values(backend.requests[0], "expect")


async def test_large_streamed_upload_fixed_and_chunked(
    gateway: str, backend: Backend, client: httpx.AsyncClient
) -> None:
    size = 32 * 1024 * 1024
    digest = hashlib.sha256(expected_bytes(size)).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        data = expected_bytes(size)
        for offset in range(0, size, 256 * 1024):
            yield data[offset : offset + 256 * 1024]

    chunked = await client.post(f"{gateway}/echo", content=chunks())
    assert chunked.json()["body_bytes"] == size
    assert chunked.json()["body_sha256"] == digest
    fixed = await client.post(f"{gateway}/echo", content=expected_bytes(size))
    assert fixed.json()["body_sha256"] == digest
    assert header_values(backend.requests[0], "content-length") == []
    assert header_values(backend.requests[1], "content-length") == [str(size)]


@pytest.mark.parametrize("kind", ["bytes", "chunked"])
async def test_large_streamed_download(kind: str, gateway: str, client: httpx.AsyncClient) -> None:
    size = 32 * 1024 * 1024 + 7
    digest = hashlib.sha256()
    received = 0
    async with client.stream("GET", f"{gateway}/{kind}/{size}") as response:
        assert response.status_code == 200
        if kind == "bytes":
            assert response.headers["content-length"] == str(size)
        else:
            assert "content-length" not in response.headers
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(expected_bytes(size)).hexdigest()


async def test_hop_by_hop_request_headers_are_removed(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    await raw_exchange(
        port_of(gateway),
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close, X-Private\r\n"
        b"X-Private: secret\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\n"
        b"Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n",
        client_ssl,
    )
    seen = {name for name, _ in backend.requests[0]["headers"]}
    assert not seen & {"x-private", "keep-alive", "te", "upgrade", "proxy-connection"}
    assert "x-kept" in seen


async def test_hop_by_hop_response_headers_are_removed(
    gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Internal\r\n"
            b"X-Internal: 1\r\nKeep-Alive: timeout=5\r\nX-Public: 1\r\n\r\nok"
        )
        await writer.drain()

    async with raw_server(handler) as port, gateway_factory(f"http://127.0.0.1:{port}") as url:
        response = await client.get(url + "/")
    assert response.text == "ok"
    assert "x-internal" not in response.headers
    assert "keep-alive" not in response.headers
    assert response.headers["x-public"] == "1"


async def test_forwarding_headers_and_host(
    gateway: str, backend: Backend, client: httpx.AsyncClient
) -> None:
    response = await client.get(
        f"{gateway}/echo",
        headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "Host": "public.example"},
    )
    record = response.json()
    assert header_values(record, "host") == ["public.example"]
    assert header_values(record, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(record, "x-real-ip") == ["127.0.0.1"]
    assert header_values(record, "x-forwarded-proto") == ["https"]
    assert header_values(record, "x-forwarded-host") == ["public.example"]


async def test_trusted_proxy_chain_is_kept(
    backend: Backend, gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    async with gateway_factory(
        f"http://127.0.0.1:{backend.port}",
        forwarding={"trusted_proxies": ["127.0.0.0/8"], "forwarded": True, "via": True},
    ) as url:
        response = await client.get(f"{url}/echo", headers={"X-Forwarded-For": "198.51.100.4"})
    record = response.json()
    assert header_values(record, "x-forwarded-for") == ["198.51.100.4, 127.0.0.1"]
    assert header_values(record, "x-real-ip") == ["198.51.100.4"]
    assert header_values(record, "via") == ["1.1 gateway"]
    assert header_values(record, "forwarded")[0].startswith("for=127.0.0.1;proto=https")
    assert response.headers["via"] == "1.1 gateway"


async def test_host_header_override_per_route(
    backend: Backend, gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    upstream = f"http://127.0.0.1:{backend.port}"
    routes = [{"prefix": "/", "upstream": upstream, "host_header": "internal.local"}]
    async with gateway_factory(upstream, routes=routes) as url:
        response = await client.get(f"{url}/echo")
    assert header_values(response.json(), "host") == ["internal.local"]


async def test_location_is_rewritten_to_public_url(gateway: str, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{gateway}/redirect", headers={"Host": "public.example:8443"})
    assert response.status_code == 302
    assert response.headers["location"] == "https://public.example:8443/landed?x=1"


async def test_no_cookie_jar_between_clients(
    gateway: str, backend: Backend, client: httpx.AsyncClient, client_ssl: ssl.SSLContext
) -> None:
    first = await client.get(f"{gateway}/cookie")
    assert first.headers["set-cookie"] == "session=abc; Path=/"
    async with httpx.AsyncClient(verify=client_ssl) as other:
        await other.get(f"{gateway}/echo")
    assert header_values(backend.requests[1], "cookie") == []


async def test_no_accept_encoding_added_and_bytes_untouched(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    raw = await raw_exchange(
        port_of(gateway),
        b"GET /bytes/100 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        client_ssl,
    )
    _, _, body = parse_response(raw)
    assert body == expected_bytes(100)
    assert header_values(backend.requests[0], "accept-encoding") == []
    assert header_values(backend.requests[0], "user-agent") == []


async def test_single_date_and_server_headers(gateway: str, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{gateway}/echo")
    assert len(response.headers.get_list("date")) == 1
    assert len(response.headers.get_list("server")) == 1


async def test_absolute_form_target_cannot_choose_upstream(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    raw = await raw_exchange(
        port_of(gateway),
        b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: close\r\n\r\n",
        client_ssl,
    )
    status, _, _ = parse_response(raw)
    assert status == 200
    assert backend.requests[0]["raw_path"] == "/latest/meta-data"


async def test_backend_down_gives_502_without_address(
    gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    async with raw_server(read_request_head) as port:
        pass  # the port is now closed: nothing listens there
    async with gateway_factory(f"http://127.0.0.1:{port}") as url:
        response = await client.get(f"{url}/x")
    assert response.status_code == 502
    assert "127.0.0.1" not in response.text
    assert str(port) not in response.text


async def test_slow_backend_gives_504(
    backend: Backend, gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", timeouts={"read_s": 0.3}) as url:
        response = await client.get(f"{url}/slow/3")
    assert response.status_code == 504
    assert response.text == "504 Gateway Timeout\n"


async def test_backend_closing_mid_body_cuts_the_client(
    gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 70000)
        await writer.drain()

    async with raw_server(handler) as port, gateway_factory(f"http://127.0.0.1:{port}") as url:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{url}/")


async def test_client_disconnect_mid_upload_frees_everything(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    tasks_before = len(asyncio.all_tasks())
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port_of(gateway), ssl=client_ssl, server_hostname="localhost"
    )
    writer.write(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\n")
    writer.write(b"x" * 1_000_000)
    await writer.drain()
    await eventually(lambda: backend.started == 1)  # the upload reached the backend
    writer.transport.abort()
    for _ in range(100):
        if backend.disconnects and len(asyncio.all_tasks()) <= tasks_before:
            break
        await asyncio.sleep(0.05)
    assert backend.disconnects == 1
    assert len(asyncio.all_tasks()) <= tasks_before


async def test_client_disconnect_mid_download_stops_backend_read(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    tasks_before = len(asyncio.all_tasks())
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port_of(gateway), ssl=client_ssl, server_hostname="localhost"
    )
    writer.write(b"GET /bytes/1000000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await reader.readexactly(200_000)
    writer.transport.abort()
    # The gateway closes its backend connection: the backend sees the disconnect and
    # stops sending, long before its gigabyte.
    await eventually(lambda: backend.disconnects == 1)
    stopped_at = backend.bytes_sent
    assert stopped_at < 100_000_000
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before)
    await asyncio.sleep(0.2)
    assert backend.bytes_sent == stopped_at


async def test_body_over_limit_gets_413_before_backend(
    backend: Backend, gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 500

    async with gateway_factory(
        f"http://127.0.0.1:{backend.port}", limits={"max_body_bytes": 1000}
    ) as url:
        declared = await client.post(f"{url}/echo", content=b"x" * 1001)
        streamed = await client.post(f"{url}/echo", content=chunks())
        ok = await client.post(f"{url}/echo", content=b"x" * 1000)
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert ok.status_code == 200
    assert [r["body_bytes"] for r in backend.requests] == [1000]


async def test_prefix_routes_and_strip_prefix(
    backend: Backend, gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    upstream = f"http://127.0.0.1:{backend.port}"
    routes = [
        {"prefix": "/api", "upstream": upstream + "/v1", "strip_prefix": True},
        {"prefix": "/keep", "upstream": upstream},
    ]
    async with gateway_factory(upstream, routes=routes) as url:
        stripped = await client.get(f"{url}/api/users?id=1")
        kept = await client.get(f"{url}/keep/x")
        missing = await client.get(f"{url}/other")
        near_miss = await client.get(f"{url}/apiary")
    assert stripped.json()["raw_path"] == "/v1/users"
    assert kept.json()["raw_path"] == "/keep/x"
    assert missing.status_code == 404
    assert near_miss.status_code == 404


async def test_plain_listener_without_tls(
    backend: Backend, gateway_factory: GatewayFactory
) -> None:
    async with (
        gateway_factory(f"http://127.0.0.1:{backend.port}", tls=False) as url,
        httpx.AsyncClient() as plain,
    ):
        response = await plain.get(f"{url}/echo")
    assert header_values(response.json(), "x-forwarded-proto") == ["http"]


async def test_failures_are_logged_without_credentials_or_query(
    gateway_factory: GatewayFactory,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with raw_server(read_request_head) as port:
        pass  # closed again: connecting fails
    async with gateway_factory(f"http://127.0.0.1:{port}") as url:
        response = await client.get(
            f"{url}/private?token=s3cr3t-query",
            headers={"Authorization": "Bearer s3cr3t-auth", "Cookie": "sid=s3cr3t-cookie"},
        )
    assert response.status_code == 502
    logged = caplog.text
    assert f"127.0.0.1:{port}" in logged  # the detail an operator needs is there
    assert "/private" in logged
    assert "s3cr3t" not in logged


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        (b"Transfer-Encoding: chunked", b"3\r\nok\n\r\n0\r\n\r\n"),
        (b"Content-Length: 3", b"ok\n"),
    ],
)
async def test_a_body_received_whole_is_one_final_message(framing: bytes, body: bytes) -> None:
    """A response whose body (chunked or not) came whole with its head is sent in one go.

    No second message and no watcher for the client's disconnect: the exchange ends
    with the first body message.
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n" + body)
        await writer.drain()
        await reader.read()

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client neither sends nor leaves
        raise AssertionError("unreachable")

    async with raw_server(handler) as port:
        sent = await call_proxy(f"http://127.0.0.1:{port}", direct_scope("GET"), receive)
    assert sent[0]["status"] == 200
    assert [(m["body"], m.get("more_body", False)) for m in sent[1:]] == [(b"ok\n", False)]


@pytest.mark.parametrize(
    ("version", "framing"),
    [
        ("1.1", b"content-length"),
        ("1.1", b"transfer-encoding"),
        ("2", b"content-length"),
        ("2", None),  # HTTP/2 ends a body with its stream
    ],
)
async def test_a_request_body_received_whole_goes_out_with_its_head(
    version: str, framing: bytes | None
) -> None:
    """A body whole in the first message is written with the head, from memory: no task
    of its own, and framed by Content-Length (nginx's buffered request body)."""
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_request_head(reader)
            received.append(head + await reader.readexactly(5000))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    headers = []
    if framing == b"content-length":
        headers.append((framing, b"5000"))
    elif framing is not None:
        headers.append((framing, b"chunked"))
    messages = [{"type": "http.request", "body": b"x" * 5000, "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    loop = asyncio.get_running_loop()
    created: list[object] = []

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async with raw_server(handler) as port:
        proxy = ReverseProxy(f"http://127.0.0.1:{port}")
        scope = direct_scope("POST", headers, version)
        await proxy(scope, receive, lambda message: asyncio.sleep(0))  # a connection to reuse
        messages.append({"type": "http.request", "body": b"x" * 5000, "more_body": False})
        loop.set_task_factory(counting)
        try:
            sent = await call_proxy(proxy, scope, receive)
        finally:
            loop.set_task_factory(None)
            await proxy.aclose()
    assert [m.get("body") for m in sent[1:]] == [b"ok"]
    assert created == []
    head, _, body = received[-1].partition(b"\r\n\r\n")
    assert body == b"x" * 5000
    assert b"\r\ncontent-length: 5000" in head.lower()
    assert b"transfer-encoding" not in head.lower()


def direct_scope(
    method: str, headers: list[tuple[bytes, bytes]] | None = None, version: str = "1.1"
) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": version,
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", b"example.test"), *(headers or [])],
        "client": ("127.0.0.1", 40000),
    }


async def call_proxy(
    upstream: str | ReverseProxy, scope: dict[str, Any], receive: Receive
) -> list[Message]:
    """Messages a `ReverseProxy` (or one made for the URL ``upstream``) sends for ``scope``."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    proxy = upstream if isinstance(upstream, ReverseProxy) else ReverseProxy(upstream)
    try:
        async with asyncio.timeout(5):
            await proxy(scope, receive, send)
    finally:
        if proxy is not upstream:
            await proxy.aclose()
    return sent
