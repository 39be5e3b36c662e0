"""What the middleware tests share: an in-memory ASGI call, an app that records the scopes
reaching it, and a middleware in front of the real proxies over sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import ReverseProxy
from gateway.proxy.websocket import WebSocketProxy
from tests.servers import Backend, plain_config, run_server

WEBSOCKET_CONNECT: Message = {"type": "websocket.connect"}


class Recorder:
    """An ASGI app that records the scopes that reached it (and answers nothing)."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)


async def run(app: ASGIApp, scope: Scope, incoming: Message = WEBSOCKET_CONNECT) -> list[Message]:
    """Call ``app`` in memory, ``receive`` always giving ``incoming``; the messages it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@contextlib.asynccontextmanager
async def gateway_with(
    wrap: Callable[[ASGIApp], ASGIApp], backend: Backend, ws_url: str | None = None
) -> AsyncIterator[str]:
    """Serve ``wrap(proxy)`` on plain HTTP, the proxy forwarding to ``backend``; yield the URL."""
    http_proxy = ReverseProxy(f"http://127.0.0.1:{backend.port}")
    ws_proxy = WebSocketProxy(ws_url or "ws://127.0.0.1:9")

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        await (ws_proxy if scope["type"] == "websocket" else http_proxy)(scope, receive, send)

    try:
        # proxy_headers=False: uvicorn must not take the client address from X-Forwarded-For.
        async with run_server(plain_config(wrap(proxy), proxy_headers=False)) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        await http_proxy.aclose()
