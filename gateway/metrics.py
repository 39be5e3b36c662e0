"""Prometheus metrics of one gateway, in its own ``CollectorRegistry``.

Several gateways can live in one process (tests, an app mounting two proxies), so
nothing is registered in prometheus-client's global default registry.

Who reports what, without importing this module (plain values and duck typing):

- ``MetricsMiddleware`` wraps a route's HTTP stack and counts each request once it is
  answered: status, latency.  If an inner layer puts ``scope["state"]["upstream_error"]``
  - the exception caught talking to the backend, a kind string such as
  ``"no_healthy_target"``, or a list of those (one per failed attempt when the proxy
  retried) - each counts as an upstream error of its kind (``gateway.failures.metrics_label``).
- A WebSocket bridge calls a *session observer* (``metrics.route(name)``, see
  ``SessionObserver``): ``websocket_opened()`` after accepting the client,
  ``websocket_closed(...)`` when the session ends, ``upstream_error(exc)`` when the
  backend leg cannot be opened.
- Target health and backend pool sizes are read at scrape time from the upstreams that
  ``watch_upstreams(callable)`` returns (by name: ``status()`` and ``transport.pool_stats()``).
- Certificates likewise from ``watch_certificates(callable)``: entries with ``hosts``,
  ``days_left`` and ``renewal`` (``gateway.certificates.CertificateStore.status``).

Metric names (namespace ``gateway``)::

    gateway_http_requests_total{route,code,protocol}      counter  (protocol: 1.0, 1.1, 2)
    gateway_http_request_duration_seconds{route}          histogram
    gateway_upstream_errors_total{route,kind}             counter
    gateway_websocket_sessions_open{route}                gauge
    gateway_websocket_sessions_total{route}               counter
    gateway_websocket_messages_total{route,direction}     counter
    gateway_websocket_bytes_total{route,direction}        counter
    gateway_upstream_target_healthy{upstream,target}      gauge, 1 up, 0 down (probe or failures)
    gateway_upstream_pool_connections{upstream}           gauge, open or opening
    gateway_upstream_pool_idle_connections{upstream}      gauge
    gateway_upstream_pool_waiting_requests{upstream}      gauge
    gateway_edge_refusals_total{reason}                   counter, process-wide: bad_host,
        bad_version, no_version, bad_framing, malformed, request_trailer, plain_http,
        tls_handshake, unknown_sni, invalid_websocket_data, http2_error
    gateway_certificate_expiry_days{host}                 gauge, days until the certificate
        served for host ends ("(default)": the default one)
    gateway_certificate_renewal_failures{host}            gauge, ACME orders failed in a row

plus ``process_*`` (CPU, memory, open files) unless ``process_metrics=False``.
``direction`` is ``client_to_backend`` or ``backend_to_client``; status classes come
from ``code`` in PromQL (``sum by (route) (rate(gateway_http_requests_total{code=~"5.."}[5m]))``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import refusals
from gateway._compat import floatToGoString
from gateway.failures import metrics_label
from gateway.redaction import redact_text
from gateway.upstream import TargetStatus

__all__ = [
    "LATENCY_BUCKETS_S",
    "UPSTREAM_ERROR_STATE_KEY",
    "ErrorRecord",
    "Metrics",
    "MetricsMiddleware",
    "RouteMetrics",
    "SessionObserver",
    "redact_secrets",
    "route_label",
]

# nginx-like latencies: sub-millisecond proxying up to the 60 s read timeout.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
UPSTREAM_ERROR_STATE_KEY = "upstream_error"
_RATE_WINDOW_S = 10.0


def route_label(prefix: str, hosts: Iterable[str] = ()) -> str:
    """The ``route`` label of a route: ``"example.com,*.example.com/api"``, or the prefix."""
    return ",".join(hosts) + prefix


def redact_secrets(text: str) -> str:
    """``text`` without URL credentials or secret-looking parameter values (the one policy
    of ``gateway.redaction``)."""
    return redact_text(text)


def _error_message(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return redact_secrets(f"{type(error).__name__}: {error}")[:300]


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One recent error for the status page (never with credentials)."""

    time_s: float
    route: str
    kind: str
    message: str


class SessionObserver(Protocol):
    """What a WebSocket bridge reports; ``RouteMetrics`` implements it for one route."""

    def websocket_opened(self) -> None: ...

    def websocket_closed(
        self, messages_up: int, bytes_up: int, messages_down: int, bytes_down: int
    ) -> None: ...

    def upstream_error(self, error: BaseException | str) -> None: ...


