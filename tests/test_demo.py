"""The built-in echo backend: its page, its echo endpoints, and the seed scenario over TLS."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect

from gateway.demo import DEMO_PAGE, demo_app
from gateway.middleware.origin import OriginCheckMiddleware
from gateway.proxy.websocket import WebSocketProxy
from gateway.tls import CertificatePair
from tests.proxy.ws_servers import tls_bridge
from tests.servers import plain_config, run_server

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def demo_url() -> AsyncIterator[str]:
    async with run_server(plain_config(demo_app(), log_config=None)) as port:
        yield f"http://127.0.0.1:{port}"


def test_page_picks_ws_or_wss_from_location_protocol() -> None:
    assert "location.protocol" in DEMO_PAGE
    assert '"wss:"' in DEMO_PAGE
    assert '"ws:"' in DEMO_PAGE
    assert "ws://" not in DEMO_PAGE
    assert "wss://" not in DEMO_PAGE


def test_page_has_stable_ids_and_no_external_resources() -> None:
    for element_id in ("status", "msg", "send", "send-binary", "log"):
        assert f'id="{element_id}"' in DEMO_PAGE
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\(|https?://""", DEMO_PAGE)


async def test_page_is_served_at_the_root(demo_url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{demo_url}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == DEMO_PAGE


async def test_echo_endpoint_describes_the_request(demo_url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{demo_url}/echo/some/path?x=1&x=2", headers={"X-Test": "yes"}, content=b"12345"
        )
    record = response.json()
    assert record["method"] == "POST"
    assert record["path"] == "/echo/some/path"
    assert record["query"] == "x=1&x=2"
    assert ["x-test", "yes"] in record["headers"]
    assert record["body_bytes"] == 5


async def test_websocket_echo_keeps_text_and_binary(demo_url: str) -> None:
    async with connect(demo_url.replace("http:", "ws:") + "/ws", open_timeout=10) as ws:
        for message in ["hello", b"\x00\x01binary", "", b""]:
            await ws.send(message)
            echoed = await ws.recv()
            assert echoed == message
            assert type(echoed) is type(message)


async def test_websocket_echo_accepts_the_first_offered_subprotocol(demo_url: str) -> None:
    url = demo_url.replace("http:", "ws:") + "/ws"
    async with connect(url, subprotocols=["echo.v1", "echo.v2"], open_timeout=10) as ws:
        assert ws.subprotocol == "echo.v1"


async def test_seed_scenario_wss_through_the_bridge_to_the_demo(
    demo_url: str, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    # What the page does in a browser: same-origin wss:// through the gateway to /ws.
    gateway = OriginCheckMiddleware(WebSocketProxy(demo_url), allow=["same-origin"])
    async with tls_bridge(gateway, cert_pair) as wss_url:
        page_origin = wss_url.replace("wss:", "https:")
        async with connect(f"{wss_url}/ws", ssl=client_ssl, origin=page_origin) as ws:
            await ws.send("through the gateway")
            assert await ws.recv() == "through the gateway"
            await ws.send(b"\xde\xad\xbe\xef")
            assert await ws.recv() == b"\xde\xad\xbe\xef"
