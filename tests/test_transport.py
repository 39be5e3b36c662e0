"""UpstreamTransport against real sockets: uvicorn backends and raw TCP scripts on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import trustme
import uvicorn
from starlette.types import Receive, Scope, Send

from gateway.transport import UpstreamTransport
from gateway.transport._connection import READ_BUFFER_HIGH_BYTES
from gateway.transport._request import scan_request_headers
from gateway.transport._stream import ResponseStream
from tests.servers import eventually

MiB = 1024 * 1024
BLOCK = hashlib.sha256(b"block").digest() * 2048  # 64 KiB of a fixed pattern


# -- servers ---------------------------------------------------------------------------


class QuietServer(uvicorn.Server):
    """uvicorn that leaves the test runner's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Backend:
    """ASGI backend, served by uvicorn in the test's own loop.

    /info      JSON: method, raw_path, headers, body size, client port
    /upload    JSON: size and sha256 of the streamed request body
    /download  ?n=BYTES of BLOCK repeated, streamed in 64 KiB chunks with Content-Length
               and the client port in X-Client-Port
    /echo      streams the request body back while still receiving it
    /slow      waits ?s=SECONDS before the response head
    /hold      sends the head and 5 body bytes, then waits for `release` before the rest
    """

    def __init__(self) -> None:
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.release = asyncio.Event()

    @property
    def open_connections(self) -> int:
        assert self.server is not None
        return len(self.server.server_state.connections)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        path = scope["path"]
        query = dict(pair.split("=") for pair in scope["query_string"].decode().split("&") if pair)
        if path == "/echo":
            await self._echo(receive, send)
            return
        digest, size = hashlib.sha256(), 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            digest.update(message.get("body", b""))
            size += len(message.get("body", b""))
            more_body = message.get("more_body", False)
        if path == "/slow":
            await asyncio.sleep(float(query["s"]))
        if path == "/download":
            await self._download(int(query["n"]), scope["client"][1], send)
            return
        if path == "/hold":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"-last"})
            return
        body = json.dumps(
            {
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
                "size": size,
                "sha256": digest.hexdigest(),
                "client_port": scope["client"][1] if scope["client"] else None,  # None: Unix
            }
        ).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _download(self, size: int, client_port: int, send: Send) -> None:
        headers = [
            (b"content-length", str(size).encode()),
            (b"x-client-port", str(client_port).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while size > 0:
            chunk = BLOCK[: min(size, len(BLOCK))]
            size -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": size > 0})

    async def _echo(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more_body = message.get("more_body", False)
            await send({"type": "http.response.body", "body": message["body"], "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def serve_uvicorn(app: Backend, **options: Any) -> AsyncIterator[Backend]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    app.port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        **options,
    )
    server = app.server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "backend failed to start"
            await asyncio.sleep(0.01)
        yield app
    finally:
        app.release.set()
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with serve_uvicorn(Backend()) as app:
        yield app


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server whose handler writes exact bytes; counts the connections it accepted."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self.open = 0

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    info = RawServer()
    tasks: set[asyncio.Task[Any]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        info.accepted += 1
        info.open += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            info.open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def respond(*responses: bytes, close: bool = False) -> Handler:
    """Handler: for each request head received, write the next scripted response."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_head(reader)
            writer.write(response)
            await writer.drain()
        if close:
            return
        await reader.read()  # keep the connection until the client closes it

    return handler


# -- helpers ---------------------------------------------------------------------------


async def fetch(
    transport: UpstreamTransport, method: str, url: str, **kwargs: Any
) -> tuple[httpx.Response, bytes]:
    response = await transport.handle_async_request(httpx.Request(method, url, **kwargs))
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return response, body


async def fetch_json(transport: UpstreamTransport, method: str, url: str, **kw: Any) -> Any:
    response, body = await fetch(transport, method, url, **kw)
    assert response.status_code == 200, body
    return json.loads(body)


async def blocks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`total` bytes of the BLOCK pattern, in chunks of `size` (at most 64 KiB)."""
    twice, offset = BLOCK * 2, 0
    while total > 0:
        chunk = twice[offset : offset + min(size, total)]
        offset = (offset + len(chunk)) % len(BLOCK)
        total -= len(chunk)
        yield chunk


def pattern_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for _ in range(total // len(BLOCK)):
        digest.update(BLOCK)
    digest.update(BLOCK[: total % len(BLOCK)])
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def transport_tasks() -> set[asyncio.Task[Any]]:
    """Pending tasks running code of the transport (there should never be any left)."""
    return {
        task
        for task in asyncio.all_tasks()
        if not task.done() and "gateway/transport" in task.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    }


def stats(transport: UpstreamTransport) -> dict[str, int]:
    return transport.pool_stats()


# -- configuration ---------------------------------------------------------------------


def test_repr_names_every_setting() -> None:
    text = repr(UpstreamTransport(read_timeout_s=30))
    assert text.startswith("UpstreamTransport(connect_timeout_s=5.0, read_timeout_s=30.0,")
    assert "max_connections_per_origin=512" in text
    assert text.endswith("ssl_context=None)")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("connect_timeout_s", 0),
        ("read_timeout_s", -1.0),
        ("pool_timeout_s", True),
        ("max_connections_per_origin", 0),
        ("max_idle_per_origin", -1),
        ("max_response_header_bytes", 10),
    ],
)
def test_invalid_settings_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=key):
        UpstreamTransport(**{key: value})


def test_scan_request_headers() -> None:
    raw = [(b"HOST", b"h"), (b"Content-Length", b"12"), (b"Connection", b"Close")]
    assert scan_request_headers(raw) == (True, 12, False, True)
    assert scan_request_headers([(b"transfer-encoding", b"chunked")]) == (False, -1, True, False)
    for bad in (b"x", b"-1", b"1 2"):
        with pytest.raises(httpx.LocalProtocolError):
            scan_request_headers([(b"content-length", bad)])
    with pytest.raises(httpx.LocalProtocolError):
        scan_request_headers([(b"transfer-encoding", b"gzip")])


# -- what goes on the wire -------------------------------------------------------------


async def capture_request(request: httpx.Request) -> bytes:
    """Send `request` to a raw server and return the exact bytes it received."""
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_head(reader))
        with contextlib.suppress(asyncio.TimeoutError):
            received.append(await asyncio.wait_for(reader.read(65536), 0.2))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async with raw_server(handler) as server, UpstreamTransport() as transport:
        request.url = request.url.copy_with(port=server.port)
        if "Host" in request.headers:  # absent for Request(stream=...): the transport adds it
            request.headers["Host"] = f"127.0.0.1:{server.port}"
        response = await transport.handle_async_request(request)
        await response.aread()
        assert response.status_code == 204
    return b"".join(received).replace(str(server.port).encode(), b"PORT")


async def test_request_line_and_headers_are_sent_exactly() -> None:
    headers = [("X-Dup", "1"), ("accept", "*/*"), ("x-dup", "2"), ("Cookie", "a=b")]
    request = httpx.Request(
        "GET",
        "http://127.0.0.1/a%2Fb/c?x=1&x=2&y=%2F",
        headers=headers,
    )
    assert await capture_request(request) == (
        b"GET /a%2Fb/c?x=1&x=2&y=%2F HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n"
        b"X-Dup: 1\r\naccept: */*\r\nx-dup: 2\r\nCookie: a=b\r\n\r\n"
    )


async def test_target_extension_keeps_dot_segments() -> None:
    # httpx.URL removes dot segments; the "target" extension (httpcore's) does not.
    request = httpx.Request(
        "GET", "http://127.0.0.1/", extensions={"target": b"/a%2Fb/../c?x=1&x=2"}
    )
    sent = await capture_request(request)
    assert sent.startswith(b"GET /a%2Fb/../c?x=1&x=2 HTTP/1.1\r\n")


async def test_host_is_added_only_when_absent() -> None:
    request = httpx.Request("GET", "http://127.0.0.1/", headers={"X-A": "1"})
    del request.headers["Host"]

    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_head(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async with raw_server(handler) as server, UpstreamTransport() as transport:
        request.url = request.url.copy_with(port=server.port)
        response = await transport.handle_async_request(request)
        await response.aclose()
    assert received == [
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-A: 1\r\n\r\n".encode()
    ]


async def test_bodies_are_framed_only_when_needed() -> None:
    async def empty() -> AsyncIterator[bytes]:
        for _ in ():
            yield b""

    async def two_parts() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b""  # an empty chunk must not end a chunked body
        yield b"world"

    get = await capture_request(httpx.Request("GET", "http://127.0.0.1/"))
    assert get == b"GET / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n\r\n"

    empty_stream = await capture_request(httpx.Request("POST", "http://127.0.0.1/", stream=empty()))  # type: ignore[arg-type]
    assert empty_stream == b"POST / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n\r\n"

    unknown = await capture_request(httpx.Request("POST", "http://127.0.0.1/", stream=two_parts()))  # type: ignore[arg-type]
    assert unknown == (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    )

    fixed = await capture_request(
        httpx.Request(
            "PUT",
            "http://127.0.0.1/",
            headers={"Content-Length": "11"},
            stream=two_parts(),  # type: ignore[arg-type]
        )
    )
    assert (
        fixed == b"PUT / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nContent-Length: 11\r\n\r\nhello world"
    )

    in_memory = await capture_request(
        httpx.Request("POST", "http://127.0.0.1/", stream=httpx.ByteStream(b"abc"))
    )
    assert in_memory == b"POST / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nContent-Length: 3\r\n\r\nabc"

    content = await capture_request(httpx.Request("POST", "http://127.0.0.1/", content=b"xyz"))
    assert content.endswith(b"\r\nContent-Length: 3\r\n\r\nxyz")

    # httpx marks async-iterator content as chunked itself; we write the framing.
    chunked = await capture_request(httpx.Request("POST", "http://127.0.0.1/", content=two_parts()))
    assert chunked.endswith(
        b"\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    )


async def test_body_not_matching_content_length_is_refused(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        for length in ("3", "20"):
            request = httpx.Request(
                "POST",
                backend.url("/info"),
                headers={"Content-Length": length},
                stream=blocks(10),  # type: ignore[arg-type]
            )
            with pytest.raises(httpx.LocalProtocolError, match="Content-Length"):
                await transport.handle_async_request(request)
        assert stats(transport)["connections"] == 0


async def test_failing_body_source_error_reaches_the_caller(backend: Backend) -> None:
    class ClientGone(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"part"
        raise ClientGone("client disconnected")

    async with UpstreamTransport() as transport:
        request = httpx.Request("POST", backend.url("/upload"), stream=failing())  # type: ignore[arg-type]
        with pytest.raises(ClientGone):
            await transport.handle_async_request(request)
        assert stats(transport)["connections"] == 0
        await eventually(lambda: backend.open_connections == 0)


async def test_no_headers_are_added(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        info = await fetch_json(transport, "GET", backend.url("/info"))
    assert [name for name, _ in info["headers"]] == ["host"]


# -- streaming -------------------------------------------------------------------------


async def test_64_mib_chunked_upload(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        stream = blocks(64 * MiB)
        info = await fetch_json(transport, "POST", backend.url("/upload"), stream=stream)
    assert dict(info["headers"])["transfer-encoding"] == "chunked"
    assert info["size"] == 64 * MiB
    assert info["sha256"] == pattern_sha256(64 * MiB)


async def test_upload_with_content_length_streams_as_given(backend: Backend) -> None:
    size = 8 * MiB + 123
    async with UpstreamTransport() as transport:
        headers = {"Content-Length": str(size)}
        info = await fetch_json(
            transport, "POST", backend.url("/upload"), headers=headers, stream=blocks(size, 50_000)
        )
    assert "transfer-encoding" not in dict(info["headers"])
    assert (info["size"], info["sha256"]) == (size, pattern_sha256(size))


async def test_64_mib_download(backend: Backend) -> None:
    size = 64 * MiB
    async with UpstreamTransport() as transport:
        response = await transport.handle_async_request(
            httpx.Request("GET", backend.url(f"/download?n={size}"))
        )
        digest, received = hashlib.sha256(), 0
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            received += len(chunk)
        await response.aclose()
        assert (received, digest.hexdigest()) == (size, pattern_sha256(size))
        assert response.headers["content-length"] == str(size)
        assert stats(transport) == {"connections": 1, "idle": 1, "waiting": 0}


async def test_slow_reader_pauses_the_socket(backend: Backend) -> None:
    size = 32 * MiB
    async with UpstreamTransport() as transport:
        response = await transport.handle_async_request(
            httpx.Request("GET", backend.url(f"/download?n={size}"))
        )
        stream = response.stream
        assert isinstance(stream, ResponseStream)
        conn = stream._conn
        assert conn is not None
        await asyncio.sleep(0.3)  # read nothing: the socket must stop being read
        assert conn.reading_paused
        assert stream.buffered_bytes <= READ_BUFFER_HIGH_BYTES + 256 * 1024
        digest = hashlib.sha256()
        async for chunk in response.aiter_raw():
            digest.update(chunk)
        assert digest.hexdigest() == pattern_sha256(size)


async def test_upload_to_a_stalled_upstream_is_bounded_and_times_out() -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            produced += len(BLOCK)
            yield BLOCK

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(30)

    async with (
        raw_server(never_read) as server,
        UpstreamTransport(write_timeout_s=0.5) as transport,
    ):
        request = httpx.Request("POST", server.url(), stream=endless())  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(httpx.WriteTimeout, match="accepted no bytes"):
            await transport.handle_async_request(request)
        assert time.monotonic() - started < 10
        assert produced < 48 * MiB  # kernel buffers, not an unbounded queue of ours
        assert stats(transport)["connections"] == 0


async def test_full_duplex_echo(backend: Backend) -> None:
    # The upstream answers while the upload is still going: the response must reach
    # the caller while the body is still being sent, or both sides wait for each other.
    size = 16 * MiB
    async with UpstreamTransport() as transport:
        response = await transport.handle_async_request(
            httpx.Request("POST", backend.url("/echo"), stream=blocks(size))  # type: ignore[arg-type]
        )
        digest, received = hashlib.sha256(), 0
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            received += len(chunk)
        await response.aclose()
        assert (received, digest.hexdigest()) == (size, pattern_sha256(size))


async def test_early_response_stops_the_upload() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        await writer.drain()
        while await reader.read(65536):
            pass

    async with raw_server(refuse) as server, UpstreamTransport() as transport:
        request = httpx.Request(
            "POST",
            server.url(),
            headers={"Content-Length": str(256 * MiB)},
            stream=blocks(256 * MiB),  # type: ignore[arg-type]
        )
        response = await transport.handle_async_request(request)
        assert (response.status_code, await response.aread()) == (413, b"big!")
        await eventually(lambda: stats(transport)["connections"] == 0)
        await eventually(lambda: server.open == 0)


# -- response framing ------------------------------------------------------------------


async def test_response_head_is_returned_as_received() -> None:
    script = respond(
        b"HTTP/1.1 201 Made It\r\nX-Case: MiXeD\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\n\x1f\x8b\x08\x00"
    )
    async with raw_server(script) as server, UpstreamTransport() as transport:
        response, body = await fetch(transport, "GET", server.url())
    assert response.status_code == 201
    assert response.extensions == {"http_version": b"HTTP/1.1", "reason_phrase": b"Made It"}
    assert response.headers.raw == [
        (b"X-Case", b"MiXeD"),
        (b"Set-Cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"Content-Encoding", b"gzip"),
        (b"Content-Length", b"4"),
    ]
    assert body == b"\x1f\x8b\x08\x00"  # raw: never decompressed


async def test_chunked_response_is_dechunked_without_trailers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_head(reader)
            parts = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5;ext=1\r\nhello\r\n",
                b"1\r\n \r\n5\r\nworld\r\n",
                b"0\r\nX-Trailer: t\r\n\r\n",
            ]
            for part in parts:  # in separate packets
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.01)
        await reader.read()

    async with raw_server(handler) as server, UpstreamTransport() as transport:
        for _ in range(2):
            response, body = await fetch(transport, "GET", server.url())
            assert body == b"hello world"
            assert response.headers.raw == [(b"Transfer-Encoding", b"chunked")]
        assert server.accepted == 1


async def test_head_response_with_content_length_has_no_body() -> None:
    script = respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    async with raw_server(script) as server, UpstreamTransport() as transport:
        head, head_body = await fetch(transport, "HEAD", server.url())
        _, get_body = await fetch(transport, "GET", server.url())
    assert (head.headers["content-length"], head_body) == ("1000", b"")
    assert get_body == b"ok"
    assert server.accepted == 1  # the connection survived the HEAD


@pytest.mark.parametrize("status", [204, 304])
async def test_bodyless_statuses(status: int) -> None:
    script = respond(
        f"HTTP/1.1 {status} X\r\nContent-Length: 7\r\n\r\n".encode(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    async with raw_server(script) as server, UpstreamTransport() as transport:
        first, first_body = await fetch(transport, "GET", server.url())
        _, second_body = await fetch(transport, "GET", server.url())
    assert (first.status_code, first_body, second_body) == (status, b"", b"ok")
    assert server.accepted == 1


async def test_interim_responses_are_skipped() -> None:
    script = respond(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    async with raw_server(script) as server, UpstreamTransport() as transport:
        response, body = await fetch(transport, "GET", server.url())
    assert (response.status_code, body) == (200, b"ok")
    assert response.headers.raw == [(b"Content-Length", b"2")]


async def test_switching_protocols_is_an_error() -> None:
    script = respond(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    )
    async with raw_server(script) as server, UpstreamTransport() as transport:
        with pytest.raises(httpx.RemoteProtocolError, match="101"):
            await fetch(transport, "GET", server.url())
        assert stats(transport)["connections"] == 0


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\n\r\n", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"],
    ids=["http/1.1", "http/1.0-keep-alive"],
)
async def test_close_delimited_body_ends_at_eof(head: bytes) -> None:
    script = respond(head + b"until the end", close=True)
    async with raw_server(script) as server, UpstreamTransport() as transport:
        _, body = await fetch(transport, "GET", server.url())
        assert body == b"until the end"
        assert stats(transport)["connections"] == 0


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http/1.0"],
)
async def test_connection_is_not_reused_when_a_side_says_close(response: bytes) -> None:
    async with raw_server(respond(response, response)) as server, UpstreamTransport() as transport:
        for _ in range(2):
            _, body = await fetch(transport, "GET", server.url())
            assert body == b"ok"
            assert stats(transport)["connections"] == 0
        assert server.accepted == 2


async def test_request_connection_close_is_honoured(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        await fetch_json(transport, "GET", backend.url("/info"), headers={"Connection": "close"})
        assert stats(transport)["connections"] == 0


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"",
    ],
    ids=["content-length", "chunked", "head", "nothing"],
)
async def test_truncated_response_raises(response: bytes) -> None:
    async with (
        raw_server(respond(response, close=True)) as server,
        UpstreamTransport() as transport,
    ):
        with pytest.raises(httpx.RemoteProtocolError, match="server disconnected"):
            await fetch(transport, "GET", server.url())
        assert stats(transport)["connections"] == 0


async def test_truncated_body_yields_what_arrived_then_raises() -> None:
    script = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)
    async with raw_server(script) as server, UpstreamTransport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", server.url()))
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"abc"
        with pytest.raises(httpx.RemoteProtocolError, match="before the response body"):
            await anext(chunks)


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (b"SMTP ready\r\n\r\n", "Expected HTTP/"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n", "exceeds 1024 bytes"),
    ],
    ids=["not-http", "two-content-lengths", "head-too-large"],
)
async def test_invalid_response_raises(response: bytes, match: str) -> None:
    transport = UpstreamTransport(max_response_header_bytes=1024)
    async with raw_server(respond(response)) as server, transport:
        with pytest.raises(httpx.RemoteProtocolError, match=match):
            await fetch(transport, "GET", server.url())
        assert stats(transport)["connections"] == 0


async def test_connection_reset_raises_read_error() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with raw_server(reset) as server, UpstreamTransport() as transport:
        with pytest.raises(httpx.ReadError, match="reset"):
            await fetch(transport, "GET", server.url())
        assert stats(transport)["connections"] == 0


# -- keep-alive pool -------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        ports = {
            (await fetch_json(transport, "GET", backend.url("/info")))["client_port"]
            for _ in range(5)
        }
        assert len(ports) == 1
        assert stats(transport) == {"connections": 1, "idle": 1, "waiting": 0}


async def test_idle_connections_are_reused_lifo(backend: Backend) -> None:
    # A 4 MiB body is not received until it is read (backpressure), so the order in
    # which the bodies are read decides the order in which connections go idle.
    url = backend.url(f"/download?n={4 * MiB}")
    async with UpstreamTransport() as transport:
        first = await transport.handle_async_request(httpx.Request("GET", url))
        second = await transport.handle_async_request(httpx.Request("GET", url))
        assert first.headers["x-client-port"] != second.headers["x-client-port"]
        for response in (second, first):
            await response.aread()
        assert stats(transport) == {"connections": 2, "idle": 2, "waiting": 0}
        info = await fetch_json(transport, "GET", backend.url("/info"))
        assert str(info["client_port"]) == first.headers["x-client-port"]


async def test_complete_response_frees_its_connection_before_it_is_read(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        small = await transport.handle_async_request(httpx.Request("GET", backend.url("/info")))
        await eventually(lambda: stats(transport)["idle"] == 1)
        info = await fetch_json(transport, "GET", backend.url("/info"))
        assert json.loads(await small.aread())["client_port"] == info["client_port"]


async def test_response_closed_early_closes_its_connection(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        response = await transport.handle_async_request(
            httpx.Request("GET", backend.url(f"/download?n={8 * MiB}"))
        )
        async for _ in response.aiter_raw():
            break
        await response.aclose()
        assert stats(transport)["connections"] == 0
        await eventually(lambda: backend.open_connections == 0)
        info = await fetch_json(transport, "GET", backend.url("/info"))
        assert info["method"] == "GET"


async def test_idle_connection_closed_by_upstream_is_never_handed_out() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with (
        raw_server(respond(response, close=True)) as server,
        UpstreamTransport() as transport,
    ):
        await fetch(transport, "GET", server.url())
        await eventually(lambda: stats(transport)["connections"] == 0)
        _, body = await fetch(transport, "GET", server.url())
        assert body == b"ok"
        assert server.accepted == 2


async def test_keep_alive_race_is_retried_once_on_a_fresh_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # The next request arrives as the server gives up on the connection.
        await read_head(reader)

    async with raw_server(handler) as server, UpstreamTransport() as transport:
        for _ in range(2):
            _, body = await fetch(transport, "GET", server.url())
            assert body == b"ok"
        assert server.accepted == 2
        _, body = await fetch(transport, "POST", server.url(), content=b"replayable")
        assert body == b"ok"
        assert server.accepted == 3


async def test_keep_alive_race_is_not_retried_after_a_streamed_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_head(reader)
        await reader.readexactly(5)

    async with raw_server(handler) as server, UpstreamTransport() as transport:
        await fetch(transport, "GET", server.url())
        with pytest.raises(httpx.TransportError):
            await fetch(transport, "POST", server.url(), stream=blocks(5))
        assert server.accepted == 1


async def test_idle_connections_expire(backend: Backend) -> None:
    async with UpstreamTransport(keepalive_expiry_s=0.2) as transport:
        await fetch_json(transport, "GET", backend.url("/info"))
        assert stats(transport)["idle"] == 1
        await eventually(lambda: stats(transport)["connections"] == 0)
        await eventually(lambda: backend.open_connections == 0)


async def test_max_idle_per_origin(backend: Backend) -> None:
    url = backend.url(f"/download?n={4 * MiB}")
    async with UpstreamTransport(max_idle_per_origin=1) as transport:
        responses = [
            await transport.handle_async_request(httpx.Request("GET", url)) for _ in range(3)
        ]
        assert stats(transport)["connections"] == 3
        for response in responses:
            await response.aread()
        assert stats(transport) == {"connections": 1, "idle": 1, "waiting": 0}


async def test_pool_limit_and_pool_timeout(backend: Backend) -> None:
    async with UpstreamTransport(max_connections_per_origin=2, pool_timeout_s=0.2) as transport:
        held = [
            await transport.handle_async_request(httpx.Request("GET", backend.url("/hold")))
            for _ in range(2)
        ]
        with pytest.raises(httpx.PoolTimeout, match="no connection"):
            await transport.handle_async_request(httpx.Request("GET", backend.url("/info")))
        assert stats(transport) == {"connections": 2, "idle": 0, "waiting": 0}
        for response in held:
            await response.aclose()
        assert stats(transport)["connections"] == 0


async def test_waiters_are_served_in_order(backend: Backend) -> None:
    order: list[str] = []

    async def request(name: str) -> None:
        await fetch_json(transport, "GET", backend.url("/info"))
        order.append(name)

    async with UpstreamTransport(max_connections_per_origin=1) as transport:
        held = await transport.handle_async_request(httpx.Request("GET", backend.url("/hold")))
        tasks = []
        for name in "abc":
            tasks.append(asyncio.create_task(request(name)))
            await asyncio.sleep(0.01)
        assert stats(transport) == {"connections": 1, "idle": 0, "waiting": 3}
        backend.release.set()
        assert await held.aread() == b"first-last"
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"]
        assert stats(transport) == {"connections": 1, "idle": 1, "waiting": 0}


async def test_aclose_closes_idle_and_active_connections(backend: Backend) -> None:
    transport = UpstreamTransport()
    active = await transport.handle_async_request(httpx.Request("GET", backend.url("/hold")))
    await fetch_json(transport, "GET", backend.url("/info"))
    assert stats(transport) == {"connections": 2, "idle": 1, "waiting": 0}
    await transport.aclose()
    assert stats(transport)["connections"] == 0
    await eventually(lambda: backend.open_connections == 0)
    with pytest.raises(httpx.TransportError):
        await active.aread()


# -- timeouts and errors ---------------------------------------------------------------


async def test_refused_port_raises_connect_error() -> None:
    async with UpstreamTransport() as transport:
        with pytest.raises(httpx.ConnectError, match="refused"):
            await fetch(transport, "GET", f"http://127.0.0.1:{free_port()}/")
        assert stats(transport)["connections"] == 0


async def test_dns_failure_raises_connect_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_such_host(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_host)
    async with UpstreamTransport() as transport:
        with pytest.raises(httpx.ConnectError, match="not known"):
            await fetch(transport, "GET", "http://upstream.invalid/")


async def test_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(10)

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", hang)
    async with UpstreamTransport(connect_timeout_s=0.1) as transport:
        with pytest.raises(httpx.ConnectTimeout):
            await fetch(transport, "GET", "http://127.0.0.1:9/")
        assert stats(transport)["connections"] == 0


async def test_read_timeout_waiting_for_the_head(backend: Backend) -> None:
    async with UpstreamTransport(read_timeout_s=0.2) as transport:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout, match=r"no bytes received for 0\.2 s"):
            await fetch(transport, "GET", backend.url("/slow?s=5"))
        assert 0.15 < time.monotonic() - started < 2
        assert stats(transport)["connections"] == 0


async def test_read_timeout_between_body_bytes(backend: Backend) -> None:
    async with UpstreamTransport(read_timeout_s=0.2) as transport:
        response = await transport.handle_async_request(httpx.Request("GET", backend.url("/hold")))
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()
        assert stats(transport)["connections"] == 0


async def test_read_timeout_restarts_with_every_byte() -> None:
    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for byte in b"dribbled":
            await asyncio.sleep(0.05)
            writer.write(bytes([byte]))
        await reader.read()

    async with raw_server(dribble) as server, UpstreamTransport(read_timeout_s=0.2) as transport:
        _, body = await fetch(transport, "GET", server.url())
        assert body == b"dribbled"  # 0.4 s in total, never 0.2 s of silence


async def test_timeout_extension_overrides_per_request(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        timeout = httpx.Timeout(5.0, read=0.1).as_dict()
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await fetch(transport, "GET", backend.url("/slow?s=5"), extensions={"timeout": timeout})
        assert time.monotonic() - started < 2
        # Through an AsyncClient, which sets the extension itself.
        async with httpx.AsyncClient(transport=transport, timeout=0.1) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(backend.url("/slow?s=5"))


# -- cancellation ----------------------------------------------------------------------


async def test_cancel_while_waiting_for_the_head(backend: Backend) -> None:
    async with UpstreamTransport() as transport:
        task = asyncio.create_task(
            transport.handle_async_request(httpx.Request("GET", backend.url("/slow?s=5")))
        )
        await eventually(lambda: backend.open_connections == 1)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stats(transport)["connections"] == 0
        await eventually(lambda: backend.open_connections == 0)
        await asyncio.sleep(0)
        assert transport_tasks() == set()


async def test_cancel_after_the_response_completed_keeps_the_connection() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(respond(response, response)) as server, UpstreamTransport() as transport:
        task = asyncio.create_task(
            transport.handle_async_request(httpx.Request("GET", server.url()))
        )
        # Cancel in the gap between the response completing (the connection is back in
        # the pool) and the task resuming: the connection must not be closed by it.
        while stats(transport)["idle"] == 0:
            assert not task.done()
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stats(transport) == {"connections": 1, "idle": 1, "waiting": 0}
        _, body = await fetch(transport, "GET", server.url())
        assert body == b"ok"
        assert server.accepted == 1


async def test_cancel_in_the_middle_of_the_body(backend: Backend) -> None:
    async def consume(response: httpx.Response) -> None:
        async for _ in response.aiter_raw():
            pass

    async with UpstreamTransport() as transport:
        response = await transport.handle_async_request(httpx.Request("GET", backend.url("/hold")))
        task = asyncio.create_task(consume(response))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stats(transport)["connections"] == 0
        await eventually(lambda: backend.open_connections == 0)


async def test_response_during_a_stalled_upload_then_close(backend: Backend) -> None:
    async def slow_body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await asyncio.sleep(30)
        yield b"never"

    async with UpstreamTransport() as transport:
        started = time.monotonic()
        response = await transport.handle_async_request(
            httpx.Request("POST", backend.url("/echo"), stream=slow_body())  # type: ignore[arg-type]
        )
        assert response.status_code == 200
        assert time.monotonic() - started < 5  # not held back by the stalled body source
        assert await anext(response.aiter_raw()) == b"x" * 1000
        await response.aclose()
        assert stats(transport)["connections"] == 0
        await eventually(lambda: backend.open_connections == 0)
        await asyncio.sleep(0)
        assert transport_tasks() == set()


async def test_cancel_while_waiting_for_a_connection(backend: Backend) -> None:
    async with UpstreamTransport(max_connections_per_origin=1) as transport:
        held = await transport.handle_async_request(httpx.Request("GET", backend.url("/hold")))
        task = asyncio.create_task(
            transport.handle_async_request(httpx.Request("GET", backend.url("/info")))
        )
        await eventually(lambda: stats(transport)["waiting"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stats(transport) == {"connections": 1, "idle": 0, "waiting": 0}
        backend.release.set()
        await held.aread()
        assert (await fetch_json(transport, "GET", backend.url("/info")))["method"] == "GET"


# -- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


async def test_https_upstream(tls_ca: trustme.CA) -> None:
    cert = tls_ca.issue_cert("127.0.0.1")
    with cert.cert_chain_pems[0].tempfile() as certfile, cert.private_key_pem.tempfile() as keyfile:
        async with serve_uvicorn(Backend(), ssl_certfile=certfile, ssl_keyfile=keyfile) as app:
            url = f"https://127.0.0.1:{app.port}"
            context = ssl.create_default_context()
            tls_ca.configure_trust(context)
            async with UpstreamTransport(ssl_context=context) as transport:
                for _ in range(2):
                    info = await fetch_json(transport, "POST", url + "/upload", content=BLOCK)
                    assert info["sha256"] == pattern_sha256(len(BLOCK))
                assert stats(transport)["connections"] == 1
            async with UpstreamTransport() as transport:  # system trust store: refused
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await fetch(transport, "GET", url + "/info")
                assert stats(transport)["connections"] == 0


async def test_unsupported_scheme() -> None:
    async with UpstreamTransport() as transport:
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/"))


async def test_unix_socket_upstream(tmp_path: Any) -> None:
    path = str(tmp_path / "backend.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(16)
    backend = Backend()
    config = uvicorn.Config(backend, http="httptools", lifespan="off", log_level="warning")
    server = backend.server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started)
        async with UpstreamTransport() as transport:
            for _ in range(2):
                info = await fetch_json(
                    transport,
                    "POST",
                    "http://localhost/upload",
                    content=BLOCK,
                    extensions={"unix_socket": path},
                )
                assert info["sha256"] == pattern_sha256(len(BLOCK))
            assert stats(transport)["connections"] == 1  # kept alive, keyed by the path
            # The same URL without the extension is another origin (and nothing listens).
            with pytest.raises(httpx.ConnectError):
                await fetch(transport, "GET", f"http://127.0.0.1:{free_port()}/info")
            with pytest.raises(httpx.UnsupportedProtocol, match="Unix socket"):
                await fetch(
                    transport, "GET", "https://localhost/", extensions={"unix_socket": path}
                )
            missing = str(tmp_path / "missing.sock")
            with pytest.raises(httpx.ConnectError, match="unix:"):
                await fetch(transport, "GET", "http://x/", extensions={"unix_socket": missing})
    finally:
        server.should_exit = True
        await task
        sock.close()
