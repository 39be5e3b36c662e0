"""TLS listener under bad input: plaintext on the TLS port, old protocols, handshake floods."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import httpx
import pytest

from tests.robustness.helpers import open_fds, port_of, settle
from tests.servers import Backend

pytestmark = pytest.mark.timeout(90)


async def get_ok(url: str, client_ssl: ssl.SSLContext) -> float:
    """One fresh-connection GET; returns its latency in seconds."""
    start = time.perf_counter()
    async with httpx.AsyncClient(verify=client_ssl, timeout=10) as client:
        response = await client.get(f"{url}/echo")
    assert response.status_code == 200
    return time.perf_counter() - start


async def test_plaintext_http_to_tls_port_is_closed_and_server_keeps_serving(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    port = port_of(gateway)
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read(65536)
            while chunk := await reader.read(65536):
                answer += chunk
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        # Either nothing (closed) or a TLS alert record (content type 21): never an HTTP
        # answer in the clear, never a hang.
        assert answer == b"" or answer[0] == 0x15, answer[:40]
    assert backend.requests == []
    await get_ok(gateway, client_ssl)
    assert len(backend.requests) == 1


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
