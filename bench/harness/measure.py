"""Running one scenario against one started target: load generators on the load core,
readings of the proxy's process group from /proc."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from . import provision
from .layout import LOAD_CPU, NODE_DIR, UPLOAD_FILE, WORK_DIR, WRK_SCRIPT
from .procs import Processes, RssSampler, cpu_seconds, peak_rss_kib, rss_kib
from .scenarios import Profile, Scenario
from .targets import Running

Figures = dict[str, Any]


class ScenarioError(RuntimeError):
    """The scenario ran but the target answered wrongly (errors, short bodies, refusals)."""


def run(procs: Processes, target: Running, scenario: Scenario, profile: Profile) -> Figures:
    runner = {"http": http, "h2": h2, "ws-echo": ws_echo, "ws-idle": ws_idle, "stream": stream}[
        scenario.kind
    ]
    return runner(procs, target, scenario, profile)


def _cpu(target: Running) -> float | None:
    return cpu_seconds(target.pgid) if target.pgid else None


def _per_cpu(count: float, cpu_before: float | None, cpu_after: float | None) -> float | None:
    if cpu_before is None or cpu_after is None or cpu_after <= cpu_before:
        return None
    return count / (cpu_after - cpu_before)


# --- HTTP: wrk ---------------------------------------------------------------------------


def _wrk(
    procs: Processes, target: Running, scenario: Scenario, profile: Profile, seconds: float
) -> dict[str, Any]:
    params = scenario.params
    argv: list[str | os.PathLike[str]] = [
        "wrk",
        "-t1",
        f"-c{profile.connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        WRK_SCRIPT,
        target.url(str(params["path"])),
    ]
    env = {"BENCH_METHOD": str(params["method"]), "BENCH_BODY_BYTES": str(params["body_bytes"])}
    out = procs.run("wrk", argv, cpu=LOAD_CPU, env=env, timeout_s=seconds + 60)
    for line in out.splitlines():
        if line.startswith("BENCHJSON "):
            summary: dict[str, Any] = json.loads(line.removeprefix("BENCHJSON "))
            return summary
    raise ScenarioError(f"wrk printed no summary:\n{out[-2000:]}")


def http(procs: Processes, target: Running, scenario: Scenario, profile: Profile) -> Figures:
    if profile.warmup_s > 0:
        _wrk(procs, target, scenario, profile, profile.warmup_s)
    cpu_before = _cpu(target)
    w = _wrk(procs, target, scenario, profile, profile.duration_s)
    cpu_after = _cpu(target)
    seconds = w["duration_us"] / 1e6
    socket_errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
    figures: Figures = {
        "req_per_s": w["requests"] / seconds,
        "p50_ms": w["p50_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "req_per_cpu_s": _per_cpu(w["requests"], cpu_before, cpu_after),
        "requests": w["requests"],
        "status_errors": w["status_errors"],
        "socket_errors": socket_errors,
    }
    if w["requests"] == 0:
        raise ScenarioError("no request completed")
    if w["status_errors"] or socket_errors > 0.01 * w["requests"]:
        raise ScenarioError(
            f"{w['status_errors']} non-2xx/3xx responses, {socket_errors} socket errors "
            f"in {w['requests']} requests"
        )
    return figures


# --- HTTP/2: h2load ----------------------------------------------------------------------

H2_STREAMS = 10  # concurrent streams per connection


def _h2load(procs: Processes, target: Running, path: str, profile: Profile, seconds: float) -> str:
    argv: list[str | os.PathLike[str]] = [
        "h2load",
        "-c",
        str(profile.connections),
        "-m",
        str(H2_STREAMS),
        "-D",
        str(max(1, round(seconds))),
        target.url(path),
    ]
    return procs.run("h2load", argv, cpu=LOAD_CPU, timeout_s=seconds + 60)


def _milliseconds(text: str) -> float:
    """h2load's durations: ``850us``, ``5.43ms``, ``1.2s``."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text.removesuffix(unit)) * scale
    raise ScenarioError(f"h2load duration {text!r}")


