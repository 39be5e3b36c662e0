"""Pure rules of the WebSocket bridge (no I/O): handshake headers, request target, close codes.

Close codes, in both directions, are decided here by ``relay_client_close`` and
``map_backend_error`` (the one place where websockets errors are translated):

=========================================  ==============================================
what happened                              what the other leg gets
=========================================  ==============================================
peer closed with a code (1000-4999)        the same code and reason
peer sent an empty close frame (1005)      1000 (ASGI cannot send a close without a code;
                                           an empty close is a normal closure)
client connection lost (1006)              1001 "client went away" to the backend
backend connection lost, no close frame    1011 "backend connection lost" to the client
backend ping timeout                       1011 to the client
backend broke the protocol (1002/1007)     1014 "bad gateway" to the client
message over ``max_message_bytes``         1009 on both legs, whichever leg sent it
=========================================  ==============================================

1005, 1006 and 1015 are never sent on the wire.  Before the client is accepted,
failures are HTTP responses: the backend's refusal is passed on with its status,
headers and body; unreachable -> 502; handshake timeout -> 504; no available target of
an upstream -> 503 with Retry-After.  With several targets, a handshake that failed
without an answer (``gateway.failures.failure_kind`` is not None) may go to the next target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.types import Scope
from websockets.datastructures import Headers as WsHeaders
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
)
from websockets.frames import CloseCode

from gateway.failures import failure_kind, http_status
from gateway.proxy.forwarding import (
    ForwardingOptions,
    Headers,
    request_headers,
    strip_hop_by_hop,
    strip_root_path,
)

__all__ = [
    "HANDSHAKE_HEADERS",
    "BackendFailure",
    "accept_headers",
    "backend_target",
    "gateway_error",
    "handshake_headers",
    "is_websocket_upgrade",
    "map_backend_error",
    "no_target_available",
    "relay_client_close",
    "utf8_size",
    "wire_max_size",
]

# Negotiated per leg by each leg's own WebSocket implementation, never copied raw.
HANDSHAKE_HEADERS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
# Set by the server that sends the response (uvicorn), or describing a body we re-frame.
RESPONSE_ONLY_DROPPED = frozenset({b"date", b"server", b"content-length"})
TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
# What one fragment costs while a message is assembled besides its payload (a list slot,
# a bytes object, the parsed frame), counted towards the message limit by the server
# protocol and by the frame relay alike: a message of a million tiny (or empty)
# fragments is refused (1009) like a big one, before the backend has to assemble it.
FRAGMENT_OVERHEAD_BYTES = 64


def is_websocket_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """True if the request asks to upgrade to WebSocket (``Upgrade: websocket``).

    Only the ``websocket`` token is honoured; other upgrades (``h2c``, ...) are
    plain requests to the HTTP proxy, which strips ``Upgrade`` as hop-by-hop, so
    they never reach a backend.
    """
    upgrade = connection = False
    for name, value in headers:
        tokens = {token.strip().lower() for token in value.split(b",")}
        if name.lower() == b"upgrade":
            upgrade = upgrade or b"websocket" in tokens
        elif name.lower() == b"connection":
            connection = connection or b"upgrade" in tokens
    return upgrade and connection


def backend_target(scope: Scope, base_path: bytes = b"") -> str:
    """The backend request-target: base path + client path below ``root_path`` + query.

    The path comes from ``raw_path`` with its percent-encoding untouched.  Raises
    ``ValueError`` for bytes that cannot appear in a request line.
    """
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is None:  # raw_path is optional in ASGI: re-encode the decoded path
        raw_path = quote(scope["path"], safe="/:@!$&'()*+,;=~").encode("ascii")
    path = base_path.rstrip(b"/") + strip_root_path(raw_path, scope.get("root_path", ""))
    if not path.startswith(b"/"):
        path = b"/" + path
    query: bytes = scope.get("query_string", b"")
    target = path + b"?" + query if query else path
    # Visible ASCII only: a space, CR or LF here would split the backend's request line.
    if not all(0x21 <= byte <= 0x7E for byte in target):
        raise ValueError("request target has bytes not allowed in a request line")
    return target.decode("ascii")


def handshake_headers(scope: Scope, *, upstream_host: bytes, options: ForwardingOptions) -> Headers:
    """Headers for the backend handshake: the client's, minus per-leg ones, plus forwarding.

    Cookie, Authorization, Origin and User-Agent pass; hop-by-hop and
    ``Sec-WebSocket-*`` headers do not (each leg negotiates its own); X-Forwarded-*
    and Host follow the same rules as the HTTP proxy (``forwarding.request_headers``).
    """
    # forwarding's rules compare lower-case names; not every ASGI server lower-cases them.
    incoming = [
        (name.lower(), value)
        for name, value in scope["headers"]
        if name.lower() not in HANDSHAKE_HEADERS
    ]
    client = scope.get("client")
    return request_headers(
        incoming,
        peer=client[0] if client else None,
        scheme="https" if scope.get("scheme") in ("wss", "https") else "http",
        upstream_host=upstream_host,
        options=options,
    )


def relay_client_close(code: int, reason: str) -> tuple[int, str]:
    """The close frame to send the backend when the client leg ended with ``code``."""
    if code == CloseCode.NO_STATUS_RCVD:
        return CloseCode.NORMAL_CLOSURE, ""
    if code in (CloseCode.ABNORMAL_CLOSURE, CloseCode.TLS_HANDSHAKE):
        return CloseCode.GOING_AWAY, "client went away"
    return code, reason


@dataclass(frozen=True, slots=True)
class BackendFailure:
    """How a backend failure reaches the client.

    Before the client is accepted it gets the HTTP response (``status``, ``headers``,
    ``body``); after, a close frame (``close_code``, ``reason``).
    """

    status: int
    close_code: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


def gateway_error(
    status: int, text: str, close_code: int = CloseCode.INTERNAL_ERROR
) -> BackendFailure:
    """A failure answered by the gateway itself: ``text`` is the body and close reason."""
    body = f"{text}\n".encode()
    return BackendFailure(status, close_code, text, (TEXT_PLAIN,), body)


def map_backend_error(exc: BaseException) -> BackendFailure:
    """Translate a websockets/OS error on the backend leg into what the client gets."""
    if isinstance(exc, ConnectionClosed):
        if exc.sent is not None and not exc.rcvd_then_sent:
            # The bridge's websockets client ended the backend leg itself.
            code = exc.sent.code
            if code == CloseCode.MESSAGE_TOO_BIG:
                return gateway_error(502, "message too big", CloseCode.MESSAGE_TOO_BIG)
            if code in (CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA):
                return gateway_error(502, "bad gateway", CloseCode.BAD_GATEWAY)
            return gateway_error(502, "backend connection lost")
        if exc.rcvd is not None:
            code, reason = relay_client_close(exc.rcvd.code, exc.rcvd.reason)
            return BackendFailure(502, code, reason)
        return gateway_error(502, "backend connection lost")
    if isinstance(exc, InvalidStatus):
        response = exc.response
        raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.raw_items()
        ]
        # websockets has already de-chunked the body; the server sets Content-Length, its
        # own Date and Server (one of each, as for HTTP responses).
        headers = strip_hop_by_hop(raw, RESPONSE_ONLY_DROPPED)
        return BackendFailure(
            response.status_code,
            CloseCode.BAD_GATEWAY,
            "bad gateway",
            tuple(headers),
            bytes(response.body),
        )
    # No answer from the backend: the status and text follow gateway.failures' kind.
    kind = failure_kind(exc)
    text = _NO_ANSWER.get(kind, "WebSocket backend error") if kind is not None else None
    if text is None:
        return gateway_error(502, "WebSocket backend error")
    return gateway_error(http_status(exc), text, CloseCode.BAD_GATEWAY)


_NO_ANSWER = {
    "timeout": "WebSocket backend timed out",
    "connect_error": "WebSocket backend unreachable",
    "invalid_response": "WebSocket backend sent an invalid handshake",
}


def no_target_available(retry_after_s: int) -> BackendFailure:
    """The answer when no target of an upstream can take the session."""
    failure = gateway_error(503, "no backend available", CloseCode.TRY_AGAIN_LATER)
    retry_after = (b"retry-after", str(retry_after_s).encode("ascii"))
    return BackendFailure(
        failure.status,
        failure.close_code,
        failure.reason,
        (*failure.headers, retry_after),
        failure.body,
    )


def accept_headers(response_headers: WsHeaders) -> Headers:
    """Backend 101 response headers worth passing to the client (e.g. Set-Cookie)."""
    raw = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response_headers.raw_items()
    ]
    return strip_hop_by_hop(raw, HANDSHAKE_HEADERS | RESPONSE_ONLY_DROPPED)


def utf8_size(data: str | bytes) -> int:
    """Size of a message on the wire (text is sent as UTF-8)."""
    # str.isascii() is O(1) in CPython, so ASCII text (the common case) costs no copy.
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode("utf-8"))


def wire_max_size(max_message_bytes: int) -> int:
    """The frame-size limit (uvicorn ``ws_max_size``) of a leg carrying ``max_message_bytes``.

    websockets applies its limit to compressed frames too, and permessage-deflate
    expands incompressible data by 5 bytes per stored block (down to 512-byte blocks at
    ``memLevel=1``), so a message at the limit may arrive as a larger frame.  The bridge
    enforces ``max_message_bytes`` exactly on the decompressed message.
    """
    return max_message_bytes + max_message_bytes // 64 + 1024
