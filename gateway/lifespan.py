"""The ASGI lifespan protocol for apps that may run on their own (not only mounted)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import Receive, Send

__all__ = ["serve_lifespan"]


async def serve_lifespan(
    receive: Receive,
    send: Send,
    *,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Answer lifespan startup and shutdown, running ``startup``/``shutdown`` in between."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if startup is not None:
                await startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if shutdown is not None:
                await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