def parse_h2load(out: str) -> dict[str, float]:
    """h2load's summary: requests done and failed, status classes, req/s, mean latency."""
    figures: dict[str, float] = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("finished in"):  # finished in 10.00s, 12345.60 req/s, 1.2MB/s
            figures["req_per_s"] = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):  # requests: N total, N started, N done, N succeeded...
            words = line.replace(",", "").split()
            figures["requests"] = float(words[words.index("succeeded") - 1])
            figures["failed"] = float(words[words.index("failed") - 1])
            figures["errored"] = float(words[words.index("errored") - 1])
        elif line.startswith("status codes:"):  # status codes: N 2xx, N 3xx, N 4xx, N 5xx
            words = line.replace(",", "").split()
            figures["non_2xx"] = sum(float(words[i - 1]) for i, w in enumerate(words)
                                     if w in ("4xx", "5xx"))  # fmt: skip
        elif line.startswith("time for request:"):  # min max mean sd +/- sd
            figures["mean_ms"] = _milliseconds(line.split()[5])
    if "req_per_s" not in figures or "requests" not in figures:
        raise ScenarioError(f"h2load printed no summary:\n{out[-2000:]}")
    return figures


def h2(procs: Processes, target: Running, scenario: Scenario, profile: Profile) -> Figures:
    path = str(scenario.params["path"])
    if profile.warmup_s > 0:
        _h2load(procs, target, path, profile, profile.warmup_s)
    cpu_before = _cpu(target)
    h = parse_h2load(_h2load(procs, target, path, profile, profile.duration_s))
    cpu_after = _cpu(target)
    if h["requests"] == 0:
        raise ScenarioError("no request completed")
    if h["failed"] or h["errored"] or h["non_2xx"]:
        raise ScenarioError(
            f"{h['failed']:.0f} failed, {h['errored']:.0f} errored, {h['non_2xx']:.0f} non-2xx"
            f" of {h['requests']:.0f} requests"
        )
    return {
        "req_per_s": h["req_per_s"],
        "mean_ms": h.get("mean_ms"),
        "req_per_cpu_s": _per_cpu(h["requests"], cpu_before, cpu_after),
        "requests": h["requests"],
    }


# --- WebSocket: the Node load client -----------------------------------------------------


def _ws_client(procs: Processes, argv: list[str]) -> Any:
    return procs.start(
        "ws-load",
        ["node", NODE_DIR / "ws_load.js", *argv],
        cpu=LOAD_CPU,
        capture=True,
        stdin_pipe=True,
    )


