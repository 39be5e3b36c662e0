"""`Upstream`: a group of targets with balancing, passive and active health, and its transport."""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import Callable, Collection, Sequence
from typing import Literal

import httpx

from gateway.failures import FailureKind
from gateway.logs import get_logger
from gateway.transport import UpstreamTransport
from gateway.upstream._balance import (
    hash_seed,
    highest_random_weight,
    least_connections,
    smooth_weighted,
)
from gateway.upstream._config import HealthCheck, Target, check_upstream_options
from gateway.upstream._health import PassiveHealth, ProbeHealth
from gateway.upstream._peer import Peer, TargetStatus
from gateway.upstream._probe import probe_once
from gateway.upstream._retry import counts_as_failure
from gateway.upstream._tls import client_ssl_context

__all__ = ["Balance", "Upstream"]

logger = get_logger("gateway.upstream")

Balance = Literal["round_robin", "least_conn", "ip_hash"]


class Upstream:
    """Targets with a balancing policy, health and retry limits, like an nginx ``upstream``.

    - ``balance``: ``round_robin`` (smooth weighted, nginx's default), ``least_conn``
      (fewest active requests/sessions per weight) or ``ip_hash`` (sticky per client
      address; a target going down moves only its own clients).
    - Passive health: ``max_fails`` failures (connect errors, timeouts, broken responses;
      never a 5xx answer) within ``fail_timeout_s`` take a target out for
      ``fail_timeout_s``; then one trial request decides. As in nginx, a lone target is
      never taken out by failures (it would only turn 502s into longer 503s).
    - Active health: ``health`` probes every target from a background task between
      `start()` and `aclose()`; a target must pass both kinds to get requests.
    - Retries: a failed attempt may go to another target (see ``gateway.upstream._retry``),
      at most ``max_tries`` attempts in all, and none begun after ``try_timeout_s``.
    - TLS to ``https`` targets: verified against the system CAs, or ``ca_bundle``;
      ``verify=False`` turns checking off (logged as a warning).
    - The HTTP connection pools belong to the upstream: ``transport`` if given (then the
      caller closes it), else an `UpstreamTransport` with the pool limits below (per
      target), which `aclose()` closes.
    - ``on_health_change(target, healthy)`` is called when a target leaves or rejoins
      the rotation (passive or active health), for metrics; `status()` has the rest.
    """

    def __init__(
        self,
        targets: Sequence[Target | str],
        *,
        name: str = "",
        balance: Balance = "round_robin",
        # Passive health and retries
        max_fails: int = 1,
        fail_timeout_s: float = 10.0,
        max_tries: int = 3,
        try_timeout_s: float = 10.0,
        # Active health
        health: HealthCheck | None = None,
        # TLS to https targets (``ssl_context``, if given, is used as it is)
        verify: bool = True,
        ca_bundle: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        # Connection pool
        max_connections_per_target: int = 512,
        max_idle_per_target: int = 64,
        keepalive_expiry_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        # Observation and tests
        on_health_change: Callable[[Target, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_upstream_options(
            balance=balance,
            max_fails=max_fails,
            fail_timeout_s=fail_timeout_s,
            max_tries=max_tries,
            try_timeout_s=try_timeout_s,
        )
        if isinstance(targets, str):
            raise ValueError("targets must be a list of URLs or Target objects, not one string")
        self.targets = tuple(t if isinstance(t, Target) else Target(t) for t in targets)
        if not self.targets:
            raise ValueError("targets must name at least one target")
        urls = [target.url for target in self.targets]
        if len(set(urls)) != len(urls):
            raise ValueError(f"targets must not repeat a URL: {urls!r}")
        if health is not None and not isinstance(health, HealthCheck):
            raise ValueError(f"health must be a HealthCheck or None, got {health!r}")
        self.name = name
        self.balance: Balance = balance
        self.max_fails = max_fails
        self.fail_timeout_s = float(fail_timeout_s)
        self.max_tries = max_tries
        self.try_timeout_s = float(try_timeout_s)
        self.health = health
        self.verify = verify
        self.ca_bundle = ca_bundle
        self.ssl_context: ssl.SSLContext | None = ssl_context
        if ssl_context is None and any(target.scheme == "https" for target in self.targets):
            self.ssl_context = client_ssl_context(verify, ca_bundle)
            if not verify:
                logger.warning(
                    "upstream %s: TLS certificates of https targets are NOT verified"
                    " (verify=False)",
                    self,
                )
        self.max_connections_per_target = max_connections_per_target
        self.max_idle_per_target = max_idle_per_target
        self.keepalive_expiry_s = keepalive_expiry_s
        self.on_health_change = on_health_change
        self._transport = transport
        # A transport given by the caller is the caller's to close.
        self._owns_transport = transport is None
        if transport is None:
            self._new_transport()  # validates the limits now, not on the first request
        self._clock = clock
        self.peers = tuple(
            Peer(
                index,
                target,
                PassiveHealth(max_fails, self.fail_timeout_s),
                ProbeHealth(health.healthy_threshold, health.unhealthy_threshold)
                if health is not None
                else None,
            )
            for index, target in enumerate(self.targets)
        )
        # Passive health never empties a one-target upstream (nginx does the same).
        self._passive = max_fails > 0 and len(self.peers) > 1
        self._weights = [target.weight for target in self.targets]
        self._current = [0] * len(self.targets)
        self._seeds = [hash_seed(target.url) for target in self.targets]
        self._probe_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        urls = ", ".join(target.url for target in self.targets)
        label = f"{self.name!r}, " if self.name else ""
        return f"Upstream({label}[{urls}], balance={self.balance!r})"

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The HTTP transport to the targets, created on first use."""
        if self._transport is None:
            self._transport = self._new_transport()
        return self._transport

    def _new_transport(self) -> UpstreamTransport:
        return UpstreamTransport(
            max_connections_per_origin=self.max_connections_per_target,
            max_idle_per_origin=self.max_idle_per_target,
            keepalive_expiry_s=self.keepalive_expiry_s,
            ssl_context=self.ssl_context,
        )

    # -- choosing a target -------------------------------------------------------------

    def select(self, client_ip: str | None = None, exclude: Collection[int] = ()) -> Peer | None:
        """Choose the target for a request or session, or None if none is available.

        ``exclude`` holds the indices of targets already tried by this request. The
        chosen peer counts one more active request until `release()`.
        """
        now = self._clock()
        passive = self._passive
        eligible = [
            peer.index
            for peer in self.peers
            if peer.index not in exclude
            and (peer.probe is None or peer.probe.healthy)
            and (not passive or peer.passive.available(now))
        ]
        if not eligible:
            return None
        if len(eligible) == 1:
            index = eligible[0]
        elif self.balance == "least_conn":
            active = [peer.active for peer in self.peers]
            index = least_connections(self._weights, active, self._current, eligible)
        elif self.balance == "ip_hash" and client_ip is not None:
            index = highest_random_weight(client_ip, self._seeds, self._weights, eligible)
        else:
            index = smooth_weighted(self._weights, self._current, eligible)
        peer = self.peers[index]
        if passive and peer.passive.picked(now):
            logger.info("upstream %s: trying %s again", self._label, peer.target.url)
        peer.active += 1
        peer.selected += 1
        return peer

    def release(self, peer: Peer) -> None:
        """The request or session chosen with `select()` is over."""
        peer.active -= 1

    def succeeded(self, peer: Peer) -> None:
        """The target answered (any status: a 5xx is an answer, not a failure)."""
        if peer.passive.succeeded():
            logger.warning("upstream %s: %s answers again", self._label, peer.target.url)
            self._health_changed(peer, True)

    def failed(self, peer: Peer, kind: FailureKind | str, detail: str = "") -> None:
        """The attempt on ``peer`` failed with ``kind`` (see ``gateway.failures``).

        Failures are counted for a lone target too: it stays in rotation (there is no
        other), but it counts as down for readiness until ``fail_timeout_s`` has passed
        or a request succeeds.
        """
        peer.last_error = kind
        if not counts_as_failure(kind) or not peer.passive.failed(self._clock()):
            return
        if self._passive:
            logger.warning(
                "upstream %s: %s out of rotation for %g s after %d failure(s), last %s: %s",
                self._label,
                peer.target.url,
                self.fail_timeout_s,
                peer.passive.fails,
                kind,
                detail,
            )
        else:
            logger.warning(
                "upstream %s: %s is failing (%d failure(s), last %s: %s); as the only"
                " target it stays in rotation, and counts as down for %g s",
                self._label,
                peer.target.url,
                peer.passive.fails,
                kind,
                detail,
                self.fail_timeout_s,
            )
        self._health_changed(peer, False)

    def _health_changed(self, peer: Peer, healthy: bool) -> None:
        if self.on_health_change is not None:
            try:
                self.on_health_change(peer.target, healthy)
            except Exception:  # an observer must not break requests or health checks
                logger.exception("upstream %s: on_health_change failed", self._label)

    def retry_after_s(self) -> int:
        """Whole seconds until some target may be available again (at least 1)."""
        now = self._clock()
        waits = []
        for peer in self.peers:
            wait = 0.0
            if self._passive and not peer.passive.available(now):
                wait = peer.passive.out_until - now
            probe, check = peer.probe, self.health
            if probe is not None and check is not None and not probe.healthy:
                wait = max(wait, check.interval_s * (check.healthy_threshold - probe.successes))
            waits.append(wait)
        return max(1, math.ceil(min(waits)))

    def status(self) -> list[TargetStatus]:
        """The state of every target, for metrics, readiness and status pages."""
        now = self._clock()
        result = []
        for peer in self.peers:
            failing = not peer.passive.available(now)
            passive_ok = not self._passive or not failing
            out_for = 0.0 if passive_ok else max(0.0, peer.passive.out_until - now)
            healthy = None if peer.probe is None else peer.probe.healthy
            result.append(
                TargetStatus(
                    url=peer.target.url,
                    address=peer.target.authority,
                    weight=peer.target.weight,
                    available=passive_ok and healthy is not False,
                    down=failing or healthy is False,
                    healthy=healthy,
                    active=peer.active,
                    selected=peer.selected,
                    fails=peer.passive.fails,
                    out_for_s=out_for,
                    last_error=peer.last_error,
                )
            )
        return result

    @property
    def _label(self) -> str:
        return repr(self.name) if self.name else "-"

    # -- lifecycle and active health ---------------------------------------------------

    async def start(self) -> None:
        """Start the active health checks (if configured); calling it again does nothing."""
        if self.health is not None and self._probe_task is None:
            self._probe_task = asyncio.create_task(
                self._probe_forever(self.health), name=f"health checks of {self!r}"
            )

    def stop_health_checks(self) -> None:
        """Stop the active health checks now (a reload retired this upstream)."""
        if self._probe_task is not None:
            self._probe_task.cancel()

    async def aclose(self) -> None:
        """Stop the health checks and close the transport's connections."""
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None and self._owns_transport:
            await self._transport.aclose()

    async def _probe_forever(self, check: HealthCheck) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.gather(*(self.probe(peer, check) for peer in self.peers))
            await asyncio.sleep(max(0.0, started + check.interval_s - loop.time()))

    async def probe(self, peer: Peer, check: HealthCheck) -> bool:
        """Probe one target once, record the result, and return it."""
        ok, detail = await probe_once(self.transport, peer, check)
        assert peer.probe is not None
        if peer.probe.record(ok):
            if ok:
                logger.warning(
                    "upstream %s: %s is healthy again (%s)", self._label, peer.target.url, detail
                )
            else:
                logger.warning(
                    "upstream %s: %s is unhealthy after %d failed probes (%s)",
                    self._label,
                    peer.target.url,
                    peer.probe.failures,
                    detail,
                )
            self._health_changed(peer, ok)
        return ok
