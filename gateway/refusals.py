"""What the edge refuses or drops before any app sees it: counted per reason for the
metrics (process-wide, since the server protocols serve every app of the process), and
logged at most once per client address and reason per minute.

Any client can trigger these lines (a malformed request, plain HTTP on the TLS port, an
invalid WebSocket frame), so they are INFO or WARNING, carry the client's address and
no traceback, and cannot flood the log.  ERROR stays for the gateway's own faults.
"""

from __future__ import annotations

import logging
from collections import Counter

from gateway.logs import ClientLog, get_logger

__all__ = ["COUNTS", "refused"]

logger = get_logger("gateway.edge")

COUNTS: Counter[str] = Counter()
"""Refusals and drops so far, by reason (``bad_host``, ``request_trailer``, ...)."""

_LOG = ClientLog(logger)


def refused(
    reason: str, client: str | None, message: str, *args: object, level: int = logging.INFO
) -> None:
    """Count ``reason`` and log ``message % args`` (once a minute per client and reason)."""
    COUNTS[reason] += 1
    _LOG.log(level, client or "unknown", reason, message, *args)
