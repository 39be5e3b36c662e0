"""ReverseProxy mounted inside existing Starlette and FastAPI apps (no lifespan needed)."""

from __future__ import annotations

import ssl

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from gateway import ReverseProxy
from gateway.tls import CertificatePair
from tests.conftest import header_values
from tests.servers import Backend, plain_config, run_server


def starlette_app(proxy: ReverseProxy) -> Starlette:
    async def home(request: object) -> PlainTextResponse:
        return PlainTextResponse("own route")

    return Starlette(routes=[Route("/", home), Mount("/backend", app=proxy)])


def fastapi_app(proxy: ReverseProxy) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"own": "route"}

    app.mount("/backend", proxy)
    return app


@pytest.mark.parametrize("make_app", [starlette_app, fastapi_app])
async def test_mounted_under_prefix(
    make_app: object,
    backend: Backend,
    cert_pair: CertificatePair,
    client_ssl: ssl.SSLContext,
) -> None:
    proxy = ReverseProxy(f"http://127.0.0.1:{backend.port}")
    app = make_app(proxy)  # type: ignore[operator]
    config = plain_config(
        app,
        ssl_certfile=str(cert_pair.certfile),
        ssl_keyfile=str(cert_pair.keyfile),
        lifespan="on",
    )
    try:
        async with run_server(config) as port, httpx.AsyncClient(verify=client_ssl) as client:
            own = await client.get(f"https://127.0.0.1:{port}/")
            proxied = await client.post(
                f"https://127.0.0.1:{port}/backend/items/a%2Fb?x=1&x=2", content=b"data"
            )
    finally:
        await proxy.aclose()
    assert own.status_code == 200
    assert proxied.status_code == 200
    record = proxied.json()
    assert record["raw_path"] == "/items/a%2Fb"
    assert record["query"] == "x=1&x=2"
    assert record["body_bytes"] == 4
    assert header_values(record, "x-forwarded-proto") == ["https"]


async def test_standalone_app_closes_its_client_on_lifespan_shutdown(backend: Backend) -> None:
    proxy = ReverseProxy(f"http://127.0.0.1:{backend.port}/base")
    async with run_server(plain_config(proxy, lifespan="on")) as port:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/x")
        assert response.json()["raw_path"] == "/base/x"
        assert proxy.transport.pool_stats()["connections"] == 1  # type: ignore[attr-defined]
    assert proxy.transport.pool_stats()["connections"] == 0  # type: ignore[attr-defined]


def test_upstream_must_be_absolute_http_url() -> None:
    with pytest.raises(ValueError, match="must be an absolute http"):
        ReverseProxy("backend:8080")
