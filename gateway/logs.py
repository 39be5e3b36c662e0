"""The gateway's log output: one format, uvicorn's per-server chatter removed, and lines
about clients limited per client address.

``configure_logging`` sets the format for the gateway's and uvicorn's loggers.  uvicorn
logs "Started server process" and the like once per internal server (the gateway runs
one per listener), so those lines are dropped; the gateway announces its listeners
and its start and stop itself.

``ClientLog`` is for what any client can trigger (plain HTTP on the TLS port, a failed
TLS handshake): one line per client address and kind per interval at most, so that a
client cannot flood the log.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["ClientLog", "UvicornNoise", "configure_logging", "quiet_uvicorn"]


class UvicornNoise(logging.Filter):
    """Drops uvicorn's lines that repeat once per internal server and name none."""

    TEMPLATES = frozenset(
        {
            "Started server process [%d]",
            "Finished server process [%d]",
            "Waiting for application startup.",
            "Application startup complete.",
            "Waiting for application shutdown.",
            "Application shutdown complete.",
            "Shutting down",
            # Answered and logged (with the client's address, rate limited) by
            # gateway.refusals instead.
            "Invalid HTTP request received.",
            "Invalid UTF-8 sequence received from client.",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.TEMPLATES


def quiet_uvicorn() -> None:
    """Drop uvicorn's per-server lines and the ones ``gateway.refusals`` says better."""
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, UvicornNoise) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(UvicornNoise())


def configure_logging(level: str) -> None:
    """One plain log format for the gateway's and uvicorn's loggers, at ``level``."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_uvicorn()


class ClientLog:
    """Logs a line about a client at most once per ``interval_s`` per (address, kind).

    Remembers at most ``max_clients`` keys (the oldest are forgotten first), so an
    attacker with many addresses costs bounded memory and gets at most that many lines
    per interval.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.max_clients = max_clients
        self._clock = clock
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    def allow(self, address: str, kind: str) -> bool:
        """Whether a line about ``address`` of ``kind`` may be logged now (and note it)."""
        now = self._clock()
        key = (address, kind)
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_clients:
            self._last.popitem(last=False)
        return True

    def log(self, level: int, address: str, kind: str, message: str, *args: object) -> None:
        """Log ``message % args`` at ``level`` unless ``address`` had a ``kind`` line lately."""
        if self.allow(address, kind):
            self.logger.log(level, message, *args)
