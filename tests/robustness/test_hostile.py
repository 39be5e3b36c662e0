"""Hostile clients against ``gateway run`` (a real process, its memory read from /proc):
ping and fragment floods from clients that do not read."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.tls import CertificatePair
from tests.conftest import GatewayFactory
from tests.proxy.ws_servers import ws_backend
from tests.robustness.helpers import port_of
from tests.servers import free_port, gateway_process

GATEWAY = [sys.executable, "-m", "gateway"]

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

MiB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame (masked with a zero key, which leaves the payload as it is)."""
    first = (0x80 if fin else 0) | opcode
    assert len(payload) < 126
    return bytes([first, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


@contextmanager
def raw_websocket(port: int, client_ssl: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    """A WSS connection after the opening handshake, with a small receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    tls = client_ssl.wrap_socket(sock, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16))
    tls.sendall(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    try:
        yield tls
    finally:
        tls.close()


def flood(tls: ssl.SSLSocket, block: bytes, total: int, budget_s: float) -> int:
    """Send ``block`` until ``total`` bytes went out, the peer stops taking them for 2 s,
    or ``budget_s`` passes; returns the bytes sent."""
    tls.settimeout(2.0)
    sent = 0
    deadline = time.monotonic() + budget_s
    try:
        while sent < total and time.monotonic() < deadline:
            tls.sendall(block)
            sent += len(block)
    except (TimeoutError, OSError):
        pass
    return sent


def gateway_config(tmp_path: Path, backend_url: str, pair: CertificatePair) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[listen]\ncertfile = "{pair.certfile}"\nkeyfile = "{pair.keyfile}"\n'
        '[origin]\nallow = ["*"]\n'
        f'[[routes]]\nupstream = "{backend_url}"\n'
    )
    return config


def ping_flood(port: int, client_ssl: ssl.SSLContext, pid: int) -> tuple[int, int]:
    """Flood pings without reading; (bytes sent, gateway RSS growth)."""
    with raw_websocket(port, client_ssl) as tls:
        time.sleep(0.5)
        before = rss_bytes(pid)
        pings = masked(0x9, b"p" * 125) * 8192  # 1 MiB of pings
        sent = flood(tls, pings, 131 * 1_000_000, 30)
        time.sleep(1.0)
        return sent, rss_bytes(pid) - before


def fragment_flood(
    port: int, client_ssl: ssl.SSLContext, pid: int, payload: bytes
) -> tuple[int, int, bytes]:
    """Open a text message and flood continuation frames; (sent, RSS growth, answer)."""
    with raw_websocket(port, client_ssl) as tls:
        time.sleep(0.5)
        before = rss_bytes(pid)
        tls.sendall(masked(0x1, b"x", fin=False))
        fragments = masked(0x0, payload, fin=False) * 10_000
        sent = flood(tls, fragments, 900_000 * 7, 30)
        tls.settimeout(5)
        answer = b""
        try:
            while chunk := tls.recv(4096):
                answer += chunk
        except (TimeoutError, OSError):
            pass
        return sent, rss_bytes(pid) - before, answer


async def test_ping_flood_from_a_client_that_never_reads_holds_no_memory(
    tmp_path: Path, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    port = free_port()
    async with ws_backend() as backend:
        config = gateway_config(tmp_path, backend.url, cert_pair)
        args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        env = {"GATEWAY_LISTEN__PORT": str(port), "GATEWAY_STATE_DIR": str(tmp_path)}
        async with gateway_process(args, port, env) as process:
            sent, grown = await asyncio.to_thread(ping_flood, port, client_ssl, process.pid)
    print(f"\nping flood: {sent / MiB:.1f} MiB of pings sent, gateway RSS +{grown / MiB:.1f} MiB")
    # main grew by 77-122 MiB for 131 MB of pings; now the client is stopped early.
    assert grown < 8 * MiB, (sent, grown)


@pytest.mark.parametrize("payload", [b"x", b""], ids=["one-byte", "empty"])
async def test_fragment_flood_is_refused_like_a_big_message(
    payload: bytes, tmp_path: Path, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    port = free_port()
    async with ws_backend() as backend:
        config = gateway_config(tmp_path, backend.url, cert_pair)
        args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        env = {"GATEWAY_LISTEN__PORT": str(port), "GATEWAY_STATE_DIR": str(tmp_path)}
        async with gateway_process(args, port, env) as process:
            sent, grown, answer = await asyncio.to_thread(
                fragment_flood, port, client_ssl, process.pid, payload
            )
    print(f"\nfragment flood: {sent / MiB:.1f} MiB sent, gateway RSS +{grown / MiB:.1f} MiB")
    # A close frame with 1009 (message too big), and little memory held meanwhile.
    assert b"\x88" in answer
    close = answer[answer.index(b"\x88") :]
    assert struct.unpack("!H", close[2:4])[0] == 1009, answer
    assert grown < 8 * MiB, (sent, grown)


def stalled_reader(port: int, client_ssl: ssl.SSLContext, wait_s: float) -> tuple[float, bytes]:
    """Read nothing for ``wait_s``, then read what is left; (seconds until EOF, tail)."""
    with raw_websocket(port, client_ssl) as tls:
        start = time.monotonic()
        time.sleep(wait_s)
        tls.settimeout(10)
        tail = b""
        try:
            while chunk := tls.recv(65536):
                tail = chunk
        except (TimeoutError, OSError):
            pass
        return time.monotonic() - start, tail


async def test_a_client_that_keeps_the_write_buffer_full_is_cut_off(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async def spam(connection: ServerConnection) -> None:
        block = b"x" * 60_000
        with contextlib.suppress(ConnectionClosed):
            for _ in range(2_000):  # 120 MB, far more than any buffer on the way
                await connection.send(block)

    async with (
        ws_backend(spam) as backend,
        gateway_factory(backend.url, timeouts={"send_s": 1}, origin={"allow": ["*"]}) as url,
    ):
        elapsed, _ = await asyncio.to_thread(stalled_reader, port_of(url), client_ssl, 4.0)
    # Cut off about send_s after its buffers filled: the reader then drains what the
    # kernel held and sees the end well before the 120 MB could have arrived.
    assert elapsed < 4.0 + 9.0
