"""Automatic HTTPS end to end against a real ACME CA (pebble): obtaining certificates
with either challenge, serving their chains by SNI, reusing them after a restart,
renewing under an open WebSocket session, surviving a failing CA, rejected nonces, a
challenge that cannot succeed, and several workers ordering once."""

from __future__ import annotations

import asyncio
import re
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.tls import CertificatePair
from tests.acme_fixture import (
    Pebble,
    certificate_from_pebble,
    gateway_run,
    issuer,
    pebble,
    peer_certificate,
    require_pebble,
    trusting,
)
from tests.servers import Backend, eventually, free_port, plain_config, run_server

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture(autouse=True)
def _pebble_installed() -> None:
    require_pebble()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A plain ws:// echo backend."""

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
async def backend_port() -> AsyncIterator[int]:
    app = Backend()
    async with run_server(plain_config(app)) as port:
        yield port


def write_settings(
    path: Path,
    ca: Pebble,
    pair: CertificatePair,
    backend_port: int,
    echo_port: int,
    domains: list[str],
    *,
    challenges: list[str] | None = None,
    renew_before_days: float = 30,
) -> None:
    redirect = f"redirect_port = {ca.http_port}\n" if challenges != ["tls-alpn-01"] else ""
    chosen = f"challenges = {challenges!r}\n".replace("'", '"') if challenges else ""
    path.write_text(
        f'[listen]\nhost = "127.0.0.1"\nport = {ca.tls_port}\ncertfile = "{pair.certfile}"\n'
        f'keyfile = "{pair.keyfile}"\n{redirect}'
        f'[acme]\ndirectory = "{ca.directory}"\nca_bundle = "{ca.ca_bundle}"\n'
        f'storage = "{path.parent / "acme"}"\ndomains = {domains!r}\n'.replace("'", '"')
        + f"{chosen}renew_before_days = {renew_before_days}\ncheck_interval_s = 1\n"
        "retry_min_s = 1\nretry_max_s = 8\n"
        f"[timeouts]\nshutdown_grace_s = 1\n"
        f'[[routes]]\nprefix = "/ws"\nupstream = "http://127.0.0.1:{echo_port}"\n'
        f'[[routes]]\nprefix = "/"\nupstream = "http://127.0.0.1:{backend_port}"\n'
    )


