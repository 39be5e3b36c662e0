"""Where things live: paths of the harness and the loopback ports it uses."""

from __future__ import annotations

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"  # generated configs, certificates, data files, logs (gitignored)
LOG_DIR = WORK_DIR / "logs"
NODE_DIR = BENCH_DIR / "node"
PEERS_DIR = BENCH_DIR / "peers"
WRK_SCRIPT = BENCH_DIR / "wrk" / "bench.lua"
BENCH_VENV = BENCH_DIR / ".venv"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
PROJECT_VENV = REPO_DIR / ".venv"
CERT_FILE = WORK_DIR / "tls" / "cert.pem"
KEY_FILE = WORK_DIR / "tls" / "key.pem"
WWW_DIR = WORK_DIR / "www"
UPLOAD_FILE = WORK_DIR / "upload.bin"  # sparse file of zeros, streamed by curl -T

HOST = "127.0.0.1"  # everything binds and connects here, nowhere else

# Backends (pinned to the load core).
BACKEND_HTTP_PORT = 18080  # nginx: fixed bodies
BACKEND_HTTPS_PORT = 18443  # the same nginx with TLS, for the direct-over-TLS baseline
BACKEND_NODE_PORT = 18090  # Node: WebSocket echo, streaming upload and download

# The target under test (pinned to the proxy core); one target runs at a time.
PROXY_PORT = 19080
PROXY_TLS_PORT = 19443

ALL_PORTS = (BACKEND_HTTP_PORT, BACKEND_HTTPS_PORT, BACKEND_NODE_PORT, PROXY_PORT, PROXY_TLS_PORT)

PROXY_CPU = 0
LOAD_CPU = 1

# Paths routed to the Node backend by every proxy; everything else goes to nginx.
NODE_PREFIXES = ("/ws", "/upload", "/download")
