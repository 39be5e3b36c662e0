"""The README's mount examples, run exactly as written (only the backend's address is
replaced) under plain ``uvicorn`` with its default flags over TLS: HTTP and WSS through
one mount, one Date and one Server per response."""

from __future__ import annotations

import re
import ssl
import sys
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from gateway.tls import CertificatePair
from tests.servers import Backend, free_port, gateway_process, plain_config, run_server

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


def readme_example(name: str) -> str:
    """The Python block after ``<!-- example: NAME -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert match is not None, f"README.md has no example {name!r}"
    return match.group(1)


class BothBackend(Backend):
    """The HTTP test backend, with WebSocket echo on ``/ws`` (as the demo backend has)."""

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message.get("text")})
            return
        await super().__call__(scope, receive, send)


@pytest.mark.parametrize("example", ["fastapi-mount", "starlette-mount"])
async def test_readme_mount_example_under_plain_uvicorn(
    example: str,
    tmp_path: Path,
    cert_pair: CertificatePair,
    client_ssl: ssl.SSLContext,
) -> None:
    backend = BothBackend()
    async with run_server(plain_config(backend)) as backend_port:
        code = readme_example(example).replace(
            "http://127.0.0.1:8080", f"http://127.0.0.1:{backend_port}"
        )
        (tmp_path / "main.py").write_text(code)
        port = free_port()
        args = [
            sys.executable, "-m", "uvicorn", "main:app", "--app-dir", str(tmp_path),
            "--port", str(port),
            "--ssl-certfile", str(cert_pair.certfile), "--ssl-keyfile", str(cert_pair.keyfile),
        ]  # fmt: skip
        async with gateway_process(args, port, {}):
            async with httpx.AsyncClient(verify=client_ssl) as client:
                response = await client.get(f"https://localhost:{port}/backend/items?x=1")
            async with connect(f"wss://localhost:{port}/backend/ws", ssl=client_ssl) as ws:
                await ws.send("through the mount")
                echoed = await ws.recv()
    assert response.status_code == 200
    assert backend.requests[0]["raw_path"] == "/items"
    assert backend.requests[0]["query"] == "x=1"
    assert len(response.headers.get_list("date")) == 1
    assert response.headers.get_list("server") == ["uvicorn"]
    assert echoed == "through the mount"
