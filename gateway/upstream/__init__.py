"""Upstream groups: targets, balancing, passive and active health, retries, upstream TLS.

::

    api = Upstream(
        [Target("http://10.0.0.1:8080", weight=3), "http://10.0.0.2:8080", "unix:/run/app.sock"],
        balance="least_conn",
        health=HealthCheck(path="/healthz"),
    )
    proxy = ReverseProxy(api)        # HTTP, with retries on the next target
    bridge = WebSocketProxy(api)     # WebSocket sessions on the same targets
    await api.start()                # active health checks (the app's lifespan)
    ...
    await api.aclose()

Modules: ``_config`` (value objects), ``_balance`` (pure picking functions),
``_health`` (pure health state machines), ``_retry`` (pure retry rules),
``_tls`` (client SSL context), ``_peer`` (a target's live state), ``_probe`` (one
active health probe), ``_upstream`` (the `Upstream` that ties them together).
"""

from gateway.failures import FailureKind, failure_kind
from gateway.upstream._balance import highest_random_weight, least_connections, smooth_weighted
from gateway.upstream._config import BALANCE_POLICIES, HealthCheck, Target
from gateway.upstream._health import PassiveHealth, ProbeHealth
from gateway.upstream._peer import Peer, TargetStatus, client_address
from gateway.upstream._retry import IDEMPOTENT_METHODS, counts_as_failure, may_retry
from gateway.upstream._tls import client_ssl_context
from gateway.upstream._upstream import Balance, Upstream

__all__ = [
    "BALANCE_POLICIES",
    "IDEMPOTENT_METHODS",
    "Balance",
    "FailureKind",
    "HealthCheck",
    "PassiveHealth",
    "Peer",
    "ProbeHealth",
    "Target",
    "TargetStatus",
    "Upstream",
    "client_address",
    "client_ssl_context",
    "counts_as_failure",
    "failure_kind",
    "highest_random_weight",
    "least_connections",
    "may_retry",
    "smooth_weighted",
]