class RouteMetrics:
    """The metrics of one route; the per-request part is plain arithmetic.

    Prometheus-client's own counters take a lock per update (about 1 us each here);
    request counts and latencies run on every request, so they are kept as plain
    numbers, updated from the event loop's thread, and turned into metric families
    when scraped (``_RequestCollector``).  The rare events use prometheus-client.
    """

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.metrics = metrics
        self.route = route
        # (status, HTTP version of the request: "1.1", "2", ...) -> requests answered
        self.statuses: dict[tuple[int, str], int] = {}
        self._bounds = metrics.latency_buckets_s
        # One slot per bucket bound and a last one for +Inf; not cumulative.
        self.latency_buckets = [0] * (len(self._bounds) + 1)
        self.latency_sum_s = 0.0
        self.server_errors = 0
        self.upstream_errors = 0
        self.websocket_open = 0

    @property
    def requests(self) -> int:
        """HTTP requests answered so far."""
        return sum(self.statuses.values())

    def request_done(self, status: int, seconds: float, protocol: str = "1.1") -> None:
        """Count one answered HTTP request (``status`` 499: the client left first) that
        came over HTTP/``protocol``."""
        statuses = self.statuses
        key = (status, protocol)
        statuses[key] = statuses.get(key, 0) + 1
        self.latency_buckets[bisect_left(self._bounds, seconds)] += 1
        self.latency_sum_s += seconds
        if status >= 500:
            self.server_errors += 1

    def upstream_error(self, error: BaseException | str) -> None:
        """Count a failure talking to the backend and keep it for the status page."""
        kind = metrics_label(error)
        self.metrics.upstream_errors.labels(self.route, kind).inc()
        self.upstream_errors += 1
        self.metrics.record_error(self.route, kind, _error_message(error))

    def websocket_opened(self) -> None:
        """A bridged session was accepted to the client."""
        self.metrics.websocket_open.labels(self.route).inc()
        self.metrics.websocket_sessions.labels(self.route).inc()
        self.websocket_open += 1

    def websocket_closed(
        self, messages_up: int, bytes_up: int, messages_down: int, bytes_down: int
    ) -> None:
        """An accepted session ended; ``up`` is client -> backend, ``down`` the reverse."""
        m, route = self.metrics, self.route
        m.websocket_open.labels(route).dec()
        m.websocket_messages.labels(route, "client_to_backend").inc(messages_up)
        m.websocket_messages.labels(route, "backend_to_client").inc(messages_down)
        m.websocket_bytes.labels(route, "client_to_backend").inc(bytes_up)
        m.websocket_bytes.labels(route, "backend_to_client").inc(bytes_down)
        self.websocket_open -= 1


