"""When a failed HTTP attempt may go to the next target (pure rules, like nginx's
``proxy_next_upstream error timeout``, the default). The kinds are ``gateway.failures``'.

=====================================  =================  =========================
failure (httpx exception)              kind               retried on the next target
=====================================  =================  =========================
ConnectError (refused, TLS, DNS)       connect_error      always: nothing was sent
ConnectTimeout                         connect_timeout    always
PoolTimeout (our connection limit)     pool_timeout       always
Read/WriteTimeout before the head      timeout            idempotent, body not read
Read/WriteError before the head        error              idempotent, body not read
RemoteProtocolError before the head    invalid_response   idempotent, body not read
anything else (LocalProtocolError...)  None               never
=====================================  =================  =========================

"Body not read" means the gateway has not taken a single byte of the request body
from the client: a body streamed from the client cannot be replayed, and uploads are
never buffered. A response head received (any status, 5xx included) is an answer,
never retried, and nothing after it is. Every kind but ``pool_timeout`` (a limit of
the gateway, not a fault of the target) counts against the target's passive health.
"""

from __future__ import annotations

from gateway.failures import FailureKind

__all__ = ["IDEMPOTENT_METHODS", "NOT_SENT", "counts_as_failure", "may_retry"]

# RFC 9110 9.2.2.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Failures that happen before a single byte of the request left for the target.
NOT_SENT: frozenset[FailureKind] = frozenset({"connect_error", "connect_timeout", "pool_timeout"})


def counts_as_failure(kind: str | None) -> bool:
    """Whether a failure of this kind counts against the target's passive health."""
    return kind is not None and kind != "pool_timeout"


def may_retry(method: str, kind: FailureKind | None, body_read: bool) -> bool:
    """Whether an attempt that failed with ``kind`` may be repeated on another target.

    ``body_read``: some of the request body has already been taken from the client.
    """
    if kind is None or body_read:
        return False
    return kind in NOT_SENT or method in IDEMPOTENT_METHODS
