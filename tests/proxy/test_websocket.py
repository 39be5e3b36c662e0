"""The WebSocket bridge over real sockets: websockets client -> TLS uvicorn -> bridge -> backend."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from gateway.middleware.origin import OriginCheckMiddleware
from gateway.proxy.websocket import WebSocketProxy, wire_max_size
from gateway.tls import CertificatePair
from tests.proxy.ws_servers import (
    RecordingBackend,
    accept_handshake,
    accept_then_empty_close,
    accept_then_silence,
    backend_process,
    never_answers,
    raw_handshake,
    reads_after,
    stalls,
    tls_bridge,
    ws_backend,
)
from tests.servers import raw_server

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


@pytest.fixture
async def backend() -> AsyncIterator[RecordingBackend]:
    async with ws_backend() as server:
        yield server


def client(url: str, client_ssl: ssl.SSLContext, **options: Any) -> Any:
    """A websockets client to the bridge, with test defaults."""
    options.setdefault("open_timeout", 10)
    options.setdefault("max_size", 16 * MiB)
    return connect(url, ssl=client_ssl, **options)


async def closed_with(connection: ClientConnection) -> tuple[int | None, str | None]:
    """Wait (bounded) until the bridge closes ``connection``; return the close frame it sent."""
    async with asyncio.timeout(10):
        try:
            while True:
                await connection.recv()
        except ConnectionClosed as exc:
            close = exc.rcvd
    return (close.code, close.reason) if close else (None, None)


async def backend_close(backend: RecordingBackend) -> tuple[int | None, str | None]:
    """The close frame the backend received from the bridge."""
    async with asyncio.timeout(10):
        await backend.closed.wait()
    return backend.closes[-1]


# Messages ---------------------------------------------------------------------------------


async def test_text_stays_text_binary_stays_binary_empty_passes(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with (
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl) as ws,
    ):
        for message in ["hello", b"\x00\xffbinary", "", b"", "ünïcødé ✓"]:
            await ws.send(message)
            echoed = await ws.recv()
            assert echoed == message
            assert type(echoed) is type(message)


@pytest.mark.parametrize("kind", [str, bytes])
async def test_one_mib_message_passes_both_ways_at_the_limit(
    kind: type, backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    # Random bytes do not compress: the client's deflated frame is larger than 1 MiB.
    message = "x" * MiB if kind is str else os.urandom(MiB)
    proxy = WebSocketProxy(backend.url, max_message_bytes=MiB)
    async with (
        tls_bridge(proxy, cert_pair, ws_max_size=wire_max_size(MiB)) as url,
        client(f"{url}/ws", client_ssl, compression="deflate") as ws,
    ):
        await ws.send(message)
        assert await ws.recv() == message


async def test_client_message_over_limit_closes_1009_at_the_server(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    proxy = WebSocketProxy(backend.url, max_message_bytes=MiB)
    async with (
        tls_bridge(proxy, cert_pair, ws_max_size=MiB) as url,
        client(f"{url}/ws", client_ssl) as ws,
    ):
        await ws.send(b"x" * (MiB + 1))
        assert (await closed_with(ws))[0] == 1009
    assert (await backend_close(backend))[0] == 1009
    assert backend.messages == []


async def test_client_message_over_limit_closes_1009_in_the_bridge(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    # The server's frame limit has a margin (or is misconfigured): the bridge enforces its own.
    proxy = WebSocketProxy(backend.url, max_message_bytes=1000)
    async with (
        tls_bridge(proxy, cert_pair, ws_max_size=wire_max_size(1000)) as url,
        client(f"{url}/ws", client_ssl) as ws,
    ):
        await ws.send("é" * 500)  # 1000 bytes in UTF-8: at the limit
        assert await ws.recv() == "é" * 500
        await ws.send("é" * 500 + "x")
        assert await closed_with(ws) == (1009, "message too big")
    assert await backend_close(backend) == (1009, "message too big")


async def test_backend_message_over_limit_closes_1009_on_both_legs(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async def too_big(connection: ServerConnection) -> None:
        await connection.recv()
        await connection.send(b"x" * (MiB + 1))
        await connection.wait_closed()

    async with ws_backend(too_big) as backend:
        proxy = WebSocketProxy(backend.url, max_message_bytes=MiB)
        async with tls_bridge(proxy, cert_pair) as url, client(f"{url}/ws", client_ssl) as ws:
            await ws.send("go")
            assert (await closed_with(ws))[0] == 1009
        assert (await backend_close(backend))[0] == 1009


async def test_fragmented_messages_are_reassembled_both_ways(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async def fragments_back(connection: ServerConnection) -> None:
        async for message in connection:
            received.append(message)
            await connection.send([message[:1], message[1:]])  # type: ignore[list-item]

    received: list[str | bytes] = []
    async with (
        ws_backend(fragments_back) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl) as ws,
    ):
        await ws.send([b"ab", b"cd", b"ef"])
        assert await ws.recv() == b"abcdef"
        await ws.send(["fr", "ag", "ment"])
        assert await ws.recv() == "fragment"
    assert received == [b"abcdef", "fragment"]


# Handshake ------------------------------------------------------------------------------


async def test_subprotocol_chosen_by_the_backend_is_accepted(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with (
        ws_backend(subprotocols=["chat.v2"]) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl, subprotocols=["chat.v1", "chat.v2"]) as ws,
    ):
        assert ws.subprotocol == "chat.v2"
    assert backend.handshakes[0].get("Sec-WebSocket-Protocol") == ["chat.v1, chat.v2"]


async def test_no_subprotocol_offered_means_none_on_either_leg(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with tls_bridge(WebSocketProxy(backend.url), cert_pair) as url:
        status, headers, _ = await raw_handshake(url, client_ssl, "/ws")
    assert status == 101
    assert "sec-websocket-protocol" not in headers  # never an empty header
    assert backend.handshakes[0].get("Sec-WebSocket-Protocol") == []


async def test_subprotocol_offered_but_not_chosen_sends_none(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with tls_bridge(WebSocketProxy(backend.url), cert_pair) as url:
        status, headers, _ = await raw_handshake(
            url, client_ssl, "/ws", "Sec-WebSocket-Protocol: chat\r\n"
        )
    assert status == 101
    assert "sec-websocket-protocol" not in headers
    assert backend.handshakes[0].get("Sec-WebSocket-Protocol") == ["chat"]


async def test_client_deflate_with_uncompressed_backend(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    # Browsers always offer permessage-deflate; the backend leg negotiates on its own.
    message = "compressible " * 50_000
    async with (
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl, compression="deflate") as ws,
    ):
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        await ws.send(message)
        assert await ws.recv() == message
    assert backend.handshakes[0].get("Sec-WebSocket-Extensions") == []


async def test_backend_deflate_with_uncompressed_client(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    message = b"compressible " * 50_000
    async with ws_backend(compression="deflate") as backend:
        proxy = WebSocketProxy(backend.url, backend_compression=True)
        async with (
            tls_bridge(proxy, cert_pair) as url,
            client(f"{url}/ws", client_ssl, compression=None) as ws,
        ):
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            await ws.send(message)
            assert await ws.recv() == message
    assert "permessage-deflate" in backend.handshakes[0].get("Sec-WebSocket-Extensions")[0]


async def test_credentials_forwarding_headers_path_and_query_reach_the_backend(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    headers = {
        "Cookie": "session=abc; theme=dark",
        "Authorization": "Bearer token-123",
        "Origin": "https://127.0.0.1",
        "User-Agent": "test-agent/1.0",
        "X-Custom": "kept",
        "X-Forwarded-For": "6.6.6.6",  # spoofed by an untrusted client
        "Keep-Alive": "timeout=5",
    }
    path = "/a;b/%2F..%2f/x?x=1&x=2&t=%20sp"
    async with tls_bridge(WebSocketProxy(backend.url), cert_pair) as url:
        async with client(f"{url}{path}", client_ssl, additional_headers=headers) as ws:
            client_key = ws.request.headers["Sec-WebSocket-Key"]
        public_host = url.removeprefix("wss://")
    seen = backend.handshakes[0]
    assert seen.path == path
    for name in ("Cookie", "Authorization", "Origin", "User-Agent", "X-Custom"):
        assert seen.get(name) == [headers[name]]
    assert seen.get("Host") == [public_host]
    assert seen.get("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.get("X-Real-IP") == ["127.0.0.1"]
    assert seen.get("X-Forwarded-Proto") == ["https"]
    assert seen.get("X-Forwarded-Host") == [public_host]
    assert seen.get("Keep-Alive") == []
    assert seen.get("Sec-WebSocket-Key") != [client_key]


async def test_mount_prefix_is_removed_and_upstream_base_path_added(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    app = Starlette(routes=[Mount("/public", app=WebSocketProxy(f"{backend.url}/internal"))])
    async with tls_bridge(app, cert_pair) as url, client(f"{url}/public/ws?q=1", client_ssl):
        pass
    assert backend.handshakes[0].path == "/internal/ws?q=1"


async def test_backend_101_headers_reach_the_client(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    def set_cookie(connection: ServerConnection, request: Request, response: Response) -> None:
        response.headers["Set-Cookie"] = "sticky=backend-1; Path=/"

    async with (
        ws_backend(process_response=set_cookie) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl) as ws,
    ):
        assert ws.response.headers.get_all("Set-Cookie") == ["sticky=backend-1; Path=/"]


# Refusals ---------------------------------------------------------------------------------


async def test_backend_refusal_reaches_the_client_with_status_headers_and_body(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        response = connection.respond(403, "not for you\n")
        response.headers["X-Reason"] = "policy"
        return response

    async with (
        ws_backend(process_request=refuse) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
    ):
        with pytest.raises(InvalidStatus) as info:
            async with client(f"{url}/ws", client_ssl):
                pass
    response = info.value.response
    assert response.status_code == 403
    assert response.body == b"not for you\n"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["X-Reason"] == "policy"


async def test_backend_redirect_is_passed_on_not_followed(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    def redirect(connection: ServerConnection, request: Request) -> Response:
        return Response(302, "Found", Headers({"Location": "/elsewhere", "Content-Length": "0"}))

    async with (
        ws_backend(process_request=redirect) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
    ):
        status, headers, _ = await raw_handshake(url, client_ssl, "/ws")
    assert (status, headers["location"]) == (302, "/elsewhere")
    assert len(backend.handshakes) == 0 or all(h.path == "/ws" for h in backend.handshakes)


async def test_backend_unreachable_is_502(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with raw_server(never_answers) as port:
        pass  # the port is closed now: nothing listens there
    async with tls_bridge(WebSocketProxy(f"http://127.0.0.1:{port}"), cert_pair) as url:
        status, _, body = await raw_handshake(url, client_ssl, "/ws")
    assert status == 502
    assert b"127.0.0.1" not in body


async def test_backend_that_never_answers_the_handshake_is_504(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with raw_server(never_answers) as port:
        proxy = WebSocketProxy(f"http://127.0.0.1:{port}", open_timeout_s=0.5)
        async with tls_bridge(proxy, cert_pair) as url:
            async with asyncio.timeout(5):
                status, _, body = await raw_handshake(url, client_ssl, "/ws")
    assert status == 504
    assert body == b"WebSocket backend timed out\n"


async def test_origin_refused_with_403_before_the_backend_is_contacted(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    app = OriginCheckMiddleware(WebSocketProxy(backend.url), allow=["same-origin"])
    async with tls_bridge(app, cert_pair) as url:
        with pytest.raises(InvalidStatus) as info:
            async with client(f"{url}/ws", client_ssl, origin="https://evil.example"):
                pass
        async with client(f"{url}/ws", client_ssl, origin=url.replace("wss:", "https:")) as ws:
            await ws.send("same origin")
            assert await ws.recv() == "same origin"
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"403 Forbidden: Origin not allowed\n"
    assert len(backend.handshakes) == 1  # only the allowed one


async def test_client_leaving_during_the_backend_handshake_closes_the_backend_1001(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    async def slow_accept(connection: ServerConnection, request: Request) -> None:
        await asyncio.sleep(0.5)

    async with (
        ws_backend(process_request=slow_accept) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
    ):
        host, port = url.removeprefix("wss://").split(":")
        _, writer = await asyncio.open_connection(host, int(port), ssl=client_ssl)
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await asyncio.sleep(0.1)
        writer.close()
        await writer.wait_closed()
        assert await backend_close(backend) == (1001, "client went away")
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


# Close codes ------------------------------------------------------------------------------

CLOSES = [(1000, "bye"), (1001, "going away"), (4000, "custom"), (4999, "last private code")]


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_client_close_code_and_reason_reach_the_backend(
    code: int,
    reason: str,
    backend: RecordingBackend,
    cert_pair: CertificatePair,
    client_ssl: ssl.SSLContext,
) -> None:
    async with tls_bridge(WebSocketProxy(backend.url), cert_pair) as url:
        async with client(f"{url}/ws", client_ssl) as ws:
            await ws.close(code, reason)
        assert await backend_close(backend) == (code, reason)


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_backend_close_code_and_reason_reach_the_client(
    code: int, reason: str, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async def close_on_request(connection: ServerConnection) -> None:
        await connection.recv()
        await connection.close(code, reason)

    async with (
        ws_backend(close_on_request) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl) as ws,
    ):
        await ws.send("close please")
        assert await closed_with(ws) == (code, reason)


async def test_messages_sent_before_a_backend_close_are_delivered_first(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async def burst_then_close(connection: ServerConnection) -> None:
        await connection.recv()
        for number in range(20):
            await connection.send(str(number))
        await connection.close(4001, "done")

    async with (
        ws_backend(burst_then_close) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl) as ws,
    ):
        await ws.send("go")
        assert [await ws.recv() for _ in range(20)] == [str(n) for n in range(20)]
        assert await closed_with(ws) == (4001, "done")


async def test_empty_close_frame_from_backend_becomes_1000(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with raw_server(accept_then_empty_close) as port:
        proxy = WebSocketProxy(f"http://127.0.0.1:{port}")
        async with tls_bridge(proxy, cert_pair) as url, client(f"{url}/ws", client_ssl) as ws:
            assert await closed_with(ws) == (1000, "")


async def test_killed_backend_closes_the_client_with_1011(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    with backend_process() as (process, port):
        proxy = WebSocketProxy(f"http://127.0.0.1:{port}")
        async with tls_bridge(proxy, cert_pair) as url, client(f"{url}/ws", client_ssl) as ws:
            await ws.send("alive?")
            assert await ws.recv() == "alive?"
            os.kill(process.pid, signal.SIGKILL)
            assert await closed_with(ws) == (1011, "backend connection lost")


async def test_backend_that_stops_answering_pings_is_closed_1011(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with raw_server(accept_then_silence) as port:
        proxy = WebSocketProxy(
            f"http://127.0.0.1:{port}", ping_interval_s=0.2, ping_timeout_s=0.2, close_timeout_s=0.5
        )
        async with tls_bridge(proxy, cert_pair) as url, client(f"{url}/ws", client_ssl) as ws:
            assert (await closed_with(ws))[0] == 1011


async def test_backend_leg_is_pinged_at_the_interval_and_pongs_keep_it_open(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    pings: list[float] = []

    async def answers_pings(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        protocol = await accept_handshake(reader, writer)
        while data := await reader.read(65536):
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, Frame) and event.opcode == Opcode.PING:
                    pings.append(asyncio.get_running_loop().time())
            writer.write(b"".join(protocol.data_to_send()))  # the pongs (and echoes none)

    async with raw_server(answers_pings) as port:
        proxy = WebSocketProxy(
            f"http://127.0.0.1:{port}", ping_interval_s=0.2, ping_timeout_s=0.2, close_timeout_s=0.5
        )
        async with tls_bridge(proxy, cert_pair) as url, client(f"{url}/ws", client_ssl) as ws:
            await asyncio.sleep(1.3)
            assert ws.state is State.OPEN  # every ping was answered in time
            assert proxy.active_sessions == 1
    assert 3 <= len(pings) <= 8, pings  # about one per interval (tick 50 ms)
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(pings)), pings


# Idle timeout and shutdown ----------------------------------------------------------------


async def test_idle_session_is_closed_1001_on_both_legs(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    proxy = WebSocketProxy(backend.url, idle_timeout_s=0.6)
    async with tls_bridge(proxy, cert_pair) as url, client(f"{url}/ws", client_ssl) as ws:
        for _ in range(4):  # traffic keeps the session alive past the timeout
            await asyncio.sleep(0.3)
            await ws.send("tick")
            assert await ws.recv() == "tick"
        assert await closed_with(ws) == (1001, "idle timeout")
    assert await backend_close(backend) == (1001, "idle timeout")


async def test_proxy_shutdown_closes_sessions_1001_and_refuses_new_ones(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    proxy = WebSocketProxy(backend.url)
    async with tls_bridge(proxy, cert_pair) as url:
        async with client(f"{url}/ws", client_ssl) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            async with asyncio.timeout(10):
                await proxy.shutdown()
            assert await closed_with(ws) == (1001, "server shutdown")
        status, _, _ = await raw_handshake(url, client_ssl, "/ws")
    assert status == 503
    assert await backend_close(backend) == (1001, "server shutdown")
    assert proxy.active_sessions == 0


async def test_server_shutdown_closes_the_client_and_the_backend(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with tls_bridge(WebSocketProxy(backend.url), cert_pair) as url:
        ws = await client(f"{url}/ws", client_ssl)
        await ws.send("hi")
        assert await ws.recv() == "hi"
    # uvicorn closed the client leg itself (1012); the bridge relayed it to the backend.
    assert (await closed_with(ws))[0] == 1012
    assert (await backend_close(backend))[0] == 1012


async def test_cancelled_session_closes_both_legs_1001(backend: RecordingBackend) -> None:
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    incoming.put_nowait({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []
    accepted = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.accept":
            accepted.set()

    scope = {
        "type": "websocket",
        "scheme": "wss",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"gateway.test")],
        "client": ("127.0.0.1", 5000),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }
    task = asyncio.create_task(WebSocketProxy(backend.url)(scope, incoming.get, send))
    async with asyncio.timeout(10):
        await accepted.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent[-1] == {"type": "websocket.close", "code": 1001, "reason": "server shutdown"}
    assert await backend_close(backend) == (1001, "server shutdown")


# Backpressure -----------------------------------------------------------------------------


async def test_slow_backend_slows_the_client(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    release = asyncio.Event()
    received = [0]

    chunk, count = b"x" * 65536, 1024  # 64 MiB offered
    sent = [0]

    async def producer(ws: ClientConnection) -> None:
        for _ in range(count):
            await ws.send(chunk)
            sent[0] += len(chunk)

    async with (
        ws_backend(reads_after(release, received), max_queue=4) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl, compression=None) as ws,
    ):
        task = asyncio.create_task(producer(ws))
        stalled_at = await stalls(sent, len(chunk) * count)
        release.set()
        async with asyncio.timeout(30):
            await task
        await ws.close()
        async with asyncio.timeout(10):
            await backend.closed.wait()
    assert stalled_at < len(chunk) * count
    assert received[0] == len(chunk) * count


async def test_slow_client_slows_the_backend(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    chunk, count = b"y" * 65536, 1024
    sent = [0]

    async def fast_writer(connection: ServerConnection) -> None:
        await connection.recv()
        for _ in range(count):
            await connection.send(chunk)
            sent[0] += len(chunk)
        await connection.wait_closed()

    async with (
        ws_backend(fast_writer) as backend,
        tls_bridge(WebSocketProxy(backend.url), cert_pair) as url,
        client(f"{url}/ws", client_ssl, compression=None, max_queue=4) as ws,
    ):
        await ws.send("start")
        stalled_at = await stalls(sent, len(chunk) * count)
        total = 0
        async with asyncio.timeout(30):
            while total < len(chunk) * count:
                total += len(await ws.recv())
    assert stalled_at < len(chunk) * count


# Logging and plain HTTP ---------------------------------------------------------------------


async def test_one_log_line_per_session_without_secrets(
    backend: RecordingBackend,
    cert_pair: CertificatePair,
    client_ssl: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.websocket")
    secret_headers = {"Cookie": "sid=cookie-secret", "Authorization": "Bearer auth-secret"}
    async with tls_bridge(WebSocketProxy(backend.url), cert_pair) as url:
        async with client(
            f"{url}/chat?token=query-secret", client_ssl, additional_headers=secret_headers
        ) as ws:
            await ws.send("four")
            await ws.recv()
            await ws.close(4000, "bye")
        await backend_close(backend)
        await asyncio.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.websocket"]
    assert len(lines) == 1
    line = lines[0]
    assert "path=/chat " in line
    assert "up=1 msgs/4 B down=1 msgs/4 B" in line
    assert "close client=4000 backend=4000" in line
    assert "secret" not in line


async def test_lifespan_events_are_answered() -> None:
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(events)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await WebSocketProxy("http://127.0.0.1:1")({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_plain_http_request_gets_426(
    backend: RecordingBackend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async with tls_bridge(WebSocketProxy(backend.url), cert_pair) as url:
        host, port = url.removeprefix("wss://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), ssl=client_ssl)
        writer.write(f"GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 426 ")
    assert b"upgrade: websocket" in response.lower()