class _RequestCollector(Collector):
    """``http_requests_total`` and the latency histogram, from every ``RouteMetrics``."""

    def __init__(self, metrics: Metrics, namespace: str) -> None:
        self.metrics = metrics
        self.requests_name = f"{namespace}_http_requests"
        self.latency_name = f"{namespace}_http_request_duration_seconds"
        self.bucket_names = [*map(floatToGoString, metrics.latency_buckets_s), "+Inf"]

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                self.requests_name,
                "HTTP requests answered.",
                labels=["route", "code", "protocol"],
            ),
            HistogramMetricFamily(
                self.latency_name,
                "Time from request start to the end of the response.",
                labels=["route"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        requests, latency = self._families()
        for view in list(self.metrics.routes.values()):
            # Copies first: a scrape from another thread must not see a dict resize.
            statuses = dict(view.statuses)
            buckets = list(view.latency_buckets)
            for (status, protocol), count in sorted(statuses.items()):
                requests.add_metric([view.route, str(status), protocol], count)
            if statuses:
                cumulative = list(zip(self.bucket_names, accumulate(buckets), strict=True))
                latency.add_metric([view.route], cumulative, sum_value=view.latency_sum_s)
        yield requests
        yield latency


class _UpstreamCollector(Collector):
    """Target health and backend pool sizes of every upstream, read when Prometheus scrapes."""

    POOL = (
        ("connections", "upstream_pool_connections", "Backend connections open or opening."),
        ("idle", "upstream_pool_idle_connections", "Idle keep-alive backend connections."),
        ("waiting", "upstream_pool_waiting_requests", "Requests waiting for a connection."),
    )

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.source: Callable[[], Mapping[str, UpstreamView]] | None = None

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        if self.source is None:
            return
        upstreams = self.source()
        healthy = GaugeMetricFamily(
            f"{self.namespace}_upstream_target_healthy",
            "Backend target health: 1 up, 0 down (health check or recent failures).",
            labels=["upstream", "target"],
        )
        pools = {
            key: GaugeMetricFamily(f"{self.namespace}_{name}", text, labels=["upstream"])
            for key, name, text in self.POOL
        }
        for name, upstream in upstreams.items():
            for target in upstream.status():
                healthy.add_metric([name, target.address], 0 if target.down else 1)
            pool_stats = getattr(upstream.transport, "pool_stats", None)
            stats: Mapping[str, int] = pool_stats() if callable(pool_stats) else {}
            for key, family in pools.items():
                if key in stats:
                    family.add_metric([name], stats[key])
        yield healthy
        yield from pools.values()


class _RefusalCollector(Collector):
    """What the edge refused or dropped before any app saw it (``gateway.refusals``)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            f"{self.namespace}_edge_refusals",
            "Requests, connections and trailers refused or dropped at the edge, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(refusals.COUNTS.items()):
            family.add_metric([reason], count)
        yield family


class _CertificateCollector(Collector):
    """Days until each served certificate ends, and failed renewals, read on scrapes."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.source: Callable[[], Sequence[Mapping[str, Any]]] | None = None

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        if self.source is None:
            return
        expiry = GaugeMetricFamily(
            f"{self.namespace}_certificate_expiry_days",
            "Days until the certificate served for the host name ends.",
            labels=["host"],
        )
        failures = GaugeMetricFamily(
            f"{self.namespace}_certificate_renewal_failures",
            "ACME orders for the host name that failed in a row (0: none).",
            labels=["host"],
        )
        for entry in self.source():
            for host in entry["hosts"]:
                if entry["days_left"] is not None:
                    expiry.add_metric([host], entry["days_left"])
                if entry["renewal"] is not None:
                    failures.add_metric([host], entry["renewal"]["failures"])
        yield expiry
        yield failures


class UpstreamView(Protocol):
    """What the metrics read of an upstream (``gateway.upstream.Upstream`` has it)."""

    @property
    def transport(self) -> object: ...

    def status(self) -> Sequence[TargetStatus]: ...


class Metrics:
    """All metrics of one gateway in ``registry`` (a fresh one by default).

    ``route(name)`` gives the bound per-route view used by ``MetricsMiddleware`` and
    WebSocket bridges; the plain methods below are for reporters without one.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "gateway",
        latency_buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S,
        max_recent_errors: int = 50,
        process_metrics: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.clock = clock
        options: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        if list(latency_buckets_s) != sorted(set(latency_buckets_s)) or not latency_buckets_s:
            raise ValueError(f"latency_buckets_s must increase: {latency_buckets_s!r}")
        self.latency_buckets_s = tuple(float(b) for b in latency_buckets_s if b != float("inf"))
        self.routes: dict[str, RouteMetrics] = {}
        self.registry.register(_RequestCollector(self, namespace))
        self.upstream_errors = Counter(
            "upstream_errors", "Failures talking to a backend.", ["route", "kind"], **options
        )
        self.websocket_open = Gauge(
            "websocket_sessions_open", "WebSocket sessions being bridged.", ["route"], **options
        )
        self.websocket_sessions = Counter(
            "websocket_sessions", "WebSocket sessions accepted.", ["route"], **options
        )
        self.websocket_messages = Counter(
            "websocket_messages", "WebSocket messages bridged.", ["route", "direction"], **options
        )
        self.websocket_bytes = Counter(
            "websocket_bytes",
            "WebSocket payload bytes bridged (text as UTF-8).",
            ["route", "direction"],
            **options,
        )
        self._upstreams = _UpstreamCollector(namespace)
        self.registry.register(self._upstreams)
        self.registry.register(_RefusalCollector(namespace))
        self._certificates = _CertificateCollector(namespace)
        self.registry.register(self._certificates)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self.recent_errors: deque[ErrorRecord] = deque(maxlen=max_recent_errors)
        self._rate_samples: deque[tuple[float, int]] = deque([(clock(), 0)], maxlen=256)

    def __repr__(self) -> str:
        return f"Metrics(routes={list(self.routes)!r})"

    # Reporting

    def route(self, name: str) -> RouteMetrics:
        """The per-route view for ``name`` (created on first use, then shared)."""
        view = self.routes.get(name)
        if view is None:
            view = self.routes[name] = RouteMetrics(self, name)
        return view

    def request_done(self, route: str, status: int, seconds: float, protocol: str = "1.1") -> None:
        """Count one answered HTTP request of ``route``."""
        self.route(route).request_done(status, seconds, protocol)

    def upstream_error(self, route: str, error: BaseException | str) -> None:
        """Count a backend failure (an exception, or a kind such as ``"no_healthy_target"``)."""
        self.route(route).upstream_error(error)

    def websocket_opened(self, route: str) -> None:
        """A WebSocket session of ``route`` was accepted."""
        self.route(route).websocket_opened()

    def websocket_closed(
        self, route: str, messages_up: int, bytes_up: int, messages_down: int, bytes_down: int
    ) -> None:
        """An accepted WebSocket session of ``route`` ended."""
        self.route(route).websocket_closed(messages_up, bytes_up, messages_down, bytes_down)

    def watch_upstreams(self, source: Callable[[], Mapping[str, UpstreamView]] | None) -> None:
        """Read target health and pool sizes from ``source()`` (upstreams by name) on scrapes."""
        self._upstreams.source = source

    def watch_certificates(self, source: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        """Read the served certificates from ``source()`` on scrapes."""
        self._certificates.source = source

    def record_error(self, route: str, kind: str, message: str) -> None:
        """Keep an error for the status page (the last ``max_recent_errors``)."""
        self.recent_errors.append(ErrorRecord(self.clock(), route, kind, message))

    # Reading

    def exposition(self) -> bytes:
        """The registry in Prometheus text format 0.0.4."""
        return generate_latest(self.registry)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The registry and its content type in the format an ``Accept`` header asks for.

        Text format 0.0.4 by default; OpenMetrics or text 1.0.0 when asked for.
        """
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def snapshot(self) -> dict[str, Any]:
        """Live counts for the status page: totals, requests/s, per route, recent errors."""
        routes = {
            name: {
                "requests": view.requests,
                "server_errors": view.server_errors,
                "upstream_errors": view.upstream_errors,
                "websocket_open": view.websocket_open,
            }
            for name, view in self.routes.items()
        }
        total = sum(view.requests for view in self.routes.values())
        return {
            "requests_total": total,
            "requests_per_s": round(self._rate(total), 2),
            "server_errors_total": sum(v.server_errors for v in self.routes.values()),
            "upstream_errors_total": sum(v.upstream_errors for v in self.routes.values()),
            "websocket_open": sum(v.websocket_open for v in self.routes.values()),
            "routes": routes,
            "recent_errors": [
                {"time_s": e.time_s, "route": e.route, "kind": e.kind, "message": e.message}
                for e in reversed(self.recent_errors)
            ],
        }

    def _rate(self, total: int) -> float:
        """Requests per second over about the last ``_RATE_WINDOW_S`` (sampled on reads)."""
        now = self.clock()
        samples = self._rate_samples
        samples.append((now, total))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW_S:
            samples.popleft()
        then, count = samples[0]
        return (total - count) / (now - then) if now > then else 0.0


class MetricsMiddleware:
    """Count and time each HTTP request of one route (pure ASGI, other scopes pass).

    Per request: one clock read at each end, a wrapped ``send`` and a few additions
    (``RouteMetrics.request_done``).  A request the app answered nothing to counts as
    499 (the client left; ``receive`` is not watched, to keep the cost down), one
    that raised as 500.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, route: str) -> None:
        self.app = app
        self.route = metrics.route(route)

    def __repr__(self) -> str:
        return f"MetricsMiddleware(route={self.route.route!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = 499
        start = time.perf_counter()

        # Returns send's awaitable: no coroutine frame of its own per message sent.
        def send_status(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            if status == 499:
                status = 500  # what the server answers for an app that crashed
            self.route.metrics.record_error(self.route.route, "internal", _error_message(exc))
            raise
        finally:
            self.route.request_done(
                status, time.perf_counter() - start, scope.get("http_version", "1.1")
            )
            error = state.get(UPSTREAM_ERROR_STATE_KEY)
            if error is not None:
                self._upstream_errors(error)

    def _upstream_errors(self, error: object) -> None:
        # One failure, or a list of them: one per failed attempt when the proxy retried.
        for each in error if isinstance(error, list | tuple) else (error,):
            if isinstance(each, BaseException | str):
                self.route.upstream_error(each)
