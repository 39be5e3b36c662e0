"""The gateway's uvicorn WebSocket protocol on a real socket: refusals, when the socket pauses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.protocols import WebSocketProtocol
from tests.servers import eventually, plain_config, run_server

pytestmark = pytest.mark.timeout(30)


async def test_a_refusal_completes_the_handshake(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        start = {"type": "websocket.http.response.start", "status": 403, "headers": []}
        await send(start)
        await send({"type": "websocket.http.response.body", "body": b"go away"})

    async with run_server(plain_config(app, ws=WebSocketProtocol, log_config=None)) as port:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{port}/", open_timeout=5):
                pass
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"go away"
    # uvicorn would also log an error and try to answer 500 (uvicorn PR #3138).
    assert "without completing handshake" not in caplog.text


async def test_the_socket_pauses_only_when_a_second_message_waits() -> None:
    connected: asyncio.Future[WebSocketProtocol] = asyncio.get_running_loop().create_future()
    busy = asyncio.Event()
    taken: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        connected.set_result(receive.__self__)
        await busy.wait()
        while len(taken) < 3:
            message = await receive()
            taken.append(message["text"])
        await send({"type": "websocket.send", "text": ",".join(taken)})

    config = plain_config(app, ws=WebSocketProtocol)
    async with (
        run_server(config) as port,
        connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws,
    ):
        protocol = await connected
        try:
            await ws.send("one")
            await eventually(lambda: protocol.queue.qsize() == 1)
            await asyncio.sleep(0.05)
            # One message waits for a busy app: still reading (uvicorn would pause here).
            assert protocol.transport.is_reading()
            await ws.send("two")
            await eventually(lambda: protocol.queue.qsize() == 2)
            assert not protocol.transport.is_reading()
            await ws.send("three")
            await asyncio.sleep(0.1)
            assert protocol.queue.qsize() == 2  # the third stays in the socket
        finally:
            busy.set()
        # The app took the two: reading resumed, and the third arrived in order.
        async with asyncio.timeout(5):
            assert await ws.recv() == "one,two,three"
