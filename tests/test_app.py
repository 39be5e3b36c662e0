"""The assembled gateway: HTTP and WebSocket on one route, refusals, upgrade rules."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.app import build_gateway
from gateway.errors import ConfigError
from gateway.settings import Settings
from tests.conftest import GatewayFactory
from tests.servers import Backend, parse_response, raw_exchange


@pytest.fixture
async def ws_echo() -> AsyncIterator[int]:
    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        yield server.sockets[0].getsockname()[1]


async def test_one_route_serves_http_and_websocket(
    backend: Backend, ws_echo: int, gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    routes = [
        {"prefix": "/", "upstream": f"http://127.0.0.1:{backend.port}"},
        {"prefix": "/ws", "upstream": f"http://127.0.0.1:{ws_echo}"},
    ]
    async with (
        gateway_factory("", routes=routes) as url,
        connect(url.replace("https", "wss") + "/ws/chat", ssl=client_ssl) as session,
    ):
        await session.send("ping")
        assert await session.recv() == "ping"


async def test_foreign_origin_refused_without_error_log(
    ws_echo: int,
    gateway_factory: GatewayFactory,
    client_ssl: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with gateway_factory(f"http://127.0.0.1:{ws_echo}") as url:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(
                url.replace("https", "wss") + "/", ssl=client_ssl, origin="https://evil.example"
            ):
                pass
    assert info.value.response.status_code == 403
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_h2c_upgrade_is_never_forwarded(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    port = urlsplit(gateway).port
    assert port is not None
    raw = await raw_exchange(
        port,
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        client_ssl,
    )
    status, _, _ = parse_response(raw)
    assert status == 200
    names = {name for name, _ in backend.requests[0]["headers"]}
    assert not names & {"upgrade", "http2-settings", "connection"}


def test_importing_the_proxies_loads_no_application_machinery() -> None:
    # Mounting a proxy must not import the settings loader, metrics, Redis or cryptography.
    code = (
        "import sys\n"
        "from gateway import ReverseProxy, WebSocketProxy, Upstream\n"
        "from gateway.middleware import OriginCheckMiddleware\n"
        "heavy = ['pydantic', 'pydantic_settings', 'prometheus_client', 'redis', 'cryptography',"
        " 'gateway.settings', 'gateway.metrics', 'gateway.app']\n"
        "print([name for name in heavy if name in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_public_surface_is_curated_and_lazy() -> None:
    import gateway

    assert set(gateway.__all__) >= {
        "ReverseProxy", "WebSocketProxy", "Upstream", "Target", "create_app",
        "load_settings", "Settings", "GatewayError", "ConfigError",
    }  # fmt: skip
    assert issubclass(gateway.ConfigError, gateway.GatewayError)
    assert gateway.ReverseProxy.__module__ == "gateway.proxy.http"
    with pytest.raises(AttributeError):
        gateway.nothing_here  # noqa: B018


def test_a_redis_url_without_the_redis_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "gateway.middleware.ratelimit_redis", raising=False)
    settings = Settings(rate_limit={"rate_per_s": 5, "redis_url": "redis://127.0.0.1:6379"})
    with pytest.raises(ConfigError) as info:
        build_gateway(settings)
    assert info.value.problems == [
        "rate_limit.redis_url: a shared Redis store needs the 'redis' package:"
        " pip install 'gateway[redis]'"
    ]


async def test_pass_date_server_passes_the_backends_own(
    backend: Backend, gateway_factory: GatewayFactory, client: httpx.AsyncClient
) -> None:
    upstream = f"http://127.0.0.1:{backend.port}"
    async with gateway_factory(upstream) as url:
        replaced = await client.get(f"{url}/echo")
    async with gateway_factory(upstream, forwarding={"pass_date_server": True}) as url:
        passed = await client.get(f"{url}/echo")
    assert replaced.headers.get_list("server") == ["gateway"]
    assert passed.headers.get_list("server") == ["uvicorn"]  # the test backend's
    assert len(replaced.headers.get_list("date")) == len(passed.headers.get_list("date")) == 1
