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
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.redaction import redact_url

__all__ = [
    "ClientLog",
    "EscapeControls",
    "UvicornNoise",
    "configure_logging",
    "escape_controls",
    "get_logger",
    "quiet_uvicorn",
]


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with control characters (and Unicode line separators) as ``\\xHH``: a
    client's ``%0a`` in a path cannot start a forged log line, nor ``%1b`` reach a terminal."""
    if text.isprintable():
        return text
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class EscapeControls(logging.Filter):
    """Escapes control characters in the string arguments of a record (the client-supplied
    values: paths, header values, addresses); the message template is the gateway's."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(escape_controls(a) if isinstance(a, str) else a for a in args)
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with control characters escaped in its records' values."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, EscapeControls) for f in logger.filters):
        logger.addFilter(EscapeControls())
    return logger


class UvicornNoise(EscapeControls):
    """uvicorn's own lines: drops those that repeat once per internal server and name
    none (or that ``gateway.refusals`` says better), redacts secrets from the URL of its
    WebSocket lines (``?access_token=...``), and escapes control characters."""

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
        if record.msg in self.TEMPLATES:
            return False
        args = record.args
        if (
            isinstance(record.msg, str)
            and record.msg.startswith('%s - "WebSocket %s"')
            and isinstance(args, tuple)
            and len(args) >= 2
            and isinstance(args[1], str)
        ):
            record.args = (args[0], redact_url(args[1]), *args[2:])
        return super().filter(record)


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
