"""Request size limits: URL length, header count and size, body size.

Everything that can be judged from the request head is judged before the wrapped
app runs, so a refused request never reaches a backend:

- URL (path and query as sent) longer than ``max_url_bytes`` -> 414;
- more than ``max_header_count`` header fields, or more than ``max_header_bytes`` of
  them (each counted as ``name: value\\r\\n``) -> 431;
- a ``Content-Length`` over ``max_body_bytes`` -> 413.

A chunked body (no length announced) is counted while it streams through and is
never buffered.  When it crosses the limit the app's ``receive`` returns
``http.disconnect`` from then on - the proxy abandons the backend request exactly as
if the client had gone - and anything the app still sends is swallowed.  The client
gets 413 if no response has started yet (an exception the app then raises about the
"disconnect" is logged at debug level, not passed on); otherwise the response is left
incomplete, which makes the server cut the connection.

WebSocket handshakes are held to the URL and header limits (a 414/431 HTTP answer
through the ``websocket.http.response`` extension, else a close before accept).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import get_logger
from gateway.request_rules import declared_body_bytes
from gateway.responses import send_text

__all__ = ["RequestLimits", "RequestLimitsMiddleware", "declared_body_bytes", "head_refusal"]

logger = get_logger("gateway.limits")


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Size limits of one request; ``max_body_bytes=None`` leaves bodies unlimited."""

    max_body_bytes: int | None = None
    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024
    max_url_bytes: int = 8192

    def __post_init__(self) -> None:
        for key in ("max_body_bytes", "max_header_count", "max_header_bytes", "max_url_bytes"):
            value = getattr(self, key)
            if value is None and key == "max_body_bytes":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}: {value!r} is not a whole number >= 0")


def head_refusal(
    limits: RequestLimits,
    *,
    headers: list[tuple[bytes, bytes]],
    target_bytes: int,
) -> tuple[int, str] | None:
    """``(status, reason)`` refusing a request head, or None if it is within ``limits``.

    ``target_bytes`` is the length of the request target (path and query, as sent).
    """
    if target_bytes > limits.max_url_bytes:
        return 414, f"URL of {target_bytes} bytes"
    if len(headers) > limits.max_header_count:
        return 431, f"{len(headers)} header fields"
    header_bytes = sum(len(name) + len(value) + 4 for name, value in headers)
    if header_bytes > limits.max_header_bytes:
        return 431, f"{header_bytes} bytes of header fields"
    if limits.max_body_bytes is not None:
        declared = declared_body_bytes(headers)
        if declared is not None and declared > limits.max_body_bytes:
            return 413, f"Content-Length {declared}"
    return None


def _target_bytes(scope: Scope) -> int:
    path = scope.get("raw_path") or scope["path"].encode("utf-8")
    query = scope.get("query_string", b"")
    return len(path) + (len(query) + 1 if query else 0)


class RequestLimitsMiddleware:
    """Refuse requests over the size limits with 413/414/431 (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int | None,
        max_header_count: int = 100,
        max_header_bytes: int = 64 * 1024,
        max_url_bytes: int = 8192,
    ) -> None:
        self.app = app
        self.limits = RequestLimits(
            max_body_bytes=max_body_bytes,
            max_header_count=max_header_count,
            max_header_bytes=max_header_bytes,
            max_url_bytes=max_url_bytes,
        )

    def __repr__(self) -> str:
        return f"RequestLimitsMiddleware({self.limits!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = head_refusal(
            self.limits, headers=scope["headers"], target_bytes=_target_bytes(scope)
        )
        if refusal is not None:
            status, reason = refusal
            client = scope.get("client")
            logger.info(
                "request refused: client=%s status=%d reason=%s",
                client[0] if client else "-",
                status,
                reason,
            )
            await send_text(scope, send, status)
            return
        limit = self.limits.max_body_bytes
        # Without an announced length the body is counted as it streams through.
        if (
            scope["type"] == "http"
            and limit is not None
            and declared_body_bytes(scope["headers"], scope.get("http_version", "1.1")) is None
        ):
            limiter = _BodyLimiter(scope, receive, send, limit)
            try:
                await self.app(scope, limiter.receive, limiter.send)
            except Exception as exc:
                if not limiter.answered:
                    raise
                # Apps raise on a disconnect (Starlette's ClientDisconnect).  The client
                # has its 413; passing the error on would make the server drop the
                # connection, and with it the 413 still in flight.
                logger.debug("app raised %s after the 413", type(exc).__name__)
            return
        await self.app(scope, receive, send)


class _BodyLimiter:
    """One request's body count, between the server and the app."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.limit = limit
        self.received = 0
        self.exceeded = False
        self.answered = False
        self.response_started = False

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.exceeded = True
                client = self.scope.get("client")
                logger.info(
                    "request refused: client=%s status=413 reason=body over %d bytes",
                    client[0] if client else "-",
                    self.limit,
                )
                if not self.response_started:
                    self.response_started = self.answered = True
                    await send_text(self.scope, self._send, 413)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.exceeded:
            return  # the app is answering a client that, for it, has gone
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)
