"""The real client address of a request, honouring trusted proxies, computed once per request.

Middleware that decides by client address (IP filter, rate limits) call
``client_ip(scope, trusted)``.  Behind a trusted proxy (a load balancer that appends to
``X-Forwarded-For``) the client is the right-most address that is not a trusted proxy,
exactly as the forwarding rules compute it for the backend (``client_chain``).  From an
untrusted peer ``X-Forwarded-For`` is ignored: anyone can write it.

The result is cached in ``scope["state"]["client_ip"]`` so later layers reuse it; the
cache is keyed by the trusted-proxy list, so two layers configured differently never
read each other's answer.

Addresses are normalised: an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a
dual-stack socket reports for an IPv4 peer) becomes ``192.0.2.1``, and a port or brackets
that some proxies write into ``X-Forwarded-For`` (``192.0.2.1:5555``, ``[2001:db8::1]:80``)
are removed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from starlette.types import Scope

from gateway.proxy.forwarding import client_chain

__all__ = [
    "IPAddress",
    "IPNetwork",
    "client_ip",
    "normalise_address",
    "parse_address",
    "parse_networks",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_STATE_KEY = "client_ip"
_TRUSTED_KEY = "client_ip_trusted"
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_ALL = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


def parse_address(text: str) -> IPAddress | None:
    """The address in ``text`` (IPv4-mapped IPv6 as IPv4), or None if it is not one."""
    text = text.strip()
    address: IPAddress | None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = _address_with_port(text)
        if address is None:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _address_with_port(text: str) -> IPAddress | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # a bare IPv6 address has no port to strip
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def normalise_address(text: str) -> str:
    """``text`` as a canonical address string; text that is no address is returned as is."""
    address = parse_address(text)
    return text.strip() if address is None else str(address)


def parse_networks(key: str, values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """Parse addresses and CIDR ranges; raises ``ValueError`` naming ``key`` and the value.

    ``"all"`` stands for every IPv4 and IPv6 address (as in nginx ``deny all``).  A range
    with host bits set (``10.0.0.1/8``) is refused rather than guessed at, and an
    IPv4-mapped IPv6 range (``::ffff:10.0.0.0/104``) becomes its IPv4 range.
    """
    if isinstance(values, str):
        raise ValueError(f"{key}: expected a list of addresses, not the string {values!r}")
    networks: list[IPNetwork] = []
    for value in values:
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(value)
            continue
        if not isinstance(value, str):
            raise ValueError(f"{key}: {value!r} is not an IP address or CIDR range")
        if value.strip().lower() == "all":
            networks.extend(_ALL)
            continue
        try:
            network = ipaddress.ip_network(value.strip())
        except ValueError:
            try:
                loose = ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{key}: {value!r} is not an IP address or CIDR range") from None
            raise ValueError(
                f"{key}: {value!r} has host bits set (did you mean {str(loose)!r}?)"
            ) from None
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            mapped = network.network_address.ipv4_mapped
            assert mapped is not None  # a subnet of ::ffff:0:0/96 always maps
            network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
        networks.append(network)
    return tuple(networks)


def client_ip(scope: Scope, trusted: tuple[IPNetwork, ...] = ()) -> str | None:
    """The real client address of ``scope`` (None without a peer, as on a Unix socket).

    With ``trusted`` empty this is the peer address; otherwise ``X-Forwarded-For`` from
    a trusted peer is followed past every trusted proxy.  Cached in ``scope["state"]``.
    """
    state: dict[str, Any] = scope.setdefault("state", {})
    if _STATE_KEY in state and state.get(_TRUSTED_KEY) == trusted:
        cached: str | None = state[_STATE_KEY]
        return cached
    client = scope.get("client")
    peer = normalise_address(client[0]) if client else None
    if trusted and peer is not None:
        forwarded = [value for name, value in scope["headers"] if name == b"x-forwarded-for"]
        _, real = client_chain(peer, forwarded, trusted)
        address = normalise_address(real) if real is not None else None
    else:
        address = peer
    state[_STATE_KEY] = address
    state[_TRUSTED_KEY] = trusted
    return address
