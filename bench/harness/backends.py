"""The backends every target forwards to: nginx (fixed bodies) and Node (WebSocket echo,
streaming upload/download). Both run on the load core for the whole benchmark."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from . import provision
from .layout import (
    BACKEND_HTTP_PORT,
    BACKEND_HTTPS_PORT,
    BACKEND_NODE_PORT,
    CERT_FILE,
    HOST,
    KEY_FILE,
    LOAD_CPU,
    LOG_DIR,
    NODE_DIR,
    WORK_DIR,
    WWW_DIR,
)
from .procs import Proc, Processes, wait_for_port


def nginx_common(name: str, *, workers: int = 1) -> str:
    """Top of an nginx.conf that runs in the foreground with every path under bench/work."""
    base = WORK_DIR / name
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (base / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes {workers};
daemon off;
pid {base}/nginx.pid;
error_log {LOG_DIR}/{name}.error.log warn;
"""


def nginx_http_common(name: str) -> str:
    tmp = WORK_DIR / name / "tmp"
    return f"""    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    ssl_certificate {CERT_FILE};
    ssl_certificate_key {KEY_FILE};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
"""


def nginx_backend_conf() -> str:
    """Fixed bodies: GET /small (100 B), GET /64k (64 KiB); POST reads the body, answers 'ok'.

    With the echo module (a dependency of Debian's nginx-light) the POST handler reads the
    whole body before it answers; without it nginx's ``return`` answers at once and discards
    the body in the background, which is still a full read before the connection is reused.
    """
    echo = provision.ECHO_MODULE.exists()
    load = f"load_module {provision.ECHO_MODULE};\n" if echo else ""
    post = "echo_read_request_body;\n            echo ok;" if echo else 'return 200 "ok\\n";'
    return f"""{load}{nginx_common("nginx-backend")}
events {{ worker_connections 16384; }}
http {{
{nginx_http_common("nginx-backend")}
    open_file_cache max=64;
    open_file_cache_valid 600s;
    default_type application/octet-stream;
    client_max_body_size 0;
    client_body_buffer_size 128k;
    server {{
        listen {HOST}:{BACKEND_HTTP_PORT} backlog=4096;
        listen {HOST}:{BACKEND_HTTPS_PORT} ssl backlog=4096;
        root {WWW_DIR};
        location / {{
            if ($request_method = POST) {{ rewrite ^ /_post last; }}
        }}
        location = /_post {{
            internal;
            {post}
        }}
    }}
}}
"""


def nginx_argv(conf: Path) -> list[str]:
    return ["nginx", "-p", str(conf.parent), "-c", str(conf)]


@dataclass
class Backends:
    nginx: Proc
    node: Proc
    post_reads_body: bool


def start(procs: Processes) -> Backends:
    """Start both backends on the load core and wait for their ports."""
    conf = WORK_DIR / "nginx-backend" / "nginx.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(nginx_backend_conf())
    nginx = procs.start("backend-nginx", nginx_argv(conf), cpu=LOAD_CPU)
    node = procs.start(
        "backend-node",
        ["node", NODE_DIR / "backend.js", "--host", HOST, "--port", str(BACKEND_NODE_PORT)],
        cpu=LOAD_CPU,
    )
    for port, proc in (
        (BACKEND_HTTP_PORT, nginx),
        (BACKEND_HTTPS_PORT, nginx),
        (BACKEND_NODE_PORT, node),
    ):
        wait_for_port(port, proc, host=HOST)
    return Backends(nginx, node, post_reads_body=provision.ECHO_MODULE.exists())


def check_alive(backends: Backends) -> None:
    for proc in (backends.nginx, backends.node):
        if not proc.alive():
            raise RuntimeError(f"backend {proc.name} died:\n{proc.log_tail()}")
