"""TLS listener under bad input: plaintext on the TLS port, old protocols, handshake floods
and stalled handshakes (``timeouts.tls_handshake_s``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time

import httpx
import pytest

from gateway.tls import CertificatePair
from tests.conftest import GatewayFactory
from tests.robustness.helpers import open_fds, port_of, settle
from tests.servers import Backend, free_port, gateway_process, parse_response, raw_exchange

pytestmark = pytest.mark.timeout(90)


async def get_ok(url: str, client_ssl: ssl.SSLContext) -> float:
    """One fresh-connection GET; returns its latency in seconds."""
    start = time.perf_counter()
    async with httpx.AsyncClient(verify=client_ssl, timeout=10) as client:
        response = await client.get(f"{url}/echo")
    assert response.status_code == 200
    return time.perf_counter() - start


async def test_plain_http_to_tls_port_gets_400_and_server_keeps_serving(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    port = port_of(gateway)
    for _ in range(20):
        answer = await raw_exchange(port, b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        # nginx: "400 The plain HTTP request was sent to HTTPS port" - not an empty reply.
        status, headers, body = parse_response(answer)
        assert status == 400
        assert ("connection", "close") in headers
        assert b"plain HTTP request was sent to an HTTPS port; use https://" in body
    assert backend.requests == []
    # Logged once per client address per minute, not once per request.
    lines = [r for r in caplog.records if "plain HTTP request on the TLS port" in r.message]
    assert len(lines) == 1
    assert "from 127.0.0.1: answered 400" in lines[0].message
    await get_ok(gateway, client_ssl)
    assert len(backend.requests) == 1


async def test_plain_http_redirect_mode_and_garbage_before_tls(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    upstream = f"http://127.0.0.1:{backend.port}"
    async with gateway_factory(upstream, listen={"plain_http": "redirect"}) as url:
        await _redirects_plain_http(port_of(url))
        await get_ok(url, client_ssl)


async def _redirects_plain_http(port: int) -> None:
    moved = await raw_exchange(port, b"GET /a?b=1 HTTP/1.1\r\nHost: localhost:%d\r\n\r\n" % port)
    status, headers, _ = parse_response(moved)
    assert status == 308
    assert ("location", f"https://localhost:{port}/a?b=1") in headers
    # No usable Host or a scheme-relative target: no redirect anywhere, a 400.
    for head in (b"GET //evil.example/ HTTP/1.1\r\nHost: \r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
                 b"GET / HTTP/1.0\r\n\r\n"):  # fmt: skip
        assert parse_response(await raw_exchange(port, head))[0] == 400
    # Bytes that are neither TLS nor HTTP go to TLS, which refuses them: no answer in clear.
    answer = await raw_exchange(port, b"\x00\x01garbage\r\n\r\n")
    assert answer == b"" or answer[0] == 0x15, answer[:40]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1.* is deprecated:DeprecationWarning")
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
async def test_old_tls_versions_refused(version: str, gateway: str, backend: Backend) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls_version = getattr(ssl.TLSVersion, version)
    context.minimum_version = tls_version
    context.maximum_version = tls_version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")

    async def handshake() -> None:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port_of(gateway), ssl=context, server_hostname="localhost"
            )
            writer.close()

    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake()
    assert backend.requests == []


# The start of a TLS 1.2 ClientHello record: type 22, version 3.1, length 512, then
# handshake type 1 and a length - but only the first few bytes of the body.
HALF_CLIENT_HELLO = bytes.fromhex("1603010200010001fc0303") + b"\x00" * 20


@pytest.mark.parametrize("kind", ["silent", "half_hello", "garbage"])
async def test_handshake_flood_is_bounded_and_others_are_served(
    kind: str, gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    port = port_of(gateway)
    tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(200):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            if kind == "half_hello":
                writer.write(HALF_CLIENT_HELLO)
            elif kind == "garbage":
                writer.write(b"\x16\x03\x01\xff\xff" + b"\xaa" * 100)
            writers.append(writer)
        await asyncio.gather(*(w.drain() for w in writers))
        # With 200 stalled handshakes open, a normal client is still served promptly.
        latencies = [await get_ok(gateway, client_ssl) for _ in range(5)]
        assert max(latencies) < 2.0, latencies
    finally:
        for writer in writers:
            writer.transport.abort()
    assert len(backend.requests) == 5
    tasks, fds = await settle(tasks_before, fds_before, fd_slack=6)
    assert tasks <= tasks_before
    assert fds <= fds_before + 6


# timeouts.tls_handshake_s -------------------------------------------------------------------


Stalled = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def stall(port: int, kind: str) -> Stalled:
    """A connection that starts a TLS handshake (or not) and never finishes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if kind == "half_hello":
        writer.write(HALF_CLIENT_HELLO)
        await writer.drain()
    return reader, writer


