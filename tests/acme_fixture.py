"""A real ACME CA for the tests: Debian's ``pebble`` and its DNS stub
``pebble-challtestsrv`` (every name answers 127.0.0.1 unless told otherwise), on free
loopback ports, started and stopped by PID; and a gateway process to point at it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trustme
from cryptography import x509

from tests.servers import free_port
from tests.tools import missing

GATEWAY = [sys.executable, "-m", "gateway"]


def require_pebble() -> tuple[str, str]:
    pebble, stub = shutil.which("pebble"), shutil.which("pebble-challtestsrv")
    if pebble is None or stub is None:
        missing("pebble and pebble-challtestsrv (Debian package pebble)", "scripts/setup")
    assert pebble is not None
    assert stub is not None
    return pebble, stub


@dataclass
class Pebble:
    """One pebble (ACME directory on ``port``) validating on ``http_port``/``tls_port``."""

    folder: Path
    http_port: int
    tls_port: int
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    stub_management_port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None
    stub: asyncio.subprocess.Process | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def ca_bundle(self) -> Path:
        """Trusts pebble's own TLS (its API and management listeners)."""
        return self.folder / "pebble-api-ca.pem"

    @property
    def log(self) -> Path:
        return self.folder / "pebble.log"

    def orders(self) -> int:
        """How many orders pebble accepted so far."""
        return self.log.read_text(errors="replace").count("Added order")

    async def start(self) -> None:
        pebble, stub = require_pebble()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.ca_bundle.exists():
            ca = trustme.CA()
            issued = ca.issue_cert("127.0.0.1", "localhost")
            issued.private_key_pem.write_to_path(str(self.folder / "pebble.key"))
            issued.cert_chain_pems[0].write_to_path(str(self.folder / "pebble.crt"))
            ca.cert_pem.write_to_path(str(self.ca_bundle))
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(self.folder / "pebble.crt"),
                "privateKey": str(self.folder / "pebble.key"),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (self.folder / "pebble.json").write_text(json.dumps(config))
        with (self.folder / "stub.log").open("ab") as log:
            self.stub = await asyncio.create_subprocess_exec(
                stub,
                "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                "-dns01", f"127.0.0.1:{self.dns_port}",
                "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-management", f"127.0.0.1:{self.stub_management_port}",
                stdout=log, stderr=log,
            )  # fmt: skip
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                pebble,
                "-config", str(self.folder / "pebble.json"),
                "-dnsserver", f"127.0.0.1:{self.dns_port}",
                env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", **self.env},
                stdout=log, stderr=log,
            )  # fmt: skip
        await _wait_for_port(self.port, self.process, self.log)
        await _wait_for_port(self.stub_management_port, self.stub, self.folder / "stub.log")

    async def stop(self) -> None:
        for process in (self.process, self.stub):
            await stop_process(process)
        self.process = self.stub = None

    async def root(self) -> bytes:
        """Pebble's root certificate (PEM): what a client must trust to verify its chains."""
        trust = ssl.create_default_context(cafile=str(self.ca_bundle))
        async with httpx.AsyncClient(verify=trust) as client:
            response = await client.get(f"https://127.0.0.1:{self.management_port}/roots/0")
            response.raise_for_status()
            return response.content

    async def answer(self, name: str, address: str) -> None:
        """Make the DNS stub answer ``address`` for ``name``."""
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"http://127.0.0.1:{self.stub_management_port}/add-a",
                json={"host": name, "addresses": [address]},
            )
            response.raise_for_status()


@contextlib.asynccontextmanager
async def pebble(folder: Path, http_port: int, tls_port: int, **env: str) -> AsyncIterator[Pebble]:
    ca = Pebble(folder, http_port, tls_port, env)
    try:
        await ca.start()
        yield ca
    finally:
        await ca.stop()


async def _wait_for_port(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}: {log.read_text()[-2000:]}")


async def stop_process(process: asyncio.subprocess.Process | None) -> None:
    """SIGTERM to the process's PID, SIGKILL if it lingers."""
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 20)
    except TimeoutError:
        process.kill()
        await process.wait()


@dataclass
class GatewayRun:
    """A gateway process whose log goes to a file (read it with ``log()``)."""

    process: asyncio.subprocess.Process
    log_path: Path
    admin_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def status(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.admin_port}/status.json")
            result: dict[str, Any] = response.json()
            return result

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{self.admin_port}/metrics")).text


@contextlib.asynccontextmanager
async def gateway_run(
    args: list[str], port: int, log_path: Path, env: dict[str, str] | None = None
) -> AsyncIterator[GatewayRun]:
    admin_port = free_port()
    environment = {**os.environ, "GATEWAY_ADMIN__PORT": str(admin_port), **(env or {})}
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *GATEWAY, *args, env=environment, stdout=log, stderr=log
        )
    try:
        await _wait_for_port(port, process, log_path)
        await _wait_for_port(admin_port, process, log_path)
        yield GatewayRun(process, log_path, admin_port)
    finally:
        await stop_process(process)


def peer_certificate(port: int, name: str | None) -> x509.Certificate:
    """The certificate the listener on ``port`` serves for SNI ``name`` (not verified)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def issuer(certificate: x509.Certificate) -> str:
    return certificate.issuer.rfc4514_string()


async def certificate_from_pebble(port: int, name: str, timeout_s: float = 60) -> x509.Certificate:
    """Wait until the listener serves a certificate from pebble for ``name``."""
    deadline = time.monotonic() + timeout_s
    while True:
        certificate = await asyncio.to_thread(peer_certificate, port, name)
        if "Pebble" in issuer(certificate):
            return certificate
        if time.monotonic() > deadline:
            raise AssertionError(f"still {issuer(certificate)!r} for {name} after {timeout_s} s")
        await asyncio.sleep(0.2)


def trusting(root_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts pebble's root and nothing else."""
    context = ssl.create_default_context(cadata=root_pem.decode())
    return context
