"""Backend failures: the one place that maps the errors of httpx (the HTTP leg), websockets
(the WebSocket leg) and the OS to everything derived from them.

=====================================  =================  ======  ======================
failure                                kind               HTTP    retried on next target
=====================================  =================  ======  ======================
httpx ConnectError, OSError (refused,  connect_error      502     always: nothing sent
TLS, unreachable) on either leg
httpx ConnectTimeout                   connect_timeout    504     always
httpx PoolTimeout (our own limit)      pool_timeout       503     always
httpx Read/WriteTimeout, a WebSocket   timeout            504     idempotent, body not read
handshake not done in time
httpx Read/WriteError                  error              502     idempotent, body not read
httpx RemoteProtocolError, a WebSocket invalid_response   502     idempotent, body not read
answer that is not a handshake
a WebSocket refusal (InvalidStatus),   None               -       never: it is an answer
anything else
=====================================  =================  ======  ======================

``failure_kind`` drives passive health and retries (``gateway.upstream``), ``http_status``
the status a client gets, ``metrics_label`` the ``kind`` label of
``gateway_upstream_errors_total`` (the kind, ``refused`` for a WebSocket refusal, else
``other``). The WebSocket bridge's close codes follow from these in
``gateway.proxy.websocket_rules.map_backend_error``.
"""

from __future__ import annotations

from typing import Literal

import httpx
from websockets.exceptions import InvalidStatus, WebSocketException

__all__ = ["FailureKind", "failure_kind", "http_status", "metrics_label"]

FailureKind = Literal[
    "connect_error", "connect_timeout", "pool_timeout", "timeout", "error", "invalid_response"
]


def failure_kind(exc: BaseException) -> FailureKind | None:
    """What kind of target failure ``exc`` is; None if the target is not to blame."""
    if isinstance(exc, httpx.HTTPError):
        if isinstance(exc, httpx.PoolTimeout):
            return "pool_timeout"
        if isinstance(exc, httpx.ConnectTimeout):
            return "connect_timeout"
        if isinstance(exc, httpx.ConnectError):
            return "connect_error"
        if isinstance(exc, httpx.TimeoutException):
            return "timeout"
        if isinstance(exc, httpx.RemoteProtocolError):
            return "invalid_response"
        if isinstance(exc, httpx.NetworkError):
            return "error"
        return None
    if isinstance(exc, InvalidStatus):
        return None
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
        return "timeout"
    if isinstance(exc, OSError):  # refused, unreachable, TLS (ssl.SSLError)
        return "connect_error"
    if isinstance(exc, WebSocketException):  # not a WebSocket answer, or the connection broke
        return "invalid_response"
    return None


def http_status(exc: BaseException) -> int:
    """The status a client gets for a failure talking to the backend (502, 503 or 504)."""
    kind = failure_kind(exc)
    if kind == "pool_timeout":
        return 503
    if kind in ("timeout", "connect_timeout"):
        return 504
    return 502


def metrics_label(error: BaseException | str) -> str:
    """A short, bounded label for a backend failure (a string is a label already)."""
    if isinstance(error, str):
        return error
    kind = failure_kind(error)
    if kind is not None:
        return kind
    if isinstance(error, InvalidStatus):
        return "refused"
    return "other"