def ws_echo(procs: Processes, target: Running, scenario: Scenario, profile: Profile) -> Figures:
    sessions = int(scenario.params["sessions"])  # type: ignore[call-overload]
    client = _ws_client(
        procs,
        [
            "echo",
            "--url",
            target.ws_url("/ws"),
            "--sessions",
            str(sessions),
            "--duration",
            str(profile.duration_s),
            "--warmup",
            str(profile.warmup_s),
            "--size",
            str(profile.ws_message_bytes),
        ],
    )
    try:
        budget = profile.warmup_s + 60
        start = client.next_json(budget)
        if start.get("event") != "start":
            raise ScenarioError(f"load client: {start}")
        cpu_before = _cpu(target)
        client.next_json(profile.duration_s + 30)  # "end"
        cpu_after = _cpu(target)
        result = client.next_json(30)
    finally:
        procs.stop(client)
    if result.get("event") != "result":
        raise ScenarioError(f"load client: {result}")
    figures: Figures = {
        "msgs_per_s": result["msgs_per_s"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "msgs_per_cpu_s": _per_cpu(result["messages"], cpu_before, cpu_after),
        "messages": result["messages"],
        "errors": result["errors"],
        "mismatches": result["mismatches"],
    }
    if result["messages"] == 0 or result["errors"] or result["mismatches"]:
        raise ScenarioError(
            f"{result['messages']} echoes, {result['errors']} session errors, "
            f"{result['mismatches']} wrong echoes"
        )
    return figures


def _open_idle(
    procs: Processes, target: Running, sessions: int, profile: Profile
) -> tuple[Any, dict[str, Any]]:
    client = _ws_client(
        procs,
        [
            "idle",
            "--url",
            target.ws_url("/ws"),
            "--sessions",
            str(sessions),
            "--concurrency",
            "50",
            "--size",
            str(profile.ws_message_bytes),
        ],
    )
    try:
        ready = client.next_json(120)
    except BaseException:
        procs.stop(client)
        raise
    if ready.get("event") != "ready" or ready.get("failed"):
        procs.stop(client)
        raise ScenarioError(f"opening {sessions} sessions: {ready}")
    return client, ready


def workers_for(sessions: int, fd_limit: int) -> int:
    """Processes a proxy needs to hold ``sessions`` idle sessions under ``fd_limit`` open
    files per process: two sockets per session, 1,024 files kept for everything else, and
    a quarter more sessions than an even share, since a shared listening socket does not
    deal connections out exactly evenly.  Every target gets the same count; the figure is
    the RSS of the whole process group, so a second worker's own baseline is not charged
    to the sessions (it is in ``before``)."""
    per_process = max(1, (fd_limit - 1024) // 2)
    return max(1, math.ceil(sessions * 1.25 / per_process)) if sessions > per_process else 1


def ws_idle(procs: Processes, target: Running, scenario: Scenario, profile: Profile) -> Figures:
    # A few sessions first, so one-time costs (imports, pools) are not charged per session.
    warm, _ = _open_idle(procs, target, 10, profile)
    procs.stop(warm)
    time.sleep(0.5)
    before = rss_kib(target.pgid) if target.pgid else None
    client, ready = _open_idle(procs, target, profile.sessions(scenario), profile)
    try:
        time.sleep(1.0)  # let the proxy settle (buffers, pending tasks)
        after = rss_kib(target.pgid) if target.pgid else None
    finally:
        procs.stop(client)
    figures: Figures = {"sessions": ready["opened"], "open_s": ready["seconds"]}
    if before is not None and after is not None:
        figures |= {
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_session": (after - before) / ready["opened"],
        }
    else:
        figures["kib_per_session"] = None
    return figures


# --- Streaming: curl ---------------------------------------------------------------------


def stream(procs: Processes, target: Running, scenario: Scenario, profile: Profile) -> Figures:
    size = profile.stream_bytes
    upload = scenario.params["direction"] == "upload"
    body_file = WORK_DIR / "stream-response.txt"
    base = ["curl", "--noproxy", "*", "-sS", "--max-time", "600", "-w", "%{json}"]
    if upload:
        provision.upload_file(UPLOAD_FILE, size)
        argv = [
            *base,
            "-o",
            str(body_file),
            "-X",
            "POST",
            "-H",
            "Expect:",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(UPLOAD_FILE),
            target.url("/upload"),
        ]
    else:
        argv = [*base, "-o", os.devnull, target.url(f"/download?bytes={size}")]
    before = rss_kib(target.pgid) if target.pgid else None
    if target.pgid:
        with RssSampler(target.pgid) as sampler:
            out = procs.run("curl", argv, cpu=LOAD_CPU, timeout_s=620)
        peak = max(sampler.peak_kib, peak_rss_kib(target.pgid))
    else:
        out = procs.run("curl", argv, cpu=LOAD_CPU, timeout_s=620)
        peak = None
    info = json.loads(out)
    if info.get("http_code") != 200:
        raise ScenarioError(f"HTTP {info.get('http_code')}")
    if upload:
        received = json.loads(body_file.read_text()).get("received")
        if received != size:
            raise ScenarioError(f"backend received {received} of {size} bytes")
    elif info.get("size_download") != size:
        raise ScenarioError(f"downloaded {info.get('size_download')} of {size} bytes")
    return {
        "mb_per_s": size / info["time_total"] / 1e6,
        "peak_rss_mib": peak / 1024 if peak is not None else None,
        "rss_before_mib": before / 1024 if before is not None else None,
        "seconds": info["time_total"],
    }
