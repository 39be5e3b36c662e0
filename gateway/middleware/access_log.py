"""Access log: one line per HTTP request, nginx ``combined`` (extended) or JSON.

The ``combined`` line is nginx's, with the usual extension appended::

    $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
    "$http_referer" "$http_user_agent" rt=$request_time uht=$upstream_header_time
    ua="$upstream_addr" rid=$request_id

(one line; ``-`` for what is unknown).  ``json`` writes the same fields as one JSON
object per line.  The line is written when the response has finished, or when the
app returned because the client left (status 499 if nothing had been sent).

What other layers report, in the request's ``scope["state"]``:

- ``request_id`` - set by ``RequestIdMiddleware``;
- ``user`` - the authenticated user name, set by the auth middleware (the
  Authorization header itself is never read here);
- ``upstream`` - the backend target that answered, ``"host:port"`` (after retries the
  proxy may list every target tried, ``"10.0.0.1:80, 10.0.0.2:80"`` like nginx);
- ``upstream_time_s`` - seconds from forwarding the request until the response head
  arrived (or the attempt failed): nginx's ``$upstream_header_time``.

Credentials never reach the log: no Authorization or Cookie header is logged, and in
the query string and the Referer the values of parameters whose names look secret
(``token``, ``key``, ``password``, ``secret``, ``auth``, ``session``, ``sig``, ...) are
replaced by ``***``.  Paths are logged as sent: keep secrets out of paths.  Every
value is escaped like nginx does (``"``, ``\\``, control and non-ASCII bytes as
``\\xHH``), so a client cannot forge log lines.

WebSocket sessions get their line from the bridge when they end; this middleware
writes a line only for a WebSocket handshake that was refused with an HTTP answer
(403 from the origin check, 401, 429, a backend refusal ...), since no session
line follows those from a refusing layer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.middleware.client_ip import client_ip, parse_networks
from gateway.redaction import (
    SENSITIVE_PARAM_WORDS,
    Redactor,
    is_sensitive_name,
    redact_query,
    redact_url,
)

__all__ = [
    "SENSITIVE_PARAM_WORDS",
    "AccessLogMiddleware",
    "AccessRecord",
    "Redactor",
    "escape_log_value",
    "format_combined",
    "format_json",
    "format_time_local",
    "is_sensitive_name",
    "redact_query",
    "redact_url",
]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# nginx escapes '"', '\' and bytes outside printable ASCII as \xHH in its logs.
_ESCAPES = {c: f"\\x{c:02X}" for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}
_STATUS_BEFORE_ACCEPT = 403  # what ASGI servers answer to a close before accept


@dataclass(slots=True)
class AccessRecord:
    """What one access-log line says; text fields hold bytes decoded as Latin-1."""

    time_s: float
    remote_addr: str | None
    remote_user: str | None
    method: str
    target: str  # path and redacted query, as sent
    protocol: str
    status: int
    body_bytes_sent: int
    referer: str | None
    user_agent: str | None
    request_time_s: float
    upstream_addr: str | None
    upstream_time_s: float | None
    request_id: str | None
    host: str | None = None


def escape_log_value(value: str | None) -> str:
    """``value`` safe inside a quoted log field; ``-`` for None or empty."""
    if not value:
        return "-"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    if not value.isascii():
        # Characters beyond Latin-1 (a user name) are escaped byte by byte, like nginx.
        value = value.encode("utf-8").decode("latin-1") if max(value) > "\xff" else value
    return value.translate(_ESCAPES)


def format_time_local(time_s: float) -> str:
    """``10/Oct/2000:13:55:36 +0200`` in local time, without the locale's month names."""
    second = int(time_s)
    if _time_local_cache[0] != second:  # one conversion per second, not per request
        _time_local_cache[:] = [second, _time_local(second)]
    return str(_time_local_cache[1])


def _time_local(time_s: float) -> str:
    t = time.localtime(time_s)
    offset = t.tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


_time_local_cache: list[object] = [None, ""]
_time_iso_cache: list[object] = [None, "", ""]


def format_time_iso(time_s: float) -> str:
    """``2000-10-10T13:55:36.123+02:00`` in local time."""
    second = int(time_s)
    if _time_iso_cache[0] != second:
        local = datetime.fromtimestamp(second).astimezone()
        _time_iso_cache[:] = [second, local.strftime("%Y-%m-%dT%H:%M:%S"), local.strftime("%z")]
    _, head, zone = _time_iso_cache
    zone = f"{str(zone)[:3]}:{str(zone)[3:]}"
    return f"{head}.{int((time_s - second) * 1000):03d}{zone}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_combined(record: AccessRecord) -> str:
    """The nginx ``combined`` line extended with ``rt= uht= ua= rid=``."""
    r = record
    return (
        f"{escape_log_value(r.remote_addr)} - {escape_log_value(r.remote_user)} "
        f"[{format_time_local(r.time_s)}] "
        f'"{escape_log_value(f"{r.method} {r.target} {r.protocol}")}" '
        f"{r.status} {r.body_bytes_sent} "
        f'"{escape_log_value(r.referer)}" "{escape_log_value(r.user_agent)}" '
        f"rt={_seconds(r.request_time_s)} uht={_seconds(r.upstream_time_s)} "
        f'ua="{escape_log_value(r.upstream_addr)}" rid={escape_log_value(r.request_id)}'
    )


