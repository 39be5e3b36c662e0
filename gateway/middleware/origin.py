"""Origin checks: the defence against cross-site WebSocket hijacking (and CSRF, optionally).

Browsers send ``Origin`` on every WebSocket handshake, and a WebSocket is not covered
by the same-origin policy: without this check any page on the web can open a session
with the user's cookies.  The check runs before the wrapped app, so a refused
handshake never reaches a backend.

Allowlist entries:

- ``"same-origin"``: Origin equals the scheme and Host the client used (the scheme is
  the connection's: put uvicorn's ``proxy_headers`` in front if TLS ends elsewhere);
- ``"https://app.example.com"``: that exact origin (default ports normalised);
- ``"https://*.example.com"``: any subdomain, at any depth, but not the apex;
- ``"*"``: any origin except ``null``;
- ``"null"``: the opaque origin of sandboxed frames and ``file:`` pages.

A request without Origin (a non-browser client) passes iff ``allow_missing``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.logs import get_logger
from gateway.responses import send_text

__all__ = ["OriginCheckMiddleware", "OriginRules", "origin_allowed", "origin_refusal"]

logger = get_logger("gateway.origin")

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# RFC 6454 serialisation: scheme "://" host [":" port], nothing else (no path, no userinfo).
_ORIGIN_RE = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.\-]*)://"
    r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9\-._~%!$&'()+,;=]+|\*(?:\.[a-z0-9\-_~]+)+)"
    r"(?::(?P<port>[0-9]{1,5}))?",
    re.IGNORECASE,
)
_HOST_RE = re.compile(
    r"(?P<host>\[[0-9a-f:.]+\]|[a-z0-9\-._~%!$&'()+,;=]+)(?::(?P<port>[0-9]{1,5}))?", re.I
)

Origin = tuple[str, str, int | None]  # scheme, host, port (default filled in)


def _normalise(scheme: str, host: str, port: str | None) -> Origin | None:
    scheme = scheme.lower()
    number = int(port) if port else DEFAULT_PORTS.get(scheme)
    if number is not None and not 0 < number < 65536:
        return None
    return scheme, host.lower(), number


def parse_origin(value: str) -> Origin | None:
    """``(scheme, host, port)`` of a serialised origin, or None if malformed."""
    match = _ORIGIN_RE.fullmatch(value)
    if match is None or match["host"].startswith("*"):
        return None
    return _normalise(match["scheme"], match["host"], match["port"])


@dataclass(frozen=True, slots=True)
class OriginRules:
    """A parsed allowlist; build it with ``OriginRules.parse``."""

    exact: frozenset[Origin] = frozenset()
    wildcards: tuple[tuple[str, str, int | None], ...] = ()  # scheme, ".suffix", port
    same_origin: bool = False
    any_origin: bool = False
    null: bool = False

    @classmethod
    def parse(cls, allow: Iterable[str]) -> OriginRules:
        """Validate allowlist entries; raises ``ValueError`` naming a bad one."""
        exact: set[Origin] = set()
        wildcards: list[tuple[str, str, int | None]] = []
        flags = {"same-origin": False, "*": False, "null": False}
        for entry in allow:
            if entry in flags:
                flags[entry] = True
                continue
            match = _ORIGIN_RE.fullmatch(entry)
            origin = match and _normalise(match["scheme"], match["host"], match["port"])
            if match is None or origin is None:
                raise ValueError(
                    f"origins: {entry!r} is not an origin like https://app.example.com"
                )
            scheme, host, port = origin
            if host.startswith("*"):
                wildcards.append((scheme, host[1:], port))
            else:
                exact.add(origin)
        return cls(
            frozenset(exact),
            tuple(wildcards),
            same_origin=flags["same-origin"],
            any_origin=flags["*"],
            null=flags["null"],
        )


def origin_refusal(
    origin: str | None,
    *,
    allow: OriginRules | Sequence[str],
    allow_missing: bool,
    scheme: str,
    host: str | None,
) -> str | None:
    """Why ``origin`` is refused, or None if it is allowed.

    ``scheme`` is the scope's (``https``/``wss``/...), ``host`` the Host header the
    client sent; both define what ``same-origin`` means.
    """
    rules = allow if isinstance(allow, OriginRules) else OriginRules.parse(allow)
    if origin is None:
        return None if allow_missing else "Origin header required"
    if origin == "null":
        return None if rules.null else "Origin null not allowed"
    parsed = parse_origin(origin)
    if parsed is None:
        return "malformed Origin header"
    if rules.any_origin or parsed in rules.exact:
        return None
    origin_scheme, origin_host, origin_port = parsed
    for wild_scheme, suffix, wild_port in rules.wildcards:
        if (origin_scheme, origin_port) == (wild_scheme, wild_port) and (
            origin_host.endswith(suffix) and len(origin_host) > len(suffix)
        ):
            return None
    if rules.same_origin and host is not None:
        # The page's origin uses http(s) even when the handshake says ws(s).
        page_scheme = {"wss": "https", "ws": "http"}.get(scheme, scheme)
        match = _HOST_RE.fullmatch(host)
        if match is not None and parsed == _normalise(page_scheme, match["host"], match["port"]):
            return None
    return "Origin not allowed"


def origin_allowed(
    origin: str | None,
    *,
    allow: OriginRules | Sequence[str],
    allow_missing: bool,
    scheme: str,
    host: str | None,
) -> bool:
    """True if ``origin`` passes the allowlist (see ``origin_refusal``)."""
    return (
        origin_refusal(origin, allow=allow, allow_missing=allow_missing, scheme=scheme, host=host)
        is None
    )


class OriginCheckMiddleware:
    """Refuse WebSocket handshakes (and, optionally, HTTP ``methods``) from other origins.

    Refused requests get 403 with a short plain-text reason, before ``app`` runs.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allow: Sequence[str] = ("same-origin",),
        allow_missing: bool = True,
        methods: Collection[str] = (),
    ) -> None:
        self.app = app
        self.rules = OriginRules.parse(allow)
        self.allow_missing = allow_missing
        self.methods = frozenset(method.upper() for method in methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        checked = scope["type"] == "websocket" or (
            scope["type"] == "http" and scope["method"] in self.methods
        )
        if checked:
            reason = self._refusal(scope)
            if reason is not None:
                await send_text(scope, send, 403, f"403 Forbidden: {reason}")
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> str | None:
        origins = [value for name, value in scope["headers"] if name.lower() == b"origin"]
        hosts = [value for name, value in scope["headers"] if name.lower() == b"host"]
        if len(origins) > 1:
            reason: str | None = "more than one Origin header"
        else:
            reason = origin_refusal(
                origins[0].decode("latin-1") if origins else None,
                allow=self.rules,
                allow_missing=self.allow_missing,
                scheme=scope.get("scheme", "http"),
                host=hosts[0].decode("latin-1") if len(hosts) == 1 else None,
            )
        if reason is not None:
            client = scope.get("client")
            logger.info(
                "origin refused: client=%s path=%s origin=%.200r reason=%s",
                client[0] if client else "-",
                scope.get("path", ""),
                b", ".join(origins).decode("latin-1"),
                reason,
            )
        return reason
