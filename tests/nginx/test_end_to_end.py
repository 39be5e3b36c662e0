"""The issue's classic nginx block, translated and run: https and wss end to end.

The configuration is the fixture ``configs/classic.conf`` used as a template: its
certificate names point at trustme files and its ``proxy_pass`` at a real backend (the
demo echo app) on 127.0.0.1.  The gateway then runs in-process from the translated
settings, over TLS, as ``gateway run --nginx`` would run it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from gateway.app import create_app
from gateway.demo import demo_app
from gateway.nginx.cli import settings_from_nginx
from gateway.server import uvicorn_config
from gateway.tls import CertificatePair
from tests.nginx.helpers import CONFIGS
from tests.servers import plain_config, run_server


@pytest.fixture
async def backend_port() -> AsyncIterator[int]:
    async with run_server(plain_config(demo_app())) as port:
        yield port


@pytest.fixture
async def gateway_url(
    tmp_path: Path, cert_pair: CertificatePair, backend_port: int
) -> AsyncIterator[str]:
    template = (CONFIGS / "classic.conf").read_text()
    text = (
        template.replace("algo.crt", str(cert_pair.certfile))
        .replace("algo.key", str(cert_pair.keyfile))
        .replace("http://localhost:8080", f"http://127.0.0.1:{backend_port}")
    )
    assert text.count(str(cert_pair.certfile)) == 1
    assert str(backend_port) in text
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    settings = settings_from_nginx(conf, strict=True, show_notes=False)
    assert settings.listen.certfile == cert_pair.certfile
    pair = CertificatePair(cert_pair.certfile, cert_pair.keyfile)
    async with run_server(uvicorn_config(create_app(settings), settings, pair)) as port:
        yield f"https://localhost:{port}"


async def test_https_through_the_translated_gateway(
    gateway_url: str, client_ssl: ssl.SSLContext
) -> None:
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(verify=client_ssl, timeout=30, limits=limits) as client:
        response = await client.post(f"{gateway_url}/echo/a%2Fb?x=1&x=2", content=b"hello")
        assert response.status_code == 200
        echoed = response.json()
        headers = dict(echoed["headers"])
        assert (echoed["method"], echoed["query"], echoed["body_bytes"]) == ("POST", "x=1&x=2", 5)
        # proxy_set_header Host $http_host: the client's Host reaches the backend.
        assert headers["host"] == gateway_url.removeprefix("https://")
        # proxy_set_header X-Frame-Options SAMEORIGIN: a request header in the classic block.
        assert headers["x-frame-options"] == "SAMEORIGIN"
        # X-Forwarded-Proto $scheme and X-Real-IP $remote_addr: the gateway's defaults.
        assert headers["x-forwarded-proto"] == "https"
        assert headers["x-real-ip"] == "127.0.0.1"
        # The default server answers any host (server_name localhost is not a filter).
        by_address = await client.get(
            gateway_url.replace("localhost", "127.0.0.1") + "/echo", headers={"host": "other"}
        )
        assert by_address.status_code == 200
        assert dict(by_address.json()["headers"])["host"] == "other"
        page = await client.get(f"{gateway_url}/")
        assert page.status_code == 200
        assert "WebSocket echo" in page.text


async def test_wss_through_the_translated_gateway(
    gateway_url: str, client_ssl: ssl.SSLContext
) -> None:
    url = gateway_url.replace("https://", "wss://") + "/ws"
    async with connect(url, ssl=client_ssl, open_timeout=10) as websocket:
        await websocket.send("hello through nginx's settings")
        assert await websocket.recv() == "hello through nginx's settings"
        await websocket.send(b"\x00\x01binary")
        assert await websocket.recv() == b"\x00\x01binary"
