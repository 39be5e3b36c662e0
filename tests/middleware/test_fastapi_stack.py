"""The edge middleware inside a plain FastAPI app, without the rest of the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request

from gateway.middleware.headers import HeadersMiddleware, security_headers
from gateway.middleware.limits import RequestLimitsMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.middleware.timeouts import TimeoutsMiddleware
from gateway.responses import status_text
from tests.servers import plain_config, run_server


def build_app(calls: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, str | None]:
        calls.append("whoami")
        return {
            "state_request_id": request.state.request_id,
            "header_request_id": request.headers.get("x-request-id"),
            "x_client": request.headers.get("x-client"),
        }

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        calls.append("upload")
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"bytes": size}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        calls.append("slow")
        await asyncio.sleep(10)
        return {"never": "sent"}

    # add_middleware wraps: the last one added runs first.
    app.add_middleware(TimeoutsMiddleware, body_timeout_s=2, request_timeout_s=0.5)
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=1000, max_header_count=30)
    app.add_middleware(
        HeadersMiddleware,
        request_set={"X-Client": "$remote_addr"},
        response_set=security_headers(tls=False),
        response_add={"X-Request-Echo": "$request_id"},
    )
    app.add_middleware(RequestIdMiddleware)
    return app


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, list[str]]]:
    calls: list[str] = []
    async with run_server(plain_config(build_app(calls), log_level="critical")) as port:
        yield f"http://127.0.0.1:{port}", calls


async def test_routes_see_the_request_id_and_rewritten_headers(api: tuple[str, list[str]]) -> None:
    url, calls = api
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{url}/whoami", headers={"X-Request-ID": "fa-1", "X-Client": "forged"}
        )
    assert response.status_code == 200
    assert response.json() == {
        "state_request_id": "fa-1",
        "header_request_id": "fa-1",
        "x_client": "127.0.0.1",
    }
    assert response.headers["x-request-id"] == "fa-1"
    assert response.headers["x-request-echo"] == "fa-1"
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert "strict-transport-security" not in response.headers
    assert calls == ["whoami"]


async def test_refusals_come_from_the_middleware_and_the_routes_never_run(
    api: tuple[str, list[str]],
) -> None:
    url, calls = api
    flood = {f"X-Flood-{n}": "1" for n in range(40)}
    async with httpx.AsyncClient() as client:
        too_big = await client.post(f"{url}/upload", content=b"x" * 1001)
        too_many = await client.get(f"{url}/whoami", headers=flood)
    assert too_big.status_code == 413
    assert too_big.text == f"{status_text(413)}\n"
    assert too_many.status_code == 431
    # Refusals still carry the request id and the security headers: they wrap the limits.
    for response in (too_big, too_many):
        assert len(response.headers["x-request-id"]) == 32
        assert response.headers["x-content-type-options"] == "nosniff"
    assert calls == []


async def test_a_chunked_upload_over_the_limit_reaches_the_route_but_gets_413(
    api: tuple[str, list[str]],
) -> None:
    url, calls = api

    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 500

    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/upload", content=body())
        small = await client.post(f"{url}/upload", content=b"z" * 1000)
    assert response.status_code == 413
    assert response.text == f"{status_text(413)}\n"
    assert small.json() == {"bytes": 1000}
    assert calls == ["upload", "upload"]


async def test_the_request_deadline_inside_fastapi(api: tuple[str, list[str]]) -> None:
    url, calls = api
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/slow")
    assert response.status_code == 504
    assert response.text == f"{status_text(504)}\n"
    assert response.headers["x-request-id"]
    assert calls == ["slow"]
