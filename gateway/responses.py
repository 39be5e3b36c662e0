"""Short plain-text answers the gateway gives itself (errors, refusals), for HTTP and WebSocket."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from starlette.types import Scope, Send

__all__ = ["send_text", "status_text"]


def status_text(status: int) -> str:
    """``"502 Bad Gateway"`` for 502."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"{status} {phrase}"


async def send_text(
    scope: Scope,
    send: Send,
    status: int,
    text: str | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with ``status`` and a one-line plain-text body (default: the status line).

    For a WebSocket handshake the answer is an HTTP response through the ASGI
    ``websocket.http.response`` extension, or - for servers without it - a close
    before accept, which every ASGI server turns into a bare 403.
    """
    body = ((text if text is not None else status_text(status)) + "\n").encode()
    start = {
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            # No Date: the server adds its own (one per response).
            *headers,
        ],
    }
    if scope["type"] == "http":
        await send({"type": "http.response.start", **start})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", **start})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
