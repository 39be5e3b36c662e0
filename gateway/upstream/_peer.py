"""`Peer`: one target inside an upstream with its live state; `TargetStatus`, its snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.failures import FailureKind
from gateway.upstream._config import Target
from gateway.upstream._health import PassiveHealth, ProbeHealth

__all__ = ["Peer", "TargetStatus", "client_address"]


def client_address(scope: Mapping[str, Any]) -> str | None:
    """The client address an ASGI request is balanced by (``ip_hash``).

    The one the client-IP middleware worked out (``scope["state"]["client_ip"]``, the
    real client behind trusted proxies) when present, else the connection's peer.
    """
    state = scope.get("state")
    if state:
        address: str | None = state.get("client_ip")
        if address:
            return address
    client = scope.get("client")
    return client[0] if client else None


class Peer:
    """One target inside an `Upstream`, with its live state (nginx's peer).

    The proxies read ``target`` and ``origin_url``; everything else is the upstream's
    bookkeeping, exposed as `TargetStatus` by `Upstream.status()`.
    """

    __slots__ = (
        "active",
        "index",
        "last_error",
        "origin_url",
        "passive",
        "probe",
        "selected",
        "target",
    )

    def __init__(
        self, index: int, target: Target, passive: PassiveHealth, probe: ProbeHealth | None
    ) -> None:
        self.index = index
        self.target = target
        self.origin_url = httpx.URL(target.origin + "/")
        self.active = 0
        """Requests and sessions in progress (least_conn's measure)."""
        self.selected = 0
        """Requests and sessions sent here so far, trials and retries included."""
        self.passive = passive
        self.probe = probe
        self.last_error: FailureKind | str | None = None

    def __repr__(self) -> str:
        return f"<Peer {self.target.url} active={self.active} fails={self.passive.fails}>"


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """A snapshot of one target for metrics and status pages."""

    url: str
    address: str
    """``host[:port]`` (``localhost`` for a Unix socket)."""
    weight: int
    available: bool
    """Whether a new request could go there now (healthy and not taken out)."""
    down: bool
    """Down by its health checks, or failing within ``fail_timeout_s`` (readiness)."""
    healthy: bool | None
    """The active health check's verdict; None without health checks."""
    active: int
    selected: int
    fails: int
    out_for_s: float
    """Seconds until the target is tried again after failures (0: in rotation)."""
    last_error: str | None
