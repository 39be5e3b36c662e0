"""Request id: accept or generate ``X-Request-ID`` and pass it to the backend and back.

Every request gets exactly one id.  An incoming id is kept when ``trust_incoming`` is
set and it is sane: a single header of 1 to 128 characters from ``[A-Za-z0-9._:-]``
(enough for UUIDs, ULIDs, hex trace ids and ``host:counter`` schemes; never spaces,
quotes or control characters that could poison a log line).  Anything else - missing,
too long, odd characters, two headers - is replaced by a generated id.

The id goes to three places:

- the request headers the wrapped app sees (so the backend receives it), replacing
  any incoming header of that name;
- the response headers the client sees, replacing any the backend set (the client
  learns the id the gateway logged, whatever the backend echoed);
- ``scope["state"]["request_id"]``, for access logs and the middleware further in
  (the ``$request_id`` of ``HeadersMiddleware``).

WebSocket handshakes get the header towards the backend, and back to the client on
the ``101`` (``websocket.accept`` headers) or on a refused handshake
(``websocket.http.response.start``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "MAX_REQUEST_ID_CHARS",
    "RequestIdMiddleware",
    "choose_request_id",
    "is_sane_request_id",
    "new_request_id",
    "replace_header",
]

MAX_REQUEST_ID_CHARS = 128
_SANE_RE = re.compile(rb"[A-Za-z0-9._:\-]{1,%d}" % MAX_REQUEST_ID_CHARS)
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The messages that carry response headers towards the client.
_RESPONSE_STARTS = frozenset(
    {"http.response.start", "websocket.accept", "websocket.http.response.start"}
)


_ID_BYTES = 16
_POOL_IDS = 256  # ids drawn from one os.urandom call
_pool = b""
_pool_at = 0


def new_request_id() -> str:
    """A fresh random id: 32 hex characters (128 bits, the size of a UUID4), from the
    operating system's CSPRNG (as nginx's ``$request_id`` from RAND_bytes). One system
    call fills the bytes of 256 ids: a call per request was a tenth of this layer's cost."""
    global _pool, _pool_at
    if _pool_at >= len(_pool):
        _pool, _pool_at = os.urandom(_ID_BYTES * _POOL_IDS), 0
    start = _pool_at
    _pool_at = start + _ID_BYTES
    return _pool[start : start + _ID_BYTES].hex()


def is_sane_request_id(value: bytes) -> bool:
    """True if ``value`` is 1-128 characters of ``[A-Za-z0-9._:-]``."""
    return _SANE_RE.fullmatch(value) is not None


def choose_request_id(
    incoming: Sequence[bytes],
    *,
    trust_incoming: bool,
    generator: Callable[[], str] = new_request_id,
) -> str:
    """The id for a request whose ``header`` values are ``incoming``: kept or generated.

    A generated id must itself be sane: a generator that returns anything else is a
    programming error (``ValueError``), never a header injection.
    """
    if trust_incoming and len(incoming) == 1 and is_sane_request_id(incoming[0]):
        return incoming[0].decode("ascii")
    generated = generator()
    if generator is not new_request_id and not is_sane_request_id(
        generated.encode("latin-1", "replace")
    ):
        raise ValueError(f"request id generator returned an unusable id: {generated!r:.80}")
    return generated


def replace_header(
    headers: Iterable[tuple[bytes, bytes]], name: bytes, value: bytes
) -> list[tuple[bytes, bytes]]:
    """``headers`` without any ``name`` header (lower-case), then ``name: value``."""
    out = list(headers)
    length = len(name)
    for key, _ in out:  # most lists lack the name: compare lengths before case-folding
        if len(key) == length and key.lower() == name:
            out = [(key, old) for key, old in out if key.lower() != name]
            break
    out.append((name, value))
    return out


class RequestIdMiddleware:
    """Give each HTTP request and WebSocket handshake one sane id (see the module doc).

    ``header`` names the header (case-insensitive); ``trust_incoming=False`` ignores
    the client's id and always generates one (for edges facing the open internet
    where ids are not meant to be correlated with callers); ``generator`` makes new
    ids and must return sane ones.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = "x-request-id",
        trust_incoming: bool = True,
        generator: Callable[[], str] = new_request_id,
    ) -> None:
        if not _TOKEN_RE.fullmatch(header):
            raise ValueError(f"request_id.header: {header!r} is not a valid header name")
        self.app = app
        self.header = header.lower().encode("ascii")
        self.trust_incoming = trust_incoming
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"RequestIdMiddleware(header={self.header.decode()!r}, "
            f"trust_incoming={self.trust_incoming!r})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        name = self.header
        headers = scope["headers"]
        # ASGI servers give request header names in lower case.
        incoming = [value for key, value in headers if key == name]
        if not incoming and self.generator is new_request_id:
            request_id = new_request_id()  # the common case, without the checks below
        else:
            request_id = choose_request_id(
                incoming, trust_incoming=self.trust_incoming, generator=self.generator
            )
        value = request_id.encode("ascii")
        # The state dict is shared with the outer layers (uvicorn, access logs); the
        # headers list is not ours to mutate, so the app gets a scope with a new one.
        scope.setdefault("state", {})["request_id"] = request_id
        headers = replace_header(headers, name, value) if incoming else [*headers, (name, value)]
        scope = {**scope, "headers": headers}

        # Returns send's awaitable: no coroutine frame of its own per relayed message.
        def send_with_id(message: Message) -> Awaitable[None]:
            if message["type"] in _RESPONSE_STARTS:
                message = {
                    **message,
                    "headers": replace_header(message.get("headers", ()), name, value),
                }
            return send(message)

        await self.app(scope, receive, send_with_id)