async def dropped_after(stalled: Stalled, limit_s: float) -> float:
    """Seconds until the server closes (EOF, reset or a TLS alert then EOF); fails at limit_s."""
    reader, writer = stalled
    start = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
    finally:
        writer.transport.abort()
    return time.perf_counter() - start


@pytest.mark.parametrize("kind", ["silent", "half_hello"])
async def test_stalled_handshake_is_dropped_after_tls_handshake_s(
    kind: str, backend: Backend, gateway_factory: GatewayFactory
) -> None:
    upstream = f"http://127.0.0.1:{backend.port}"
    async with gateway_factory(upstream, timeouts={"tls_handshake_s": 1}) as url:
        elapsed = await dropped_after(await stall(port_of(url), kind), 5)
    # Dropped by the handshake timer: not at once, and well before asyncio's 60 s.
    assert 0.8 <= elapsed < 4, elapsed
    assert backend.requests == []


async def test_flood_of_stalled_handshakes_is_dropped_and_others_are_served(
    backend: Backend, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    upstream = f"http://127.0.0.1:{backend.port}"
    tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()
    async with gateway_factory(upstream, timeouts={"tls_handshake_s": 1}) as url:
        start = time.perf_counter()
        flood = [await stall(port_of(url), "half_hello") for _ in range(200)]
        # Normal clients complete their handshakes and are served during the flood.
        latencies = [await get_ok(url, client_ssl) for _ in range(5)]
        assert max(latencies) < 2.0, latencies
        # Every stalled connection is closed by the server, about 1 s after it opened.
        await asyncio.gather(*(dropped_after(stalled, 6) for stalled in flood))
        assert time.perf_counter() - start < 6
        await get_ok(url, client_ssl)
    assert len(backend.requests) == 6
    tasks, fds = await settle(tasks_before, fds_before, fd_slack=6)
    assert tasks <= tasks_before
    assert fds <= fds_before + 6


async def test_gateway_process_drops_stalled_handshakes(
    backend: Backend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    # `gateway run`: the CLI's listeners (passed as sockets) on its own loop (uvloop).
    port = free_port()
    env = {
        "GATEWAY_LISTEN__HOST": "127.0.0.1",
        "GATEWAY_LISTEN__PORT": str(port),
        "GATEWAY_LISTEN__CERTFILE": str(cert_pair.certfile),
        "GATEWAY_LISTEN__KEYFILE": str(cert_pair.keyfile),
        "GATEWAY_ROUTES": json.dumps(
            [{"prefix": "/", "upstream": f"http://127.0.0.1:{backend.port}"}]
        ),
        "GATEWAY_TIMEOUTS__TLS_HANDSHAKE_S": "1",
        "GATEWAY_LOG__LEVEL": "warning",
    }
    async with gateway_process([sys.executable, "-m", "gateway", "run"], port, env) as process:
        assert process.stderr is not None
        flood = [await stall(port, kind) for kind in ("silent", "half_hello") * 10]
        await get_ok(f"https://localhost:{port}", client_ssl)
        elapsed = await asyncio.gather(*(dropped_after(stalled, 5) for stalled in flood))
        assert max(elapsed) < 4, elapsed
        await get_ok(f"https://localhost:{port}", client_ssl)
    assert len(backend.requests) == 2
