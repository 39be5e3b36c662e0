"""Description of the machine and the tool versions, stored with every result."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .layout import BENCH_PYTHON, NODE_DIR, PROJECT_VENV, REPO_DIR


def _out(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0].strip() if text else "n/a"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


_VERSIONS = (
    "import json, importlib.metadata as m, sys\n"
    "out = {'python': sys.version.split()[0]}\n"
    "for name in sys.argv[1:]:\n"
    "    try: out[name] = m.version(name)\n"
    "    except m.PackageNotFoundError: pass\n"
    "print(json.dumps(out))\n"
)


def _packages(python: os.PathLike[str] | str, names: list[str]) -> dict[str, str]:
    try:
        done = subprocess.run(
            [str(python), "-c", _VERSIONS, *names], capture_output=True, text=True, timeout=30
        )
        return dict(json.loads(done.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def gateway_fingerprint(root: Path = REPO_DIR) -> str:
    """Short hash of the sources of the ``gateway`` package under ``root``, as they are now."""
    digest = hashlib.sha256()
    for path in sorted((root / "gateway").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def describe() -> dict[str, Any]:
    ws_version = "n/a"
    with contextlib.suppress(OSError, ValueError, KeyError):
        ws_package = NODE_DIR / "node_modules" / "ws" / "package.json"
        ws_version = json.loads(ws_package.read_text())["version"]
    commit = _out(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    dirty = _out(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "gateway"])
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_mib": _mem_total_mib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "harness_python": sys.version.split()[0],
        "nginx": _out(["nginx", "-v"]),
        "node": _out(["node", "--version"]),
        "node_ws": ws_version,
        "wrk": _out(["wrk", "--version"]).split(" Copyright")[0],
        "curl": _out(["curl", "--version"]),
        "openssl": _out(["openssl", "version"]),
        "gateway_commit": commit + (" (gateway/ modified)" if dirty not in ("", "n/a") else ""),
        "project_venv": _packages(
            PROJECT_VENV / "bin" / "python",
            [
                "gateway",
                "uvicorn",
                "starlette",
                "httpx",
                "httpcore",
                "websockets",
                "uvloop",
                "httptools",
                "httpx-aiohttp",
                "aiohttp",
            ],
        ),
        "bench_venv": _packages(
            BENCH_PYTHON,
            [
                "asgiproxy",
                "fastapi-proxy-lib",
                "fastapi",
                "starlette",
                "aiohttp",
                "httpx",
                "httpx-ws",
                "uvicorn",
                "uvloop",
                "httptools",
                "websockets",
            ],
        ),
    }