def format_json(record: AccessRecord) -> str:
    """One JSON object on one line (non-ASCII and control characters escaped)."""
    r = record
    upstream_time_s = None if r.upstream_time_s is None else round(r.upstream_time_s, 6)
    fields = {
        "time": format_time_iso(r.time_s),
        "remote_addr": r.remote_addr,
        "remote_user": r.remote_user,
        "method": r.method,
        "target": r.target,
        "protocol": r.protocol,
        "status": r.status,
        "body_bytes_sent": r.body_bytes_sent,
        "referer": r.referer,
        "user_agent": r.user_agent,
        "request_time_s": round(r.request_time_s, 6),
        "upstream_addr": r.upstream_addr,
        "upstream_time_s": upstream_time_s,
        "request_id": r.request_id,
        "host": r.host,
    }
    return json.dumps(fields, separators=(",", ":"))


class AccessLogMiddleware:
    """Log each HTTP request once it is answered (see the module docstring).

    Put it outermost: it measures the whole request, and the layers inside write
    what it reports into ``scope["state"]``.  ``trusted_proxies`` decides the logged
    client address as in the IP filter (``X-Forwarded-For`` only from those peers).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        format: Literal["combined", "json"] = "combined",
        logger_name: str = "gateway.access",
        trusted_proxies: Iterable[str] = (),
        sensitive_params: Iterable[str] = SENSITIVE_PARAM_WORDS,
    ) -> None:
        if format not in ("combined", "json"):
            raise ValueError(f"access log format must be 'combined' or 'json', not {format!r}")
        self.app = app
        self.format = format
        self.logger = logging.getLogger(logger_name)
        self.trusted_proxies = parse_networks("trusted_proxies", trusted_proxies)
        self.redactor = Redactor(sensitive_params)
        self._format = format_combined if format == "combined" else format_json

    def __repr__(self) -> str:
        return f"AccessLogMiddleware(format={self.format!r}, logger={self.logger.name!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # shared with the layers inside, who report into it
        responder = _Responder(scope, receive, send)
        start = time.time()
        try:
            await self.app(scope, responder.receive, responder.send)
        except Exception:
            if responder.status is None:
                responder.status = 500
            raise
        finally:
            if not responder.accepted:
                self._log(scope, responder, start)

    def _log(self, scope: Scope, responder: _Responder, start: float) -> None:
        end = time.time()
        state: dict[str, Any] = scope["state"]
        status = responder.status
        if status is None:
            status = 499 if responder.disconnected or scope["type"] == "websocket" else 500
        headers = _headers(scope)
        query = self.redactor.query(scope.get("query_string", b""))
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        target = raw_path + b"?" + query if query else raw_path
        referer = headers.get(b"referer")
        user = state.get("user")
        upstream_time_s = state.get("upstream_time_s")
        record = AccessRecord(
            time_s=end,
            remote_addr=self._remote_addr(scope),
            remote_user=str(user) if user is not None else None,
            method=scope.get("method", "GET"),
            target=target.decode("latin-1"),
            protocol=f"HTTP/{scope.get('http_version', '1.1')}",
            status=status,
            body_bytes_sent=responder.body_bytes,
            referer=self.redactor.url(referer.decode("latin-1")) if referer is not None else None,
            user_agent=_text(headers.get(b"user-agent")),
            request_time_s=max(0.0, end - start),
            upstream_addr=_text(state.get("upstream")),
            upstream_time_s=float(upstream_time_s) if upstream_time_s is not None else None,
            request_id=_text(state.get("request_id")),
            host=_text(headers.get(b"host")),
        )
        # The line as the message, no arguments: logging leaves a "%" in it alone.
        self.logger.info(self._format(record))

    def _remote_addr(self, scope: Scope) -> str | None:
        if self.trusted_proxies:
            return client_ip(scope, self.trusted_proxies)
        client = scope.get("client")
        if not client:
            return None
        peer: str = client[0]
        # What client_ip() would say for an untrusted peer, without parsing the address.
        return peer[7:] if peer.startswith("::ffff:") and "." in peer else peer


def _headers(scope: Scope) -> dict[bytes, bytes]:
    wanted = (b"referer", b"user-agent", b"host")
    return {name: value for name, value in scope["headers"] if name in wanted}


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


class _Responder:
    """One request's state: status and body bytes sent, whether the client left."""

    __slots__ = ("_receive", "_send", "accepted", "body_bytes", "disconnected", "status")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.status: int | None = None
        self.body_bytes = 0
        self.disconnected = False
        self.accepted = False  # a WebSocket session: the bridge logs it

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.body", "websocket.http.response.body"):
            self.body_bytes += len(message.get("body", b""))
        elif kind in ("http.response.start", "websocket.http.response.start"):
            self.status = message["status"]
        elif kind == "websocket.accept":
            self.accepted = True
        elif kind == "websocket.close" and self.status is None and not self.accepted:
            self.status = _STATUS_BEFORE_ACCEPT
        await self._send(message)
