"""Scenarios: what is measured, with which tool, and which figures each one yields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metric:
    """One figure of a scenario. ``higher_is_better`` decides how ratios and the chart read."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    proxy_only: bool = False  # memory and CPU of the proxy process: no value for direct
    digits: int = 0


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    kind: str  # http | h2 | ws-echo | ws-idle | stream
    metrics: tuple[Metric, ...]
    tls: bool = False
    params: dict[str, object] = field(default_factory=dict)

    @property
    def primary(self) -> Metric:
        return self.metrics[0]


@dataclass(frozen=True)
class Profile:
    """Durations and sizes: the full run, or --quick for CI."""

    rounds: int = 3
    duration_s: float = 10.0
    warmup_s: float = 2.0
    connections: int = 32
    ws_message_bytes: int = 128
    idle_sessions: int = 1000
    # ws-idle-many: past what one process may hold under this machine's open-file limit,
    # so every target runs as many worker processes as the count needs (see measure).
    many_idle_sessions: int = 10000
    stream_bytes: int = 1024**3

    @classmethod
    def quick(cls) -> Profile:
        return cls(
            rounds=1,
            duration_s=1.0,
            warmup_s=0.0,
            idle_sessions=100,
            many_idle_sessions=200,
            stream_bytes=16 * 1024**2,
        )

    def sessions(self, scenario: Scenario) -> int:
        """How many idle sessions an idle scenario opens."""
        return self.many_idle_sessions if scenario.params.get("many") else self.idle_sessions


REQ_S = Metric("req_per_s", "throughput", "req/s", True)
HTTP_P99 = Metric("p99_ms", "p99 latency", "ms", False, digits=2)
HTTP_CPU = Metric("req_per_cpu_s", "proxy CPU efficiency", "req/CPU-s", True, proxy_only=True)
H2_MEAN = Metric("mean_ms", "mean latency", "ms", False, digits=2)
MSG_S = Metric("msgs_per_s", "throughput", "msg/s", True)
WS_P50 = Metric("p50_ms", "p50 round trip", "ms", False, digits=3)
WS_P99 = Metric("p99_ms", "p99 round trip", "ms", False, digits=3)
WS_CPU = Metric("msgs_per_cpu_s", "proxy CPU efficiency", "msg/CPU-s", True, proxy_only=True)
KIB_SESSION = Metric(
    "kib_per_session", "RSS per idle session", "KiB", False, proxy_only=True, digits=1
)
OPEN_S = Metric("open_s", "time to open them", "s", False, digits=1)
MB_S = Metric("mb_per_s", "throughput", "MB/s", True)
PEAK_RSS = Metric("peak_rss_mib", "proxy peak RSS", "MiB", False, proxy_only=True, digits=1)


def _http(name: str, title: str, path: str, method: str, body: int, tls: bool) -> Scenario:
    suffix = "tls" if tls else "plain"
    return Scenario(
        f"{name}-{suffix}",
        f"{title} ({'TLS' if tls else 'plain'})",
        "http",
        (REQ_S, HTTP_P99, HTTP_CPU),
        tls=tls,
        params={"path": path, "method": method, "body_bytes": body},
    )


def all_scenarios() -> list[Scenario]:
    http = [
        _http(name, title, path, method, body, tls)
        for tls in (False, True)
        for name, title, path, method, body in (
            ("get-small", "GET 100 B", "/small", "GET", 0),
            ("get-64k", "GET 64 KiB", "/64k", "GET", 0),
            ("post-64k", "POST 64 KiB", "/64k", "POST", 64 * 1024),
        )
    ]
    # h2load over HTTP/2 (TLS): only targets that speak it (gateway, nginx) run it.
    h2 = [
        Scenario(
            "get-small-h2",
            "GET 100 B over HTTP/2 (TLS)",
            "h2",
            (REQ_S, H2_MEAN, HTTP_CPU),
            tls=True,
            params={"path": "/small"},
        )
    ]
    ws = [
        Scenario(
            f"ws-echo-{n}",
            f"WebSocket echo, {n} session{'s' if n > 1 else ''}",
            "ws-echo",
            (MSG_S, WS_P50, WS_P99, WS_CPU),
            params={"sessions": n},
        )
        for n in (1, 64)
    ]
    idle = [
        Scenario("ws-idle", "Idle WebSocket sessions", "ws-idle", (KIB_SESSION,)),
        Scenario(
            "ws-idle-many",
            "Idle WebSocket sessions, many",
            "ws-idle",
            (KIB_SESSION, OPEN_S),
            params={"many": True},
        ),
    ]
    stream = [
        Scenario(
            f"stream-{direction}",
            f"Streamed {direction}",
            "stream",
            (MB_S, PEAK_RSS),
            params={"direction": direction},
        )
        for direction in ("upload", "download")
    ]
    return [*http, *h2, *ws, *idle, *stream]
