"""IP allow and deny lists (nginx ``allow``/``deny``) for HTTP requests and WebSocket handshakes.

Entries are single addresses (``192.0.2.7``, ``2001:db8::1``), CIDR ranges
(``10.0.0.0/8``, ``2001:db8::/32``) or ``all``.  The decision does not depend on the
order of the entries:

1. an address matching any ``deny`` entry is refused;
2. otherwise, if ``allow`` is empty every address passes;
3. otherwise only an address matching an ``allow`` entry passes.

So ``deny=["10.1.0.0/16"], allow=["10.0.0.0/8"]`` lets 10.x in except 10.1.x, whichever
way round it is written (nginx would need the deny line first).  A client whose address
is unknown or unreadable matches no entry: it passes a deny-only list and is refused by
an allowlist.  IPv4-mapped IPv6 addresses are compared as IPv4.

The client address honours ``trusted_proxies`` (see ``gateway.middleware.client_ip``): a
spoofed ``X-Forwarded-For`` from an untrusted peer is ignored.  A refused request gets
``403 Forbidden`` before the wrapped app runs, so it never reaches a backend; the reason
and the address go to the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.logs import get_logger
from gateway.middleware.client_ip import IPNetwork, client_ip, parse_address, parse_networks
from gateway.responses import send_text

__all__ = ["IPFilterMiddleware", "IPRules", "ip_allowed", "ip_refusal"]

logger = get_logger("gateway.ipfilter")


@dataclass(frozen=True, slots=True)
class IPRules:
    """Parsed allow and deny lists; build them with ``IPRules.parse``."""

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(
        cls, *, allow: Sequence[str | IPNetwork] = (), deny: Sequence[str | IPNetwork] = ()
    ) -> IPRules:
        """Validate entries; raises ``ValueError`` naming the list and the bad entry."""
        return cls(allow=parse_networks("allow", allow), deny=parse_networks("deny", deny))


def ip_refusal(address: str | None, rules: IPRules) -> str | None:
    """Why ``address`` is refused by ``rules``, or None if it passes."""
    ip = parse_address(address) if address is not None else None
    if ip is not None and any(ip in network for network in rules.deny):
        return "address denied"
    if not rules.allow:
        return None
    if ip is None:
        return "client address unknown"
    if any(ip in network for network in rules.allow):
        return None
    return "address not allowed"


def ip_allowed(address: str | None, rules: IPRules) -> bool:
    """True if ``address`` passes ``rules`` (see ``ip_refusal``)."""
    return ip_refusal(address, rules) is None


class IPFilterMiddleware:
    """Answer 403 to clients refused by the allow/deny lists, for HTTP and WebSocket."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allow: Sequence[str | IPNetwork] = (),
        deny: Sequence[str | IPNetwork] = (),
        trusted_proxies: Sequence[str | IPNetwork] = (),
    ) -> None:
        self.app = app
        self.rules = IPRules.parse(allow=allow, deny=deny)
        self.trusted_proxies = parse_networks("trusted_proxies", trusted_proxies)

    def __repr__(self) -> str:
        allow = [str(network) for network in self.rules.allow]
        deny = [str(network) for network in self.rules.deny]
        return f"IPFilterMiddleware(allow={allow!r}, deny={deny!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            address = client_ip(scope, self.trusted_proxies)
            reason = ip_refusal(address, self.rules)
            if reason is not None:
                logger.info(
                    "ip refused: client=%s path=%s reason=%s",
                    address or "-",
                    scope.get("path", ""),
                    reason,
                )
                await send_text(scope, send, 403)
                return
        await self.app(scope, receive, send)
