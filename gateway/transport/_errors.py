"""The one place where low-level failures become httpx exceptions.

Exception tree raised by the transport (all from httpx)::

    httpx.TransportError
    +-- httpx.TimeoutException
    |   +-- ConnectTimeout   connecting took longer than connect_timeout_s
    |   +-- ReadTimeout      no byte received for read_timeout_s while waiting for one
    |   +-- WriteTimeout     the socket did not accept bytes for write_timeout_s
    |   +-- PoolTimeout      no connection slot became free within pool_timeout_s
    +-- httpx.NetworkError
    |   +-- ConnectError     refused, unreachable, DNS failure, TLS handshake failure
    |   +-- ReadError        reset while receiving
    |   +-- WriteError       reset while sending
    +-- httpx.ProtocolError
        +-- LocalProtocolError   the request cannot be framed (bad Content-Length ...)
        +-- RemoteProtocolError  invalid response, or the upstream closed it too early
"""

from __future__ import annotations

import os
from typing import Final, Literal

import httptools
import httpx

Phase = Literal["connect", "pool", "write", "read"]


class ProtocolViolation(Exception):
    """The upstream sent bytes this HTTP/1.1 client cannot accept."""


class ConnectionClosed(Exception):
    """The upstream closed the connection before the exchange was complete."""


_TIMEOUT_ERRORS: Final[dict[Phase, type[httpx.TransportError]]] = {
    "connect": httpx.ConnectTimeout,
    "pool": httpx.PoolTimeout,
    "write": httpx.WriteTimeout,
    "read": httpx.ReadTimeout,
}
_NETWORK_ERRORS: Final[dict[Phase, type[httpx.TransportError]]] = {
    "connect": httpx.ConnectError,
    "pool": httpx.ConnectError,
    "write": httpx.WriteError,
    "read": httpx.ReadError,
}
_PROTOCOL_CAUSES: Final = (
    ProtocolViolation,
    ConnectionClosed,
    httptools.HttpParserError,
    httptools.HttpParserUpgrade,
)


def to_httpx_error(
    cause: BaseException,
    phase: Phase,
    request: httpx.Request | None,
    context: str = "",
) -> httpx.TransportError:
    """Translate `cause`, seen while in `phase`, into the matching httpx exception.

    `context` names what was going on (for example the upstream address); the message
    always ends with the cause so the log line explains itself.
    """
    if isinstance(cause, httpx.TransportError):
        return cause
    error_class: type[httpx.TransportError]
    if isinstance(cause, TimeoutError):
        error_class = _TIMEOUT_ERRORS[phase]
    elif isinstance(cause, _PROTOCOL_CAUSES):
        error_class = httpx.RemoteProtocolError
    elif isinstance(cause, OSError):  # includes ssl.SSLError and socket.gaierror
        error_class = _NETWORK_ERRORS[phase]
    else:
        error_class = httpx.RemoteProtocolError if phase == "read" else _NETWORK_ERRORS[phase]
    detail = str(cause) or type(cause).__name__
    if isinstance(cause, OSError) and cause.errno and cause.strerror:
        reason = os.strerror(cause.errno)
        if reason not in detail:  # asyncio says "Connect call failed", not why
            detail = f"{detail} ({reason})"
    if isinstance(cause, httptools.HttpParserError) and cause.__context__ is not None:
        detail = f"{detail} ({cause.__context__})"
    message = f"{context}: {detail}" if context else detail
    error = error_class(message, request=request)
    error.__cause__ = cause
    return error
