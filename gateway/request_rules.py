"""Pure rules for an HTTP/1 request head, judged before any route or backend sees it.

Strict where lenience is how request smuggling and routing confusion start, as RFC 9112
asks of a server (and stricter than nginx where that costs no real client):

- the version is HTTP/1.0 or HTTP/1.1: a request line without one (HTTP/0.9) is 400,
  ``HTTP/2.0`` or ``HTTP/3`` on an HTTP/1 line is 505;
- HTTP/1.1 has exactly one Host, and any Host is a valid ``host[:port]`` (RFC 3986: a
  registered name of letters, digits, ``-``, ``.``, ``_``, ``~``; an IPv4 address; an IPv6
  address in brackets; a port of digits up to 65535) - not ``a b``, ``x@y``, ``y/``,
  ``y?``, ``y#``, ``y\\``, quotes or percent signs, which downstream URL parsers read in
  different ways;
- HTTP/1.0 with Transfer-Encoding is refused (RFC 9112 section 6.1: its framing is
  faulty), as are several Content-Length values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Refusal",
    "body_may_lack_length",
    "check_head",
    "declared_body_bytes",
    "split_host",
    "valid_host",
]

_NAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
_MAX_HOST_BYTES = 255 + 1 + 5  # name, colon, port


@dataclass(frozen=True, slots=True)
class Refusal:
    """The answer to a request head that may not pass: status, reason (for metrics and
    logs) and the one-line body."""

    status: int
    reason: str
    message: str


def body_may_lack_length(http_version: str) -> bool:
    """Whether a request of ``http_version`` may carry a body with neither Content-Length
    nor Transfer-Encoding: HTTP/2 and 3 end a body with its stream (END_STREAM), HTTP/1
    requests without either header have none (RFC 9112 section 6.3)."""
    return http_version not in ("1.0", "1.1")


def declared_body_bytes(
    headers: Iterable[tuple[bytes, bytes]], http_version: str = "1.1"
) -> int | None:
    """The announced body size: Content-Length, 0 without a body, None if not announced
    (chunked, or an HTTP/2 or 3 body without Content-Length: counted as it streams)."""
    length = None if body_may_lack_length(http_version) else 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None  # the server refuses bad framing; if not, count the body
    return length


# The usual shapes, checked by one regular expression: a name or IPv4 address, a port.
_PLAIN_HOST = re.compile(rb"([A-Za-z0-9._~-]+)(?::([0-9]{1,5}))?")


def split_host(value: bytes) -> tuple[bytes, bytes | None] | None:
    """``(host, port)`` of a valid ``host[:port]`` value, else None."""
    if not value or len(value) > _MAX_HOST_BYTES:
        return None
    plain = _PLAIN_HOST.fullmatch(value)
    if plain is not None:
        port = plain.group(2)
        if port is not None and not 0 < int(port) <= 65535:
            return None
        return plain.group(1), port
    if value.startswith(b"["):
        end = value.find(b"]")
        if end == -1:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        if rest and not rest.startswith(b":"):
            return None
        port = rest[1:] if rest else None
    else:
        host, colon, port_part = value.partition(b":")
        port = port_part if colon else None
        if not host or not all(byte in _NAME_CHARS for byte in host):
            return None
    if port is not None and not (port.isdigit() and 0 < len(port) <= 5 and int(port) <= 65535):
        return None
    return host, port


# Verdicts on Host values seen lately: a connection sends the same one again and again,
# and each request meets the check up to twice (server head, router). Bounded: emptied
# when full, so a client inventing hosts costs only the check itself.
_HOST_VERDICTS: dict[bytes, bool] = {}
_MAX_HOST_VERDICTS = 1024


def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a usable Host header value (see the module docstring)."""
    verdict = _HOST_VERDICTS.get(value)
    if verdict is None:
        verdict = split_host(value) is not None
        if len(_HOST_VERDICTS) >= _MAX_HOST_VERDICTS:
            _HOST_VERDICTS.clear()
        _HOST_VERDICTS[value] = verdict
    return verdict


def check_head(version: str, headers: Iterable[tuple[bytes, bytes]]) -> Refusal | None:
    """The refusal for a request head with ``version`` and ``headers`` (lower-case names),
    or None if it may pass."""
    if version not in ("1.0", "1.1"):
        if version in ("0.9", ""):
            return Refusal(400, "no_version", "400 Bad Request: no HTTP/1.x version\n")
        return Refusal(
            505, "bad_version", "505 HTTP Version Not Supported: use HTTP/1.1 on this port\n"
        )
    hosts: list[bytes] = []
    lengths: set[bytes] = set()
    chunked = False
    for name, value in headers:
        if name == b"host":
            hosts.append(value)
        elif name == b"content-length":
            lengths.add(value.strip())
        elif name == b"transfer-encoding":
            chunked = True
    if len(hosts) > 1:
        return Refusal(400, "bad_host", "400 Bad Request: more than one Host header\n")
    if not hosts and version == "1.1":
        return Refusal(400, "bad_host", "400 Bad Request: HTTP/1.1 needs a Host header\n")
    if hosts and not valid_host(hosts[0]):
        return Refusal(400, "bad_host", "400 Bad Request: invalid Host header\n")
    if chunked and version == "1.0":
        return Refusal(
            400, "bad_framing", "400 Bad Request: Transfer-Encoding is not defined for HTTP/1.0\n"
        )
    if len(lengths) > 1:
        return Refusal(400, "bad_framing", "400 Bad Request: several Content-Length values\n")
    return None
