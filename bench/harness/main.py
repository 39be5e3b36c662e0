"""bench/run: set up, start the backends, run interleaved rounds, write the results."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import backends, machine, measure, provision, report
from .layout import ALL_PORTS, BENCH_DIR, BENCH_PYTHON, HOST, WORK_DIR
from .procs import Processes, StartError, ignore_signals, port_in_use, raise_on_signals
from .scenarios import Profile, Scenario, all_scenarios
from .targets import ALL_TARGETS, DEFAULT_GATEWAY_CMD, EXTRA_TARGETS, Target, make_targets

MAX_START_FAILURES = 2  # a target that failed to start this often is dropped for the run


def parse_args(argv: list[str]) -> argparse.Namespace:
    ids = ", ".join(s.id for s in all_scenarios())
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark the gateway against nginx and the Python peers on loopback.",
        epilog=f"scenarios: {ids}",
    )
    p.add_argument(
        "--quick", action="store_true", help="CI smoke test: 1 round, ~1 s cells, small sizes"
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    p.add_argument(
        "--only", help="comma-separated scenario ids, globs or groups (http, tls, ws, stream)"
    )
    p.add_argument("--targets", help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    p.add_argument(
        "--out",
        type=Path,
        help="results folder (default bench/results; quick: bench/work/results-quick)",
    )
    p.add_argument(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        help="gateway command; {config} is the TOML path",
    )
    p.add_argument(
        "--gateway-live",
        action="store_true",
        help="run the gateway from the working tree instead of a snapshot taken at start",
    )
    p.add_argument(
        "--duration", type=float, help="seconds measured per HTTP/WebSocket cell (default 10)"
    )
    p.add_argument(
        "--warmup", type=float, help="warm-up seconds before each measurement (default 2)"
    )
    p.add_argument(
        "--stream-mib", type=int, help="size of the streamed upload/download (default 1024)"
    )
    p.add_argument("--idle-sessions", type=int, help="idle WebSocket sessions (default 1000)")
    p.add_argument(
        "--many-idle-sessions",
        type=int,
        help="idle sessions of ws-idle-many (default 10000; workers as the open-file limit needs)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="skip apt/npm/pip (fail if something is missing)"
    )
    p.add_argument("--list", action="store_true", help="list scenarios and targets, then exit")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULT.json",
        help="measure nothing: recompute and rewrite the .md (and ratios.png for latest.json) "
        "of a recorded result",
    )
    return p.parse_args(argv)


def select_scenarios(only: str | None) -> list[Scenario]:
    scenarios = all_scenarios()
    if not only:
        return scenarios
    patterns = [p.strip() for p in only.split(",") if p.strip()]

    def wanted(s: Scenario) -> bool:
        for pat in patterns:
            if fnmatch.fnmatch(s.id, pat) or s.id.startswith(pat + "-") or s.kind == pat:
                return True
            if (pat == "tls" and s.tls) or (pat == "ws" and s.kind.startswith("ws")):
                return True
        return False

    chosen = [s for s in scenarios if wanted(s)]
    if not chosen:
        raise SystemExit(f"bench: --only {only!r} matches no scenario")
    return chosen


def make_profile(args: argparse.Namespace) -> Profile:
    profile = Profile.quick() if args.quick else Profile()
    changes: dict[str, Any] = {}
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.duration is not None:
        changes["duration_s"] = args.duration
    if args.warmup is not None:
        changes["warmup_s"] = args.warmup
    if args.stream_mib is not None:
        changes["stream_bytes"] = args.stream_mib * 1024**2
    if args.idle_sessions is not None:
        changes["idle_sessions"] = args.idle_sessions
    if args.many_idle_sessions is not None:
        changes["many_idle_sessions"] = args.many_idle_sessions
    return dataclasses.replace(profile, **changes)


def raise_fd_limit(idle_sessions: int) -> None:
    """Soft limit up to the hard one; as root, the hard one up to what the idle scenario
    needs (a proxy holds two sockets per session; children inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * idle_sessions + 4096
    if hard < wanted and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workers = measure.workers_for(idle_sessions, hard)
    if workers > 1:
        print(
            f"bench: the open-file limit is {hard} and this process may not raise it"
            f" (`ulimit -Hn`, CAP_SYS_RESOURCE); {idle_sessions} idle sessions need about"
            f" {wanted}, so every target runs {workers} worker processes for them",
            flush=True,
        )


def fd_limit() -> int:
    """The open-file limit the targets inherit."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_cell(
    procs: Processes,
    target: Target,
    scenario: Scenario,
    profile: Profile,
    bk: backends.Backends,
    rnd: int,
) -> dict[str, Any]:
    started = time.monotonic()
    gateway_source = target.source_fingerprint()
    running = None
    figures: dict[str, Any] = {}
    error = None
    start_failed = False
    try:
        try:
            target.http2 = scenario.kind == "h2"
            target.workers = (
                measure.workers_for(profile.sessions(scenario), fd_limit())
                if scenario.kind == "ws-idle"
                else 1
            )
            running = target.start(procs, scenario.tls)
        except StartError:
            start_failed = True
            raise
        figures = measure.run(procs, running, scenario, profile)
        if running.proc is not None and not running.proc.alive():
            raise measure.ScenarioError(
                f"{target.name} exited during the scenario:\n{running.proc.log_tail()}"
            )
        backends.check_alive(bk)
    except (
        StartError,
        measure.ScenarioError,
        TimeoutError,
        RuntimeError,
        OSError,
        ValueError,
        KeyError,
    ) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if running is not None and running.proc is not None:
            procs.stop(running.proc)
    return {
        "round": rnd,
        "scenario": scenario.id,
        "target": target.name,
        "gateway_source": gateway_source,
        "figures": figures,
        "error": error,
        "start_failed": start_failed,
        "seconds": round(time.monotonic() - started, 2),
    }


def describe_cell(cell: dict[str, Any], scenario: Scenario) -> str:
    if cell["error"]:
        return "ERROR " + str(cell["error"]).splitlines()[0][:200]
    parts = []
    for m in scenario.metrics:
        v = cell["figures"].get(m.key)
        if v is not None:
            parts.append(f"{report.fmt(v, m.digits)} {m.unit}")
    return ", ".join(parts) or "ok"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render:
        return render(args.render)
    scenarios = select_scenarios(args.only)
    requested = [t.strip() for t in (args.targets or ",".join(ALL_TARGETS)).split(",") if t.strip()]
    unknown = [t for t in requested if t not in (*ALL_TARGETS, *EXTRA_TARGETS)]
    if unknown:
        raise SystemExit(f"bench: unknown target(s) {unknown}; choose from {ALL_TARGETS}")
    if args.list:
        for s in scenarios:
            print(f"{s.id:18} {s.title}")
        print("targets:", ", ".join(ALL_TARGETS))
        print("extra targets (with --targets):", ", ".join(EXTRA_TARGETS))
        return 0
    profile = make_profile(args)
    out_dir = args.out or (WORK_DIR / "results-quick" if args.quick else BENCH_DIR / "results")
    wall_start = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S")

    most_sessions = max(profile.idle_sessions, profile.many_idle_sessions)
    raise_fd_limit(most_sessions)
    provision.everything(install=not args.no_install)
    procs = Processes(registry=WORK_DIR / "children.json")  # also stops leftovers of a killed run
    busy = [p for p in ALL_PORTS if port_in_use(p, HOST)]
    if busy:
        print(
            f"bench: ports {busy} on {HOST} are in use; stop whatever holds them first",
            file=sys.stderr,
        )
        return 2

    machine_info = machine.describe()  # before measuring: the gateway's sources may change later
    targets = make_targets(
        requested, args.gateway_cmd, gateway_live=args.gateway_live, sessions=most_sessions
    )
    skipped: dict[str, str] = {}
    for t in targets:
        reason = t.unavailable()
        if reason:
            skipped[t.name] = reason
            print(f"bench: SKIPPING target {t.name}: {reason}", flush=True)
    active = [t for t in targets if t.name not in skipped]
    for t in active:
        t.prepare()
    # A target named explicitly with --targets must run; the default list tolerates a skip.
    failed = bool(args.targets and skipped)

    cells: list[dict[str, Any]] = []
    start_failures: dict[str, int] = {}
    interrupted = False
    raise_on_signals()
    post_reads_body = None
    try:
        bk = backends.start(procs)
        post_reads_body = bk.post_reads_body
        total = profile.rounds * len(scenarios) * len(active)
        n = 0
        for rnd in range(1, profile.rounds + 1):
            for scenario in scenarios:
                for target in active:
                    n += 1
                    if start_failures.get(target.name, 0) >= MAX_START_FAILURES:
                        continue
                    if not target.serves(scenario.kind):
                        continue  # no HTTP/2 (or no WebSocket) there: the cell stays n/a
                    cell = run_cell(procs, target, scenario, profile, bk, rnd)
                    cells.append(cell)
                    if cell["start_failed"]:
                        start_failures[target.name] = start_failures.get(target.name, 0) + 1
                    print(
                        f"[{n:3}/{total}] round {rnd} {scenario.id:16} {target.name:18} "
                        f"{describe_cell(cell, scenario)}  ({cell['seconds']:.1f} s)",
                        flush=True,
                    )
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM/SIGHUP (raise_on_signals)
        interrupted = True
        print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
    except StartError as exc:  # a backend did not start
        failed = True
        print(f"bench: backend failed to start: {exc}", file=sys.stderr)
    finally:
        ignore_signals()
        procs.stop_all()

    if not cells:
        print("bench: nothing was measured, no results written", file=sys.stderr)
        return 130 if interrupted else 1
    target_names = [t.name for t in active]
    result: dict[str, Any] = {
        "meta": {
            "started": started,
            "wall_s": time.monotonic() - wall_start,
            "mode": "quick" if args.quick else "full",
            "interrupted": interrupted,
            "argv": sys.argv[1:] if argv is None else argv,
            "profile": dataclasses.asdict(profile),
            "targets": target_names,
            "skipped": skipped,
            "dropped_after_start_failures": [
                t for t, k in start_failures.items() if k >= MAX_START_FAILURES
            ],
            "backend_post_reads_body_first": post_reads_body,
            "machine": machine_info,
            "gateway_sources": sorted({c["gateway_source"] for c in cells if c["gateway_source"]}),
        },
        "cells": cells,
    }
    text = summarize(result, scenarios)
    write_results(out_dir, result, text, latest=not interrupted)
    print()
    print(text)

    errors = [c for c in cells if c["error"]]
    if interrupted:
        return 130
    if errors or failed or start_failures:
        print(
            f"bench: {len(errors)} cell(s) failed"
            + (f"; skipped {list(skipped)}" if skipped else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def summarize(result: dict[str, Any], scenarios: list[Scenario]) -> str:
    """Fill in scenarios, medians, ratios and budget of ``result``; return its markdown."""
    targets = result["meta"]["targets"]
    result["scenarios"] = [
        {
            "id": s.id,
            "title": s.title,
            "kind": s.kind,
            "tls": s.tls,
            "params": s.params,
            "metrics": [dataclasses.asdict(m) for m in s.metrics],
        }
        for s in scenarios
    ]
    result["medians"] = report.medians(result["cells"], scenarios, targets)
    for ref in ("direct", "nginx"):
        if ref in targets:
            result[f"ratio_to_{ref}"] = report.ratios(result["medians"], ref)
    result["budget"] = report.budget(result["medians"])
    return report.markdown(result, scenarios)


def render(path: Path) -> int:
    """Rewrite a recorded result's figures and markdown with the current report code."""
    result = json.loads(path.read_text())
    by_id = {s.id: s for s in all_scenarios()}
    scenarios = [by_id[s["id"]] for s in result["scenarios"] if s["id"] in by_id]
    text = summarize(result, scenarios)
    path.write_text(json.dumps(result, indent=1, default=str))
    path.with_suffix(".md").write_text(text)
    print(f"bench: rewrote {path} and {path.with_suffix('.md')}")
    if path.stem == "latest":
        draw_chart(path, path.parent / "ratios.png")
    return 0


def draw_chart(result_json: Path, png: Path) -> None:
    if not BENCH_PYTHON.exists():
        print("bench: no bench/.venv, no chart")
        return
    chart = Path(__file__).with_name("chart.py")
    subprocess.run([str(BENCH_PYTHON), str(chart), str(result_json), str(png)], check=False)


def write_results(out_dir: Path, result: dict[str, Any], text: str, *, latest: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = json.dumps(result, indent=1, default=str)
    names = [stamp] + (["latest"] if latest else [])
    for name in names:
        (out_dir / f"{name}.json").write_text(data)
        (out_dir / f"{name}.md").write_text(text)
    print(f"bench: wrote {out_dir / stamp}.md/.json" + (" and latest.md/.json" if latest else ""))
    if latest:
        draw_chart(out_dir / "latest.json", out_dir / "ratios.png")
