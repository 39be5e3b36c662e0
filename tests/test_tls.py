"""TLS listener behaviour and the plain-HTTP redirect listener, over real sockets."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from gateway.tls import RedirectToHttps, https_url
from tests.servers import plain_config, run_server


async def tls_handshake(port: int, version: ssl.TLSVersion) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = version
    context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        async with httpx.AsyncClient(verify=context) as client:
            await client.get(f"https://127.0.0.1:{port}/")
    except httpx.ConnectError:
        return None
    return version.name


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_1_1_refused_and_1_2_1_3_accepted(gateway: str) -> None:
    port = urlsplit(gateway).port
    assert port is not None
    assert await tls_handshake(port, ssl.TLSVersion.TLSv1_1) is None
    assert await tls_handshake(port, ssl.TLSVersion.TLSv1_2) == "TLSv1_2"
    assert await tls_handshake(port, ssl.TLSVersion.TLSv1_3) == "TLSv1_3"


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("example.com", 443, "https://example.com/p?q"),
        ("example.com:80", 8443, "https://example.com:8443/p?q"),
        ("[::1]:8080", 8443, "https://[::1]:8443/p?q"),
        ("127.0.0.1:8080", 443, "https://127.0.0.1/p?q"),
    ],
)
def test_https_url(host: str, port: int, expected: str) -> None:
    assert https_url(host, port, "/p?q") == expected


async def test_redirect_listener_308_and_ws_refusal() -> None:
    async with run_server(plain_config(RedirectToHttps(8443))) as port:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{port}/x%2Fy?z=1", content=b"keep")
        assert response.status_code == 308  # 308 keeps method and body, unlike 301
        assert response.headers["location"] == "https://127.0.0.1:8443/x%2Fy?z=1"
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{port}/ws"):
                pass
    refusal = info.value.response
    assert refusal.status_code == 426
    assert b"wss://127.0.0.1:8443/ws" in refusal.body
    assert b"location.protocol" in refusal.body
