"""Shared fixtures: trustme certificates, a recording backend, the gateway over TLS."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from gateway.app import create_app
from gateway.server import uvicorn_config
from gateway.settings import Settings
from gateway.tls import CertificatePair
from tests.servers import Backend, plain_config, run_server


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def cert_pair(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    folder = tmp_path_factory.mktemp("certs")
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    server.private_key_pem.write_to_path(str(keyfile))
    with certfile.open("wb") as file:
        for blob in server.cert_chain_pems:
            file.write(blob.bytes())
    return CertificatePair(certfile, keyfile)


@pytest.fixture(scope="session")
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    app = Backend()
    async with run_server(plain_config(app)) as port:
        app.port = port
        yield app


GatewayFactory = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def gateway_factory(cert_pair: CertificatePair) -> GatewayFactory:
    """``async with gateway_factory(upstream, **sections) as base_url`` runs a TLS gateway."""

    @asynccontextmanager
    async def factory(upstream: str, tls: bool = True, **sections: Any) -> AsyncIterator[str]:
        routes = sections.pop("routes", [{"prefix": "/", "upstream": upstream}])
        listen: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "tls": tls}
        listen.update(sections.pop("listen", {}))
        if tls:
            listen.update(certfile=str(cert_pair.certfile), keyfile=str(cert_pair.keyfile))
        settings = Settings(listen=listen, routes=routes, **sections)
        config = uvicorn_config(create_app(settings), settings, cert_pair if tls else None)
        async with run_server(config) as port:
            yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    return factory


@pytest.fixture
async def gateway(backend: Backend, gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(f"http://127.0.0.1:{backend.port}") as url:
        yield url


@pytest.fixture
async def client(client_ssl: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    # Idle keep-alive TLS connections make a server's shutdown wait for close_notify
    # answers; tests open a connection per request so that servers stop at once.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(verify=client_ssl, timeout=30, limits=limits) as http:
        yield http


def header_values(record: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in record["headers"] if key == name]


__all__ = ["GatewayFactory", "Path", "header_values"]
