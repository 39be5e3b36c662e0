"""Files through which commands talk to a running gateway: its pid file and reload report.

``gateway run`` writes its process id to the pid file (``$GATEWAY_STATE_DIR/gateway.pid``
by default).  ``gateway reload`` sends that process SIGHUP and waits for the *reload
report* beside it (``gateway.pid.reload``), which the gateway writes after each reload:
whether the new configuration went live, and if not, why.  Both files are written
atomically (a temporary file renamed over the old one).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["ReloadReport", "read_report", "report_path", "state_dir", "write_atomically"]


def state_dir() -> Path:
    """Where the gateway keeps generated files (pid file, development certificate)."""
    if value := os.environ.get("GATEWAY_STATE_DIR"):
        return Path(value)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gateway"


def report_path(pid_file: Path) -> Path:
    """The reload report that belongs to ``pid_file``."""
    return pid_file.with_name(pid_file.name + ".reload")


@dataclass(frozen=True)
class ReloadReport:
    """The outcome of one reload of the gateway process ``pid``."""

    pid: int
    ok: bool
    problems: list[str] = field(default_factory=list)
    time_ns: int = field(default_factory=time.time_ns)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers never see half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def write_report(path: Path, report: ReloadReport) -> None:
    """Publish ``report`` for ``gateway reload``."""
    write_atomically(path, json.dumps(asdict(report)) + "\n")


def read_report(path: Path) -> ReloadReport | None:
    """The last reload report at ``path``, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
        return ReloadReport(
            pid=int(data["pid"]),
            ok=bool(data["ok"]),
            problems=[str(problem) for problem in data["problems"]],
            time_ns=int(data["time_ns"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
