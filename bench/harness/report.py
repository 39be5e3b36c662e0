"""Medians over rounds, ratios to direct and nginx, the budget of issues 3 and 21; md + JSON."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from .scenarios import Metric, Scenario

Table = dict[str, dict[str, dict[str, float | None]]]  # scenario -> metric -> target -> value


def medians(cells: list[dict[str, Any]], scenarios: list[Scenario], targets: list[str]) -> Table:
    table: Table = {}
    for s in scenarios:
        table[s.id] = {}
        for m in s.metrics:
            row: dict[str, float | None] = {}
            for t in targets:
                values = [
                    c["figures"][m.key]
                    for c in cells
                    if c["scenario"] == s.id
                    and c["target"] == t
                    and not c["error"]
                    and c["figures"].get(m.key) is not None
                ]
                row[t] = statistics.median(values) if values else None
            table[s.id][m.key] = row
    return table


def ratios(table: Table, reference: str) -> Table:
    out: Table = {}
    for sid, metrics in table.items():
        out[sid] = {}
        for key, row in metrics.items():
            ref = row.get(reference)
            out[sid][key] = {
                t: (v / ref if v is not None and ref else None) for t, v in row.items()
            }
    return out


# --- the performance budget of issues 3 and 21 ------------------------------------------


def budget(table: Table) -> list[dict[str, Any]]:
    """Each requirement on the gateway, with the figure, the bound and whether it holds."""

    def get(sid: str, key: str, target: str) -> float | None:
        return table.get(sid, {}).get(key, {}).get(target)

    checks: list[dict[str, Any]] = []

    def check(
        label: str,
        value: float | None,
        bound: float | None,
        ok: Callable[[float, float], bool],
        unit: str,
    ) -> None:
        holds = ok(value, bound) if value is not None and bound is not None else None
        checks.append(
            {"requirement": label, "gateway": value, "bound": bound, "unit": unit, "holds": holds}
        )

    for sid, name in (("get-small-plain", "plain"), ("get-small-tls", "TLS")):
        g = get(sid, "req_per_s", "gateway")
        a = get(sid, "req_per_s", "asgiproxy")
        f = get(sid, "req_per_s", "fastapi-proxy-lib")
        check(f"GET small {name}: req/s >= asgiproxy", g, a, lambda v, b: v >= b, "req/s")
        check(
            f"GET small {name}: req/s >= 10x fastapi-proxy-lib",
            g,
            f * 10 if f else None,
            lambda v, b: v >= b,
            "req/s",
        )
    for sid, name in (("ws-echo-1", "1 session"), ("ws-echo-64", "64 sessions")):
        n = get(sid, "msgs_per_s", "nginx")
        check(
            f"WS echo {name}: msg/s >= 50% of nginx",
            get(sid, "msgs_per_s", "gateway"),
            n * 0.5 if n else None,
            lambda v, b: v >= b,
            "msg/s",
        )
        check(
            f"WS echo {name}: msg per proxy CPU-s >= asgiproxy",
            get(sid, "msgs_per_cpu_s", "gateway"),
            get(sid, "msgs_per_cpu_s", "asgiproxy"),
            lambda v, b: v >= b,
            "msg/CPU-s",
        )
        p = get(sid, "p99_ms", "nginx")
        check(
            f"WS echo {name}: p99 <= 2x nginx",
            get(sid, "p99_ms", "gateway"),
            p * 2 if p else None,
            lambda v, b: v <= b,
            "ms",
        )
    for sid in ("ws-idle", "ws-idle-many"):
        for kib in (40.0, 24.0):  # issue 3's bound, then issue 21's
            check(
                f"Idle WS sessions ({sid}): <= {kib:g} KiB per session",
                get(sid, "kib_per_session", "gateway"),
                kib,
                lambda v, b: v <= b,
                "KiB",
            )
    for direction in ("upload", "download"):
        check(
            f"Streamed {direction}: peak RSS < 100 MiB",
            get(f"stream-{direction}", "peak_rss_mib", "gateway"),
            100.0,
            lambda v, b: v < b,
            "MiB",
        )
    # Issue 21: a fraction of asgiproxy's CPU, uploads ahead of it (its idle bound is above).
    ahead_of_asgiproxy = (
        ("ws-echo-1", "WS echo 1 session: msg per proxy CPU-s", "msgs_per_cpu_s", 2.0),
        ("ws-echo-64", "WS echo 64 sessions: msg per proxy CPU-s", "msgs_per_cpu_s", 2.0),
        ("post-64k-plain", "POST 64 KiB plain: req/s", "req_per_s", 1.3),
        ("post-64k-tls", "POST 64 KiB TLS: req/s", "req_per_s", 1.3),
        ("get-small-plain", "GET small plain: req/s", "req_per_s", 2.0),
        ("get-small-tls", "GET small TLS: req/s", "req_per_s", 2.0),
    )
    for sid, label, key, factor in ahead_of_asgiproxy:
        check(
            f"{label} >= {factor:g}x asgiproxy",
            get(sid, key, "gateway"),
            _times(get(sid, key, "asgiproxy"), factor),
            lambda v, b: v >= b,
            "msg/CPU-s" if key == "msgs_per_cpu_s" else "req/s",
        )
    for sid, name in (("post-64k-plain", "plain"), ("post-64k-tls", "TLS")):
        check(
            f"POST 64 KiB {name}: p99 <= asgiproxy",
            get(sid, "p99_ms", "gateway"),
            get(sid, "p99_ms", "asgiproxy"),
            lambda v, b: v <= b,
            "ms",
        )
    for sid, name in (("get-small-plain", "plain"), ("get-small-tls", "TLS")):
        check(
            f"GET small {name}: the default stack costs <= 20% of gateway-bare's req/CPU-s",
            get(sid, "req_per_cpu_s", "gateway"),
            _times(get(sid, "req_per_cpu_s", "gateway-bare"), 0.8),
            lambda v, b: v >= b,
            "req/CPU-s",
        )
    return checks


def _times(value: float | None, factor: float) -> float | None:
    return value * factor if value is not None else None


# --- markdown ----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if digits == 0 and abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{max(digits, 1 if abs(value) < 100 else 0)}f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"


def _arrow(m: Metric) -> str:
    return "↑" if m.higher_is_better else "↓"


def _grid(
    scenarios: list[Scenario],
    targets: list[str],
    table: Table,
    cell: Callable[[Metric, float | None], str],
    *,
    proxy_figures: bool = True,
) -> list[str]:
    lines = [
        "| scenario | metric | " + " | ".join(targets) + " |",
        "|---|---|" + "---:|" * len(targets),
    ]
    for s in scenarios:
        for m in s.metrics:
            if m.proxy_only and not proxy_figures:
                continue
            row = table.get(s.id, {}).get(m.key, {})
            cells = " | ".join(cell(m, row.get(t)) for t in targets)
            lines.append(f"| {s.title} | {m.label} ({m.unit}) {_arrow(m)} | {cells} |")
    return lines


def markdown(result: dict[str, Any], scenarios: list[Scenario]) -> str:
    meta = result["meta"]
    machine = meta["machine"]
    targets = meta["targets"]
    profile = meta["profile"]
    lines = [
        f"# Gateway benchmark, {meta['started']}",
        "",
        f"Mode: **{meta['mode']}**: {profile['rounds']} interleaved round(s), "
        f"{profile['duration_s']:g} s per HTTP/WebSocket measurement "
        f"after {profile['warmup_s']:g} s warm-up, {profile['connections']} HTTP connections, "
        f"{profile['ws_message_bytes']} B WebSocket messages, "
        f"{profile['idle_sessions']} idle sessions "
        f"({profile.get('many_idle_sessions', 'no')} in ws-idle-many), "
        f"{profile['stream_bytes'] / 2**20:g} MiB streams. "
        f"Wall time {meta['wall_s'] / 60:.1f} min.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory_mib']} MiB, "
        f"{machine['os']}, Linux {machine['kernel']}. Proxy pinned to CPU 0; backends and load "
        f"generators to CPU 1.",
        "",
        f"Tools: {machine['nginx']}, Node {machine['node']} (ws {machine['node_ws']}), "
        f"{machine['wrk']}, {machine['curl'].split(' (')[0]}, {machine['openssl']}. "
        f"Gateway commit {machine['gateway_commit']}; project venv "
        + ", ".join(f"{k} {v}" for k, v in machine["project_venv"].items())
        + "; peers venv "
        + ", ".join(f"{k} {v}" for k, v in machine["bench_venv"].items())
        + ".",
        "",
    ]
    if len(meta.get("gateway_sources", [])) > 1:
        lines += [
            "**Warning:** the gateway's sources changed during this run "
            f"({len(meta['gateway_sources'])} versions measured; see `gateway_source` per cell "
            "in the JSON). Its medians mix versions.",
            "",
        ]
    if meta["skipped"]:
        lines += [
            "Skipped targets: "
            + "; ".join(f"**{t}**: {why}" for t, why in meta["skipped"].items()),
            "",
        ]
    lines += [
        "## Medians",
        "",
        "↑ higher is better, ↓ lower is better; n/a: not applicable or failed.",
        "",
    ]
    lines += _grid(scenarios, targets, result["medians"], lambda m, v: fmt(v, m.digits))
    for ref in ("nginx", "direct"):
        if ref not in targets:
            continue
        lines += [
            "",
            f"## Ratio to {ref}",
            "",
            f"target ÷ {ref}, per figure: for ↑ figures above 1.00x is better than {ref}, "
            f"for ↓ figures below 1.00x is better.",
            "",
        ]
        lines += _grid(
            scenarios,
            targets,
            result[f"ratio_to_{ref}"],
            lambda m, v: fmt_ratio(v),
            proxy_figures=ref != "direct",  # direct has no proxy process to measure
        )
    lines += [
        "",
        "## Performance budget of the gateway (issues 3 and 21)",
        "",
        "| requirement | gateway | bound | holds |",
        "|---|---:|---:|:---:|",
    ]
    for c in result["budget"]:
        mark = {True: "yes", False: "**no**", None: "n/a"}[c["holds"]]
        digits = 1 if c["unit"] in ("ms", "KiB", "MiB") else 0
        value, bound = fmt(c["gateway"], digits), fmt(c["bound"], digits)
        lines.append(f"| {c['requirement']} | {value} {c['unit']} | {bound} {c['unit']} | {mark} |")
    errors = [c for c in result["cells"] if c["error"]]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [
            f"- round {c['round']}, {c['scenario']}, {c['target']}: "
            + c["error"].splitlines()[0][:300]
            for c in errors
        ]
    lines.append("")
    return "\n".join(lines)
