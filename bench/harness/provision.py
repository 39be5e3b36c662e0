"""Idempotent setup: Debian packages, Node's ws, the peers' venv, certificate, data files.

Each step checks first and does nothing when its result is already there, so ``bench/run``
costs about a second of setup after the first time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .layout import (
    BENCH_PYTHON,
    BENCH_VENV,
    CERT_FILE,
    KEY_FILE,
    NODE_DIR,
    REQUIREMENTS,
    WORK_DIR,
    WWW_DIR,
)

SMALL_BODY_BYTES = 100
BODY_64K_BYTES = 64 * 1024
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


def log(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def _run(argv: list[str], **kwargs: object) -> None:
    log("$ " + " ".join(argv))
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]


def _sudo() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo"]
    raise SystemExit("bench: installing Debian packages needs root (or sudo)")


def apt_packages() -> None:
    """nginx (nginx-light), wrk, h2load, curl, Node and npm from Debian when missing."""
    wanted = {
        "nginx": ["nginx-light"],
        "wrk": ["wrk"],
        "h2load": ["nghttp2-client"],
        "curl": ["curl"],
        "taskset": ["util-linux"],
        "openssl": ["openssl"],
        "node": ["nodejs"],
        "npm": ["npm"],
    }
    missing = [pkg for tool, pkgs in wanted.items() if not shutil.which(tool) for pkg in pkgs]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run([*_sudo(), "apt-get", "update", "-q"], env=env)
    try:
        _run([*_sudo(), "apt-get", "install", "-y", "-q", *missing], env=env)
    except subprocess.CalledProcessError:
        # Some releases have no nginx-light; plain nginx does the same job.
        fallback = ["nginx" if p == "nginx-light" else p for p in missing]
        _run([*_sudo(), "apt-get", "install", "-y", "-q", *fallback], env=env)


def node_modules() -> None:
    """Node's ws package into bench/node/node_modules (from package-lock.json)."""
    if (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        return
    lock = NODE_DIR / "package-lock.json"
    verb = "ci" if lock.exists() else "install"
    _run(["npm", verb, "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)])


def bench_venv() -> None:
    """bench/.venv with the Python peers, uvicorn+uvloop+httptools and matplotlib."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = BENCH_VENV / ".requirements.sha256"
    if BENCH_PYTHON.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return
    if not BENCH_PYTHON.exists():
        _run([sys.executable, "-m", "venv", str(BENCH_VENV)])
    _run([str(BENCH_PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    _run([str(BENCH_PYTHON), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)])
    stamp.write_text(wanted + "\n")


def certificate() -> None:
    """Self-signed P-256 certificate for 127.0.0.1, made once into bench/work/tls."""
    if CERT_FILE.exists() and KEY_FILE.exists():
        return
    CERT_FILE.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(KEY_FILE),
            "-out",
            str(CERT_FILE),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    KEY_FILE.chmod(0o644)  # nginx workers may run as another user


def data_files() -> None:
    """The fixed bodies nginx serves."""
    WWW_DIR.mkdir(parents=True, exist_ok=True)
    small = WWW_DIR / "small"
    if not small.exists() or small.stat().st_size != SMALL_BODY_BYTES:
        text = b"hello from the benchmark backend; this body is exactly one hundred bytes long"
        small.write_bytes(text.ljust(SMALL_BODY_BYTES - 1, b".")[: SMALL_BODY_BYTES - 1] + b"\n")
    big = WWW_DIR / "64k"
    if not big.exists() or big.stat().st_size != BODY_64K_BYTES:
        big.write_bytes(bytes(range(256)) * (BODY_64K_BYTES // 256))
    for path in (WORK_DIR, WWW_DIR, small, big):
        path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else 0o644)


def upload_file(path: Path, size: int) -> None:
    """A sparse file of ``size`` zero bytes (no disk used) for the streamed upload."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


def everything(*, install: bool = True) -> None:
    """All steps; ``install=False`` skips the package managers (apt, npm, pip)."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    if install:
        apt_packages()
        node_modules()
        bench_venv()
    certificate()
    data_files()