async def https_get(port: int, name: str, context: ssl.SSLContext, path: str = "/") -> bytes:
    """GET ``path`` from the gateway with SNI and Host ``name`` (verified by ``context``)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=name
    )
    writer.write(f"GET {path} HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    return response


def serial(port: int, name: str) -> int:
    return peer_certificate(port, name).serial_number


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
async def test_obtains_serves_by_sni_and_reuses_after_restart(
    tmp_path: Path,
    cert_pair: CertificatePair,
    backend_port: int,
    echo_port: int,
    challenge: str,
) -> None:
    port, http_port = free_port(), free_port()
    async with pebble(tmp_path / "pebble", http_port, port) as ca:
        config = tmp_path / "gateway.toml"
        domains = ["gw.test", "two.test"]
        write_settings(
            config, ca, cert_pair, backend_port, echo_port, domains, challenges=[challenge]
        )
        args = ["run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        root = await ca.root()
        async with gateway_run(args, port, tmp_path / "gateway.log") as gateway:
            first = await certificate_from_pebble(port, "gw.test")
            second = await certificate_from_pebble(port, "two.test")
            # A client that trusts only pebble's root verifies each name's chain.
            verified = trusting(root)
            response = await https_get(port, "gw.test", verified)
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            response = await https_get(port, "two.test", verified)
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            async with connect(
                f"wss://gw.test:{port}/ws", ssl=verified, host="127.0.0.1", port=port
            ) as ws:
                await ws.send("hello over wss")
                assert await ws.recv() == "hello over wss"
            # Each name has its own certificate; an unknown name gets the default one.
            assert first.serial_number != second.serial_number
            names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert names.value.get_values_for_type(x509.DNSName) == ["gw.test"]
            assert "Pebble" not in issuer(peer_certificate(port, "other.test"))
            orders = ca.orders()
            assert orders == 2, ca.log.read_text()[-3000:]
            status = await gateway.status()
            served = {tuple(entry["hosts"]): entry for entry in status["certificates"]}
            assert served[("gw.test",)]["source"] == "acme"
            assert served[("gw.test",)]["days_left"] > 300
            metrics = await gateway.metrics()
            assert 'gateway_certificate_expiry_days{host="two.test"}' in metrics
        # The files: account key, keys and chains only the gateway's user can read.
        storage = tmp_path / "acme"
        for path in [storage, *storage.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        assert (storage / "certs" / "gw.test" / "cert.pem").read_text().count("BEGIN") >= 2
        # A restart serves the stored certificates without a new order.
        async with gateway_run(args, port, tmp_path / "gateway2.log") as gateway:
            again = await certificate_from_pebble(port, "gw.test", timeout_s=10)
            assert again.serial_number == first.serial_number
            await asyncio.sleep(2)  # a few of the manager's checks
            assert ca.orders() == orders
            assert "serving the certificate for gw.test" in gateway.log()


async def test_renewal_replaces_the_certificate_while_a_websocket_stays_open(
    tmp_path: Path, cert_pair: CertificatePair, backend_port: int, echo_port: int
) -> None:
    port, http_port = free_port(), free_port()
    async with pebble(tmp_path / "pebble", http_port, port) as ca:
        config = tmp_path / "gateway.toml"
        # Renew 10 years before the end: pebble's certificates (5 years) are always due.
        write_settings(
            config, ca, cert_pair, backend_port, echo_port, ["gw.test"], renew_before_days=3650
        )
        args = ["run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        verified = trusting(await ca.root())
        async with gateway_run(args, port, tmp_path / "gateway.log") as gateway:
            first = (await certificate_from_pebble(port, "gw.test")).serial_number
            async with connect(
                f"wss://gw.test:{port}/ws", ssl=verified, host="127.0.0.1", port=port
            ) as ws:
                await ws.send("before")
                assert await ws.recv() == "before"
                # New handshakes get a renewed certificate...
                async with asyncio.timeout(60):
                    while await asyncio.to_thread(serial, port, "gw.test") == first:
                        await asyncio.sleep(0.2)
                # ...and the session opened with the old one goes on.
                await ws.send("after renewal")
                assert await ws.recv() == "after renewal"
            response = await https_get(port, "gw.test", verified)
            assert response.startswith(b"HTTP/1.1 200")
            assert "certificate for gw.test obtained" in gateway.log()
            assert ca.orders() >= 2


async def test_a_failing_ca_keeps_the_old_certificate_and_retries_with_backoff(
    tmp_path: Path, cert_pair: CertificatePair, backend_port: int, echo_port: int
) -> None:
    port, http_port = free_port(), free_port()
    async with pebble(tmp_path / "pebble", http_port, port) as ca:
        config = tmp_path / "gateway.toml"
        write_settings(
            config, ca, cert_pair, backend_port, echo_port, ["gw.test"], renew_before_days=3650
        )
        args = ["run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        verified = trusting(await ca.root())
        async with gateway_run(args, port, tmp_path / "gateway.log") as gateway:
            await certificate_from_pebble(port, "gw.test")
            await ca.stop()  # the CA goes away; renewal is due all the time

            async def failures() -> int:
                status = await gateway.status()
                entry = next(e for e in status["certificates"] if e["hosts"] == ["gw.test"])
                return int(entry["renewal"]["failures"])

            async with asyncio.timeout(60):
                while await failures() < 3:
                    await asyncio.sleep(0.2)
            held = serial(port, "gw.test")
            response = await https_get(port, "gw.test", verified)
            assert response.startswith(b"HTTP/1.1 200")  # the old chain still verifies
            log = gateway.log()
            waits = [int(w) for w in re.findall(r"failed, next in (\d+) s", log)]
            assert len(waits) >= 3, log[-3000:]
            assert waits[2] > waits[0], waits  # doubling
            assert "the current one stays" in log
            metrics = await gateway.metrics()
            found = re.search(
                r'gateway_certificate_renewal_failures\{host="gw.test"\} (\S+)', metrics
            )
            assert found is not None
            assert float(found.group(1)) >= 3
            status = await gateway.status()
            entry = next(e for e in status["certificates"] if e["hosts"] == ["gw.test"])
            assert entry["renewal"]["last_error"]
            assert entry["renewal"]["next_attempt"]
            assert serial(port, "gw.test") == held


async def test_a_challenge_that_cannot_succeed_leaves_the_other_names_served(
    tmp_path: Path, cert_pair: CertificatePair, backend_port: int, echo_port: int
) -> None:
    port, http_port = free_port(), free_port()
    async with pebble(tmp_path / "pebble", http_port, port) as ca:
        # The DNS stub sends the CA's validation for bad.test where nobody answers.
        await ca.answer("bad.test", "127.0.0.2")
        config = tmp_path / "gateway.toml"
        write_settings(config, ca, cert_pair, backend_port, echo_port, ["bad.test", "good.test"])
        args = ["run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        async with gateway_run(args, port, tmp_path / "gateway.log") as gateway:
            await certificate_from_pebble(port, "good.test")
            await eventually(lambda: "bad.test yet (attempt 2 failed" in gateway.log(), 60)
            # bad.test gets the default certificate meanwhile, and is served.
            assert "Pebble" not in issuer(peer_certificate(port, "bad.test"))
            unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
            assert (await https_get(port, "bad.test", unverified)).startswith(b"HTTP/1.1 200")
            assert "the default one is served" in gateway.log()
            assert gateway.process.returncode is None


async def test_half_the_nonces_rejected_still_ends_in_a_certificate(
    tmp_path: Path, cert_pair: CertificatePair, backend_port: int, echo_port: int
) -> None:
    port, http_port = free_port(), free_port()
    async with pebble(tmp_path / "pebble", http_port, port, PEBBLE_WFE_NONCEREJECT="50") as ca:
        config = tmp_path / "gateway.toml"
        write_settings(config, ca, cert_pair, backend_port, echo_port, ["gw.test", "two.test"])
        args = ["run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        # Debug logs show each nonce the CA rejected (and the client retried): two orders
        # make some twenty requests, so that none is rejected has odds of one in a million.
        with config.open("a") as file:
            file.write('[log]\nlevel = "debug"\n')
        async with gateway_run(args, port, tmp_path / "gateway.log") as gateway:
            await certificate_from_pebble(port, "gw.test", timeout_s=120)
            await certificate_from_pebble(port, "two.test", timeout_s=120)
            assert "badNonce" in gateway.log()


async def test_gateway_proxy_with_two_workers_orders_once(
    tmp_path: Path, backend_port: int
) -> None:
    port, http_port = free_port(), free_port()
    async with pebble(tmp_path / "pebble", http_port, port) as ca:
        args = [
            "proxy", "--from", f"gw.test:{port}", "--to", f"127.0.0.1:{backend_port}",
            "--host", "127.0.0.1", "--redirect-port", str(http_port),
            "--acme-directory", ca.directory, "--acme-ca-bundle", str(ca.ca_bundle),
            "--acme-storage", str(tmp_path / "acme"), "--workers", "2",
            "--pid-file", str(tmp_path / "pid"),
        ]  # fmt: skip
        verified = trusting(await ca.root())
        state = {"GATEWAY_STATE_DIR": str(tmp_path / "state")}
        async with gateway_run(args, port, tmp_path / "gateway.log", state) as gateway:
            await certificate_from_pebble(port, "gw.test")
            # Both workers pick the certificate up (each connection lands on either).
            picked_up = re.compile(r"ACME: (serving the )?certificate for gw.test")
            await eventually(lambda: len(picked_up.findall(gateway.log())) >= 2, timeout_s=20)
            for _ in range(10):
                response = await https_get(port, "gw.test", verified)
                assert response.startswith(b"HTTP/1.1 200")
            assert ca.orders() == 1, gateway.log()
            log = gateway.log()
            assert "open https://gw.test:" in log
            assert "2 worker(s)" in log
