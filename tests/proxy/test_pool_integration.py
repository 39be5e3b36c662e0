"""Upstream pools over real sockets: several backends on loopback, some in their own process.

The gateway here is a ``ReverseProxy`` and a ``WebSocketProxy`` sharing one ``Upstream``,
served by uvicorn; the test plays the lifespan (``start()``/``aclose()``). A header
``x-test-client`` stands in for the client-IP middleware (``scope["state"]["client_ip"]``),
since every test client connects from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.proxy.http import ReverseProxy
from gateway.proxy.websocket import WebSocketProxy
from gateway.tls import CertificatePair
from gateway.upstream import HealthCheck, Target, Upstream
from tests.servers import (
    QuietServer,
    eventually,
    plain_config,
    raw_server,
    read_request_head,
    run_server,
)

# -- backends --------------------------------------------------------------------------


class Named:
    """A backend (HTTP and WebSocket) that answers with its name.

    HTTP: ``/healthz`` 200 or 503 (``healthy``), ``/hold`` waits for ``release``,
    ``/status/N`` answers N, ``/redirect`` 302 to its own URL; the body is always
    ``"<name> <raw path> <body bytes>"``.
    WebSocket: ``/refuse`` is refused (403); otherwise accepts and sends its name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.probes = 0
        self.sessions = 0
        self.healthy = True
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        path: str = scope["path"]
        status = 200
        if path == "/healthz":
            self.probes += 1
            status = 200 if self.healthy else 503
        else:
            self.hits += 1
        if path == "/hold":
            self.holding.set()
            await self.release.wait()
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        body = f"{self.name} {scope['raw_path'].decode()} {size}".encode()
        headers = [(b"content-length", str(len(body)).encode())]
        if path == "/redirect":
            status = 302
            headers.append((b"location", f"{self.url}/landed".encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        self.sessions += 1
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": f"{self.name} {scope['raw_path'].decode()}"})
        while (await receive())["type"] != "websocket.disconnect":
            pass


@contextlib.asynccontextmanager
async def named_backends(*names: str, **config: Any) -> AsyncIterator[list[Named]]:
    async with contextlib.AsyncExitStack() as stack:
        backends = []
        for name in names:
            backend = Named(name)
            port = await stack.enter_async_context(run_server(plain_config(backend, **config)))
            scheme = "https" if "ssl_certfile" in config else "http"
            backend.url = f"{scheme}://127.0.0.1:{port}"
            backends.append(backend)
        yield backends


@contextlib.asynccontextmanager
async def unix_backend(app: Named, path: Path) -> AsyncIterator[None]:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(64)
    server = QuietServer(plain_config(app))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await task
        sock.close()


KILLABLE = """
import socket, sys, uvicorn

name, port = sys.argv[1], int(sys.argv[2])

async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": name + " " + scope["path"]})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = f"{name} {scope['path']} {size}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen(128)
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
uvicorn.Server(config).run(sockets=[sock])
"""


class BackendProcess:
    """A backend in its own process (``Named``-like answers), killed and restarted by PID."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILLABLE, self.name, str(self.port),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line.strip().isdigit(), f"backend did not start: {line!r}"
        self.port = int(line)
        self.process = process

    async def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.kill()  # SIGKILL to this PID only
            await process.wait()


@contextlib.asynccontextmanager
async def backend_process(name: str) -> AsyncIterator[BackendProcess]:
    backend = BackendProcess(name)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.kill()


def dead_url() -> str:
    """An address where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- the gateway -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_gateway(
    upstream: Upstream, states: list[dict[str, Any]] | None = None, **proxy_options: Any
) -> AsyncIterator[str]:
    """Serve HTTP and WebSocket through ``upstream``; yield ``http://127.0.0.1:port``.

    ``states`` collects ``scope["state"]`` of each HTTP request once it is answered.
    """
    http = ReverseProxy(upstream, **proxy_options)
    bridge = WebSocketProxy(upstream, open_timeout_s=5)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if states is not None:
            states.append(scope.setdefault("state", {}))
        for name, value in scope.get("headers", ()):
            if name == b"x-test-client":
                scope.setdefault("state", {})["client_ip"] = value.decode()
        if scope["type"] == "http":
            await http(scope, receive, send)
        elif scope["type"] == "websocket":
            await bridge(scope, receive, send)

    await upstream.start()
    try:
        async with run_server(plain_config(app)) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        await upstream.aclose()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as http:
        yield http


async def names(client: httpx.AsyncClient, url: str, count: int, **kwargs: Any) -> list[str]:
    result = []
    for _ in range(count):
        response = await client.get(url, **kwargs)
        assert response.status_code == 200, response.text
        result.append(response.text.split()[0])
    return result


async def ws_name(gateway: str, path: str = "/", client_ip: str | None = None) -> str:
    headers = {"x-test-client": client_ip} if client_ip else {}
    async with connect(gateway.replace("http", "ws") + path, additional_headers=headers) as ws:
        message = await ws.recv()
        assert isinstance(message, str)
        return message


def assert_no_active(upstream: Upstream) -> None:
    assert [status.active for status in upstream.status()] == [0] * len(upstream.targets)


# -- balancing -------------------------------------------------------------------------


async def test_round_robin_spreads_load_by_weight(client: httpx.AsyncClient) -> None:
    async with named_backends("a", "b") as (a, b):
        upstream = Upstream([Target(a.url, weight=3), Target(b.url, weight=1)])
        async with serve_gateway(upstream) as gateway:
            seen = await names(client, f"{gateway}/x", 40)
    assert (a.hits, b.hits) == (30, 10)
    assert seen[:4] == ["a", "a", "b", "a"]  # spread out, not in runs
    assert_no_active(upstream)


async def test_least_conn_avoids_the_busy_target(client: httpx.AsyncClient) -> None:
    async with named_backends("a", "b") as backends:
        upstream = Upstream([b.url for b in backends], balance="least_conn")
        async with serve_gateway(upstream) as gateway:
            held = asyncio.create_task(client.get(f"{gateway}/hold"))
            await eventually(lambda: any(b.holding.is_set() for b in backends))
            busy = next(b for b in backends if b.holding.is_set())
            seen = await names(client, f"{gateway}/x", 6)
            assert busy.name not in seen
            # WebSocket sessions count as active connections too.
            for backend in backends:
                backend.release.set()
            assert (await held).status_code == 200
            async with connect(gateway.replace("http", "ws") + "/") as first:
                name = str(await first.recv()).split()[0]
                second = (await ws_name(gateway)).split()[0]
                assert second != name
    assert_no_active(upstream)


async def test_ip_hash_keeps_a_client_on_one_target_for_http_and_websocket(
    client: httpx.AsyncClient,
) -> None:
    async with named_backends("a", "b", "c") as backends:
        upstream = Upstream([b.url for b in backends], balance="ip_hash")
        async with serve_gateway(upstream) as gateway:
            placed = {}
            for n in range(12):
                ip = f"203.0.113.{n}"
                seen = set(await names(client, f"{gateway}/x", 3, headers={"x-test-client": ip}))
                assert len(seen) == 1, (ip, seen)
                placed[ip] = seen.pop()
                assert (await ws_name(gateway, "/", ip)).split()[0] == placed[ip]
    assert len(set(placed.values())) > 1  # different clients do spread


async def test_a_5xx_answer_is_passed_on_and_not_a_failure(client: httpx.AsyncClient) -> None:
    async with named_backends("a", "b") as (a, b):
        upstream = Upstream([a.url, b.url])
        async with serve_gateway(upstream) as gateway:
            response = await client.get(f"{gateway}/status/503")
    assert response.status_code == 503
    assert (a.hits, b.hits) == (1, 0)  # not retried
    assert all(status.available and status.fails == 0 for status in upstream.status())


# -- failover and retries --------------------------------------------------------------


async def test_killed_backend_is_skipped_without_a_failed_request(
    client: httpx.AsyncClient,
) -> None:
    async with named_backends("a") as (a,), backend_process("b") as b:
        upstream = Upstream([a.url, b.url], fail_timeout_s=30)
        async with serve_gateway(upstream) as gateway:
            assert set(await names(client, f"{gateway}/x", 4)) == {"a", "b"}
            await b.kill()
            assert set(await names(client, f"{gateway}/x", 10)) == {"a"}
            response = await client.post(f"{gateway}/x")  # nothing was sent: safe to retry
            assert response.status_code == 200
            assert response.text.startswith("a ")
            assert await ws_name(gateway) == "a /"
    killed = upstream.status()[1]
    assert not killed.available
    assert killed.last_error in ("connect_error", "error", "invalid_response")
    assert_no_active(upstream)


async def test_restarted_backend_comes_back_after_fail_timeout(client: httpx.AsyncClient) -> None:
    async with named_backends("a") as (a,), backend_process("b") as b:
        upstream = Upstream([a.url, b.url], fail_timeout_s=0.5)
        async with serve_gateway(upstream) as gateway:
            await b.kill()
            assert set(await names(client, f"{gateway}/x", 6)) == {"a"}
            await b.start()  # the same port again
            await asyncio.sleep(0.6)
            assert "b" in await names(client, f"{gateway}/x", 4)
            assert upstream.status()[1].available


async def test_streamed_post_to_a_dead_target_is_retried(client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 4096
            await asyncio.sleep(0.01)

    async with named_backends("a") as (a,):
        upstream = Upstream([dead_url(), a.url])  # the dead one comes first
        async with serve_gateway(upstream) as gateway:
            response = await client.post(f"{gateway}/upload", content=body())
    assert response.status_code == 200
    assert response.text == "a /upload 32768"
    assert upstream.status()[0].last_error == "connect_error"


async def dies_mid_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the head and a little of the body, then goes away without an answer."""
    await read_request_head(reader)
    await reader.read(10)


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_request_whose_body_flowed_is_not_retried(
    method: str, client: httpx.AsyncClient
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 1024
            await asyncio.sleep(0.02)

    async with raw_server(dies_mid_request) as port, named_backends("a") as (a,):
        upstream = Upstream([f"http://127.0.0.1:{port}", a.url])
        async with serve_gateway(upstream) as gateway:
            response = await client.request(method, f"{gateway}/upload", content=body())
    assert response.status_code == 502
    assert "127.0.0.1" not in response.text
    assert a.hits == 0
    assert_no_active(upstream)


async def test_a_body_that_came_whole_is_replayed_for_an_idempotent_retry(
    client: httpx.AsyncClient,
) -> None:
    """A body whole in its first message is kept in memory (nginx's buffered body): a PUT
    whose backend failed after taking part of it goes to the next target whole. A POST is
    never sent twice."""
    async with raw_server(dies_mid_request) as port, named_backends("a") as (a,):
        upstream = Upstream([f"http://127.0.0.1:{port}", a.url], max_fails=5)
        async with serve_gateway(upstream) as gateway:
            # Round robin: the POST, then the second PUT go to the failing backend first.
            post = await client.post(f"{gateway}/upload", content=b"z" * 5000)
            puts = [await client.put(f"{gateway}/upload", content=b"z" * 5000) for _ in "12"]
    assert post.status_code == 502
    assert [(put.status_code, put.text) for put in puts] == [(200, "a /upload 5000")] * 2
    assert a.hits == 2
    assert [status.selected for status in upstream.status()] == [2, 2]
    assert_no_active(upstream)


async def answers_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request head, then closes without a response."""
    await read_request_head(reader)


async def test_idempotent_request_is_retried_when_the_backend_fails_before_answering(
    client: httpx.AsyncClient,
) -> None:
    async with raw_server(answers_nothing) as port, named_backends("a") as (a,):
        upstream = Upstream([f"http://127.0.0.1:{port}", a.url], max_fails=5)
        async with serve_gateway(upstream) as gateway:
            # Round robin: the POST, then the second GET go to the failing backend first.
            # The POST went out before the backend failed: it may have acted on it.
            post = await client.post(f"{gateway}/x")
            gets = [await client.get(f"{gateway}/x") for _ in range(2)]
    assert post.status_code == 502
    assert [(get.status_code, get.text) for get in gets] == [(200, "a /x 0")] * 2
    assert a.hits == 2
    assert [status.selected for status in upstream.status()] == [2, 2]
    assert upstream.status()[0].last_error == "invalid_response"


async def test_max_tries_bounds_the_attempts(client: httpx.AsyncClient) -> None:
    async with named_backends("a") as (a,):
        upstream = Upstream([dead_url(), dead_url(), dead_url(), a.url], max_tries=2)
        async with serve_gateway(upstream) as gateway:
            first = await client.get(f"{gateway}/x")
            second = await client.get(f"{gateway}/x")  # the first two are out now
    assert first.status_code == 502
    assert second.status_code == 200
    assert [status.selected for status in upstream.status()] == [1, 1, 1, 1]


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request_head(reader)
    await reader.read()


async def test_try_timeout_bounds_the_time_for_retries(client: httpx.AsyncClient) -> None:
    async with raw_server(never_answers) as port, named_backends("a") as (a,):
        upstream = Upstream([f"http://127.0.0.1:{port}", a.url], try_timeout_s=0.2)
        timeout = httpx.Timeout(connect=5.0, read=0.5, write=5.0, pool=5.0)
        async with serve_gateway(upstream, timeout=timeout) as gateway:
            response = await client.get(f"{gateway}/x")
    assert response.status_code == 504  # the read timed out after the try budget
    assert a.hits == 0


async def test_all_targets_down_gives_503_with_retry_after(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = Upstream([dead_url(), dead_url()], fail_timeout_s=30)
    with caplog.at_level(logging.WARNING):
        async with serve_gateway(upstream) as gateway:
            first = await client.get(f"{gateway}/x")
            second = await client.get(f"{gateway}/x")
            with pytest.raises(InvalidStatus) as refused:
                await ws_name(gateway)
    assert first.status_code == 502  # the request that found them down
    assert second.status_code == 503
    assert 28 <= int(second.headers["retry-after"]) <= 30
    assert "127.0.0.1" not in second.text
    ws_response = refused.value.response
    assert ws_response.status_code == 503
    assert int(ws_response.headers["retry-after"]) >= 28
    assert "no target available" in caplog.text


async def test_websocket_handshake_moves_on_to_the_next_target() -> None:
    async with named_backends("a") as (a,):
        upstream = Upstream([dead_url(), a.url])
        async with serve_gateway(upstream) as gateway:
            assert await ws_name(gateway, "/chat?room=1") == "a /chat"
            # A refusal is the backend's answer: passed on, not retried.
            with pytest.raises(InvalidStatus) as refused:
                await ws_name(gateway, "/refuse")
    assert refused.value.response.status_code == 403
    assert a.sessions == 2
    assert_no_active(upstream)


# -- active health ---------------------------------------------------------------------


async def test_active_health_takes_a_target_out_and_back(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    check = HealthCheck(interval_s=0.05, timeout_s=1, healthy_threshold=2, unhealthy_threshold=2)
    async with named_backends("a", "b") as (a, b):
        upstream = Upstream([a.url, b.url, dead_url()], health=check)
        with caplog.at_level(logging.WARNING, "gateway.upstream"):
            async with serve_gateway(upstream) as gateway:
                await eventually(lambda: upstream.status()[2].healthy is False)
                b.healthy = False
                await eventually(lambda: upstream.status()[1].healthy is False)
                assert set(await names(client, f"{gateway}/x", 6)) == {"a"}
                b.healthy = True
                await eventually(lambda: upstream.status()[1].healthy is True)
                assert "b" in await names(client, f"{gateway}/x", 4)
        probes = b.probes
        await asyncio.sleep(0.2)
        assert b.probes == probes  # aclose() stopped the checks
    assert f"{b.url} is unhealthy after 2 failed probes (status 503)" in caplog.text
    assert f"{b.url} is healthy again (status 200)" in caplog.text
    assert "is unhealthy after 2 failed probes (ConnectError" in caplog.text


# -- Unix sockets and upstream TLS -----------------------------------------------------


async def test_unix_socket_backend(tmp_path: Path, client: httpx.AsyncClient) -> None:
    app = Named("u")
    path = tmp_path / "app.sock"
    async with unix_backend(app, path):
        upstream = Upstream([f"unix:{path}:/base"])
        async with serve_gateway(upstream) as gateway:
            response = await client.post(f"{gateway}/x?q=1", content=b"12345")
            assert response.status_code == 200
            assert response.text == "u /base/x 5"
            assert await ws_name(gateway, "/socket") == "u /base/socket"


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def tls_backend_config(cert_pair: CertificatePair) -> dict[str, Any]:
    return {"ssl_certfile": str(cert_pair.certfile), "ssl_keyfile": str(cert_pair.keyfile)}


async def test_https_backend_verified_with_a_ca_bundle(
    ca_bundle: str, tls_backend_config: dict[str, Any], client: httpx.AsyncClient
) -> None:
    async with named_backends("s", **tls_backend_config) as (s,):
        upstream = Upstream([s.url], ca_bundle=ca_bundle)
        async with serve_gateway(upstream) as gateway:
            response = await client.get(f"{gateway}/x")
            assert response.text == "s /x 0"
            assert await ws_name(gateway, "/w") == "s /w"  # wss:// to the same target


async def test_https_backend_with_the_wrong_ca_fails_with_502(
    tmp_path: Path,
    tls_backend_config: dict[str, Any],
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with named_backends("s", **tls_backend_config) as (s,):
        upstream = Upstream([s.url], ca_bundle=str(other))
        with caplog.at_level(logging.WARNING):
            async with serve_gateway(upstream) as gateway:
                response = await client.get(f"{gateway}/x")
    assert response.status_code == 502
    assert s.hits == 0
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_https_backend_without_verification_works_with_a_warning(
    tls_backend_config: dict[str, Any],
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with named_backends("s", **tls_backend_config) as (s,):
        with caplog.at_level(logging.WARNING, "gateway.upstream"):
            upstream = Upstream([s.url], verify=False)
        async with serve_gateway(upstream) as gateway:
            response = await client.get(f"{gateway}/x")
            assert response.text == "s /x 0"
    assert "NOT verified" in caplog.text
    assert isinstance(upstream.ssl_context, ssl.SSLContext)


# -- the proxies' contract with an Upstream --------------------------------------------


async def test_location_of_the_chosen_target_is_rewritten(client: httpx.AsyncClient) -> None:
    async with named_backends("a", "b") as backends:
        upstream = Upstream([b.url for b in backends])
        async with serve_gateway(upstream) as gateway:
            for _ in range(2):  # one from each target
                response = await client.get(f"{gateway}/redirect")
                assert response.status_code == 302
                assert response.headers["location"] == f"{gateway}/landed"


async def test_failed_attempts_are_left_for_the_metrics(client: httpx.AsyncClient) -> None:
    states: list[dict[str, Any]] = []
    async with named_backends("a") as (a,):
        upstream = Upstream([dead_url(), a.url], fail_timeout_s=30)
        async with serve_gateway(upstream, states) as gateway:
            assert (await client.get(f"{gateway}/x")).status_code == 200
            assert (await client.get(f"{gateway}/x")).status_code == 200
    assert isinstance(states[0]["upstream_error"], httpx.ConnectError)
    assert "upstream_error" not in states[1]  # the dead target was skipped

    states.clear()
    upstream = Upstream([dead_url(), dead_url()], fail_timeout_s=30)
    async with serve_gateway(upstream, states) as gateway:
        await client.get(f"{gateway}/x")
        await client.get(f"{gateway}/x")
    assert [type(error) for error in states[0]["upstream_error"]] == [httpx.ConnectError] * 2
    assert states[1]["upstream_error"] == "no_healthy_target"


async def test_standalone_proxy_runs_the_health_checks_in_its_lifespan() -> None:
    check = HealthCheck(interval_s=0.05, timeout_s=1)
    async with named_backends("a") as (a,):
        upstream = Upstream([a.url], health=check)
        proxy = ReverseProxy(upstream)
        async with run_server(plain_config(proxy, lifespan="on")) as port:
            await eventually(lambda: a.probes >= 2)
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{port}/x")
                assert response.text == "a /x 0"
        probes = a.probes
        await asyncio.sleep(0.2)
        assert a.probes == probes


def test_an_upstream_brings_its_own_transport_and_tls() -> None:
    upstream = Upstream(["https://a", "https://b"])
    with pytest.raises(ValueError, match="transport"):
        ReverseProxy(upstream, transport=httpx.AsyncHTTPTransport())
    with pytest.raises(ValueError, match="TLS"):
        WebSocketProxy(upstream, backend_ssl=ssl.create_default_context())
    assert repr(ReverseProxy(upstream)).startswith("ReverseProxy(Upstream(")
