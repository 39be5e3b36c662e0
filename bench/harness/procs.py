"""Processes the harness starts: each in its own session, recorded by PID, stopped by PGID.

Nothing is ever stopped by name. Every child is started with ``start_new_session=True``, so
its PID is also the ID of a process group that holds it and whatever it forks (nginx
workers, uvicorn children); stopping sends SIGTERM to that group, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .layout import LOG_DIR

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A process did not come up (exited early or never opened its port)."""


@dataclass
class Proc:
    """One started process (and its process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    cmdline: list[str] = field(default_factory=list)
    start_time: int | None = None  # /proc/PID/stat field 22: with the PID, names the process
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def next_json(self, timeout_s: float) -> dict[str, Any]:
        """Next JSON line of a process started with ``capture=True``."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no output within {timeout_s:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited (rc={self.popen.wait()}): {self.log_tail()}"
                )
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    return obj


class Processes:
    """Registry of every process the harness started; ``stop_all`` is safe to call twice."""

    def __init__(self, registry: Path | None = None) -> None:
        self._live: dict[int, Proc] = {}
        self._lock = threading.Lock()
        self._registry = registry
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self._stop_leftovers()

    # A run killed with SIGKILL cannot clean up; the next run stops what it left, by PID,
    # and only if that PID is still the same process (same start time) as recorded.
    def _stop_leftovers(self) -> None:
        if self._registry is None or not self._registry.exists():
            return
        try:
            recorded = json.loads(self._registry.read_text())
        except ValueError:
            recorded = {}
        for pid_text, entry in recorded.items():
            pid = int(pid_text)
            start = entry.get("start")
            if start is not None and _start_time(pid) == start and pid in group_pids(pid):
                print(f"[procs] stopping leftover process group {pid}: {entry['cmd']}")
                _signal_group(pid, signal.SIGTERM)
                time.sleep(0.5)
                _signal_group(pid, signal.SIGKILL)
        self._registry.unlink(missing_ok=True)

    def _save_registry(self) -> None:
        if self._registry is None:
            return
        data = {
            str(pid): {"start": p.start_time, "cmd": " ".join(p.cmdline)}
            for pid, p in self._live.items()
        }
        tmp = self._registry.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._registry)

    def start(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        capture: bool = False,
        stdin_pipe: bool = False,
    ) -> Proc:
        """Start ``argv`` (pinned to ``cpu`` with taskset) in a new session; log to LOG_DIR."""
        command = [str(a) for a in argv]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        log_path = LOG_DIR / f"{name}.log"
        log = log_path.open("ab")
        log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        full_env = {**os.environ, **(env or {})}
        with self._lock:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else log,
                stderr=log,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
            proc = Proc(name, popen, log_path, cmdline=command, start_time=_start_time(popen.pid))
            self._live[popen.pid] = proc
            self._save_registry()
        log.close()
        if capture:
            assert popen.stdout is not None
            threading.Thread(
                target=_pump, args=(popen.stdout, proc), daemon=True, name=f"pump-{name}"
            ).start()
        return proc

    def run(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 60,
    ) -> str:
        """Run to completion and return stdout; killed (and an error raised) after timeout_s."""
        proc = self.start(name, argv, cpu=cpu, env=env, capture=True)
        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{name} did not finish within {timeout_s:.0f} s")
                try:
                    line = proc.lines.get(timeout=left)
                except queue.Empty:
                    continue
                if line is None:
                    break
                out.append(line)
            rc = proc.popen.wait()
            if rc != 0:
                raise RuntimeError(f"{name} exited with {rc}: {proc.log_tail()}")
            return "\n".join(out)
        finally:
            self.stop(proc)

    def stop(self, proc: Proc, timeout_s: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after timeout_s; forget the process."""
        pgid = proc.pid
        if proc.alive():
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                proc.popen.wait(timeout=timeout_s)
        # Members that outlived the leader (e.g. an orphaned worker) go too.
        if group_pids(pgid):
            _signal_group(pgid, signal.SIGKILL)
        if proc.popen.stdin:
            with contextlib.suppress(OSError):
                proc.popen.stdin.close()
        with self._lock:
            self._live.pop(pgid, None)
            self._save_registry()

    def stop_all(self) -> None:
        with self._lock:
            procs = list(self._live.values())
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout_s=3.0)


def _pump(stream: IO[bytes], proc: Proc) -> None:
    with proc.log_path.open("ab") as log:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            proc.lines.put(raw.decode(errors="replace").rstrip("\n"))
    proc.lines.put(None)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[19])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_for_port(port: int, proc: Proc | None, *, host: str, timeout_s: float = 20.0) -> None:
    """Poll until ``host:port`` accepts a connection; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            tail = proc.log_tail()
            last = tail.strip().splitlines()[-1] if tail.strip() else ""
            raise StartError(f"{proc.name} exited with {proc.popen.returncode}: {last}\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    tail = proc.log_tail() if proc else ""
    raise StartError(f"port {host}:{port} not open after {timeout_s:.0f} s\n{tail}")


def port_in_use(port: int, host: str) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


# --- /proc readings over a process group -------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """PIDs of the live (non-zombie) processes whose process group is ``pgid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            pids.append(int(entry.name))
    return pids


def _status_kib(pid: int, key: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pgid: int) -> int:
    """Resident set size summed over the process group, KiB."""
    return sum(_status_kib(pid, b"VmRSS:") for pid in group_pids(pgid))


def peak_rss_kib(pgid: int) -> int:
    """Peak resident set size (VmHWM) summed over the process group, KiB."""
    return sum(_status_kib(pid, b"VmHWM:") for pid in group_pids(pgid))


def cpu_seconds(pgid: int) -> float:
    """User + system CPU time of the live processes of the group, seconds."""
    ticks = 0
    for pid in group_pids(pgid):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


class RssSampler:
    """Samples the group's summed VmRSS in a thread; ``peak_kib`` is the largest sample."""

    def __init__(self, pgid: int, interval_s: float = 0.05) -> None:
        self.pgid = pgid
        self.interval_s = interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, rss_kib(self.pgid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def raise_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit (Ctrl-C already raises KeyboardInterrupt),
    so the caller's ``finally`` stops every child."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def ignore_signals() -> None:
    """Called before cleanup, so a second Ctrl-C cannot interrupt stopping the children."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
