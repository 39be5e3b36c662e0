"""The targets under test: what sits between the load generator and the backends.

Each target is started fresh for every measurement, on the proxy core, listening on
PROXY_PORT (plain) or PROXY_TLS_PORT (TLS), and routes /ws, /upload and /download to the
Node backend and everything else to the nginx backend.
"""

from __future__ import annotations

import resource
import shlex
import shutil
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .backends import nginx_argv, nginx_common, nginx_http_common
from .layout import (
    BACKEND_HTTP_PORT,
    BACKEND_HTTPS_PORT,
    BACKEND_NODE_PORT,
    BENCH_VENV,
    CERT_FILE,
    HOST,
    KEY_FILE,
    NODE_PREFIXES,
    PEERS_DIR,
    PROJECT_VENV,
    PROXY_CPU,
    PROXY_PORT,
    PROXY_TLS_PORT,
    REPO_DIR,
    WORK_DIR,
)
from .machine import gateway_fingerprint
from .procs import Proc, Processes, StartError, wait_for_port

HTTP_UPSTREAM = f"http://{HOST}:{BACKEND_HTTP_PORT}"
NODE_UPSTREAM = f"http://{HOST}:{BACKEND_NODE_PORT}"
SNAPSHOT_DIR = WORK_DIR / "gateway-src"
DEFAULT_GATEWAY_CMD = f"{PROJECT_VENV / 'bin' / 'gateway'} run -c {{config}}"


@dataclass
class Running:
    """A started target: where to send requests and which process group to measure."""

    name: str
    tls: bool
    proc: Proc | None  # None for direct

    @property
    def pgid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def url(self, path: str) -> str:
        if self.proc is None:  # direct: straight to the backend that owns the path
            if path.startswith(NODE_PREFIXES):
                return f"{NODE_UPSTREAM}{path}"
            if self.tls:
                return f"https://{HOST}:{BACKEND_HTTPS_PORT}{path}"
            return f"{HTTP_UPSTREAM}{path}"
        scheme, port = ("https", PROXY_TLS_PORT) if self.tls else ("http", PROXY_PORT)
        return f"{scheme}://{HOST}:{port}{path}"

    def ws_url(self, path: str) -> str:
        return "ws" + self.url(path).removeprefix("http")


class Target:
    """Base: a proxy started from a command line; subclasses write its configuration."""

    name = ""
    is_proxy = True
    # Serves HTTP/2 (the get-small-h2 scenario); ``http2`` is set for each start.
    speaks_h2 = False
    http2 = False
    # Worker processes; set for each start (more than 1 only where one process may not
    # open the files a scenario needs: see measure.workers_for).
    workers = 1

    def serves(self, kind: str) -> bool:
        """Whether the target runs scenarios of ``kind`` (the cell stays n/a otherwise)."""
        return kind != "h2" or self.speaks_h2

    def variant(self, tls: bool) -> str:
        """The configuration a start uses: plain, tls, or h2 (TLS with HTTP/2 on)."""
        return "h2" if self.http2 else "tls" if tls else "plain"

    def argv(self, tls: bool) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def prepare(self) -> None:
        """Once per run, before the first start."""

    def source_fingerprint(self) -> str | None:
        """Which version of the target's own code runs (only the gateway has one)."""
        return None

    def unavailable(self) -> str | None:
        """Why this target cannot run here, or None."""
        exe = self.argv(False)[0]
        if shutil.which(exe) is None and not Path(exe).is_file():
            return f"command not found: {exe}"
        return None

    def start(self, procs: Processes, tls: bool) -> Running:
        port = PROXY_TLS_PORT if tls else PROXY_PORT
        proc = procs.start(
            f"{self.name}-{self.variant(tls)}",
            self.argv(tls),
            cpu=PROXY_CPU,
            env=self.env(),
            cwd=WORK_DIR,
        )
        running = Running(self.name, tls, proc)
        try:
            wait_for_port(port, proc, host=HOST, timeout_s=30)
            probe(running)
        except BaseException:
            procs.stop(proc)
            raise
        return running


class Direct(Target):
    """No proxy: the load generator talks to the backends (the ceiling of this machine)."""

    name = "direct"
    is_proxy = False

    def unavailable(self) -> str | None:
        return None

    def start(self, procs: Processes, tls: bool) -> Running:
        return Running(self.name, tls, None)


class Gateway(Target):
    """This project's gateway, ``gateway run -c FILE`` (or --gateway-cmd).

    The package is copied to bench/work/gateway-src when the run starts and put first on
    PYTHONPATH, so edits to gateway/ during a 30-minute run neither mix versions into the
    medians nor break later cells; ``live=True`` runs the working tree instead.
    """

    name = "gateway"
    speaks_h2 = True  # listen.http2 (the http2 extra)

    def __init__(self, command: str = DEFAULT_GATEWAY_CMD, *, live: bool = False) -> None:
        self.command = command
        self.live = live
        self._fingerprint: str | None = None

    def prepare(self) -> None:
        if self.live:
            return
        if SNAPSHOT_DIR.exists():
            shutil.rmtree(SNAPSHOT_DIR)
        shutil.copytree(
            REPO_DIR / "gateway",
            SNAPSHOT_DIR / "gateway",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        self._fingerprint = gateway_fingerprint(SNAPSHOT_DIR)
        print(f"bench: gateway sources snapshot {self._fingerprint} in {SNAPSHOT_DIR}", flush=True)

    def source_fingerprint(self) -> str | None:
        return self._fingerprint if not self.live else gateway_fingerprint()

    def env(self) -> dict[str, str]:
        return {} if self.live else {"PYTHONPATH": str(SNAPSHOT_DIR)}

    # Extra TOML appended to the generated settings, and the HTTP route's upstream.
    extra = ""
    http_upstream = HTTP_UPSTREAM

    def config(self, tls: bool) -> Path:
        path = WORK_DIR / f"{self.name}-{self.variant(tls)}.toml"
        tls_lines = (
            f'tls = true\ncertfile = "{CERT_FILE}"\nkeyfile = "{KEY_FILE}"'
            if tls
            else "tls = false"
        )
        http2 = ""
        if self.http2:
            tls_lines += "\nhttp2 = true"
            # h2load opens no new connection after a GOAWAY: as nginx's keepalive_requests
            # here, a limit no run reaches (900 was reached by a busy connection in 10 s).
            http2 = "\n[http2]\nmax_requests_per_connection = 1000000\n"
        routes = "".join(
            f'[[routes]]\nprefix = "{prefix}"\nupstream = "{NODE_UPSTREAM}"\n\n'
            for prefix in NODE_PREFIXES
        )
        path.write_text(
            f"""# Written by bench/harness/targets.py for the benchmark; regenerated on every run.
[listen]
host = "{HOST}"
port = {PROXY_TLS_PORT if tls else PROXY_PORT}
{tls_lines}

{routes}[[routes]]
prefix = "/"
upstream = "{self.http_upstream}"

[timeouts]
connect_s = 5
read_s = 60
websocket_idle_s = 86400

[limits]
max_body_bytes = 2147483648

[origin]
allow = ["*"]

# Like the peers' --log-level warning and nginx's access_log off: no per-connection lines.
[log]
level = "warning"

[admin]
enabled = false
{http2}{self.extra}"""
        )
        return path

    def argv(self, tls: bool) -> list[str]:
        config = WORK_DIR / f"{self.name}-{self.variant(tls)}.toml"
        words = shlex.split(self.command)
        if any("{config}" in w for w in words):
            words = [w.replace("{config}", str(config)) for w in words]
        else:
            words = [*words, "-c", str(config)]
        return [*words, "--workers", str(self.workers)] if self.workers > 1 else words

    def start(self, procs: Processes, tls: bool) -> Running:
        self.config(tls)
        return super().start(procs, tls)


class GatewayPool(Gateway):
    """The gateway with its HTTP route on an upstream pool of two targets (balancing cost).

    Both targets are the same nginx backend, so only the pool's work differs from ``gateway``.
    """

    name = "gateway-pool"
    http_upstream = "pool"
    extra = f"""
[upstreams.pool]
targets = [{{ url = "{HTTP_UPSTREAM}" }}, {{ url = "{HTTP_UPSTREAM}/" }}]
balance = "round_robin"
"""


class GatewayBridge(Gateway):
    """The gateway with its WebSocket frame relay off: every message through the bridge
    (parsed, checked, framed again), as before the relay; the relay's gain in one run."""

    name = "gateway-bridge"
    extra = """
[websocket]
relay = false
"""


class GatewayBare(Gateway):
    """``ReverseProxy`` alone under uvicorn: the gateway without its middleware stack."""

    name = "gateway-bare"
    speaks_h2 = False  # stock uvicorn

    def argv(self, tls: bool) -> list[str]:
        argv = [
            str(PROJECT_VENV / "bin" / "uvicorn"),
            "gateway_bare_app:app",
            "--app-dir",
            str(PEERS_DIR),
            "--host",
            HOST,
            "--port",
            str(PROXY_TLS_PORT if tls else PROXY_PORT),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-server-header",
            "--no-date-header",
            "--log-level",
            "warning",
        ]
        if tls:
            argv += ["--ssl-certfile", str(CERT_FILE), "--ssl-keyfile", str(KEY_FILE)]
        return [*argv, "--workers", str(self.workers)] if self.workers > 1 else argv

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "BENCH_HTTP_UPSTREAM": HTTP_UPSTREAM,
            "BENCH_NODE_UPSTREAM": NODE_UPSTREAM,
        }


def _hard_fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


class Nginx(Target):
    """nginx with the classic WebSocket reverse-proxy configuration, tuned (upstream keepalive)."""

    name = "nginx"

    def __init__(self, *, worker_connections: int = 16384) -> None:
        super().__init__()
        # Two per proxied WebSocket session: the idle scenario sets it from its count.
        self.worker_connections = worker_connections

    speaks_h2 = True

    def conf(self, tls: bool) -> Path:
        path = WORK_DIR / "nginx-proxy" / f"nginx-{self.variant(tls)}.conf"
        listen = f"{HOST}:{PROXY_TLS_PORT} ssl" if tls else f"{HOST}:{PROXY_PORT}"
        if self.http2:
            listen += " http2"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"""{nginx_common("nginx-proxy", workers=self.workers)}
worker_rlimit_nofile {min(self.worker_connections + 1024, _hard_fd_limit())};
events {{ worker_connections {self.worker_connections}; }}
http {{
{nginx_http_common("nginx-proxy")}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    upstream http_backend {{
        server {HOST}:{BACKEND_HTTP_PORT};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    upstream node_backend {{
        server {HOST}:{BACKEND_NODE_PORT};
        keepalive 64;
    }}
    server {{
        listen {listen} backlog=4096;
        client_max_body_size 0;
        client_body_buffer_size 128k;  # a 64 KiB POST stays in memory, not in a temp file
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_read_timeout 86400;
        proxy_send_timeout 86400;
        location / {{ proxy_pass http://http_backend; }}
        location /ws {{ proxy_pass http://node_backend; }}
        location /upload {{ proxy_pass http://node_backend; proxy_request_buffering off; }}
        location /download {{ proxy_pass http://node_backend; proxy_buffering off; }}
    }}
}}
"""
        )
        return path

    def argv(self, tls: bool) -> list[str]:
        return nginx_argv(WORK_DIR / "nginx-proxy" / f"nginx-{self.variant(tls)}.conf")

    def start(self, procs: Processes, tls: bool) -> Running:
        self.conf(tls)
        return super().start(procs, tls)


class UvicornPeer(Target):
    """A Python peer under uvicorn: one worker, uvloop, httptools, from bench/.venv."""

    module = ""

    def argv(self, tls: bool) -> list[str]:
        argv = [
            str(BENCH_VENV / "bin" / "uvicorn"),
            f"{self.module}:app",
            "--app-dir",
            str(PEERS_DIR),
            "--host",
            HOST,
            "--port",
            str(PROXY_TLS_PORT if tls else PROXY_PORT),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--lifespan",
            "on",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        if tls:
            argv += ["--ssl-certfile", str(CERT_FILE), "--ssl-keyfile", str(KEY_FILE)]
        return [*argv, "--workers", str(self.workers)] if self.workers > 1 else argv

    def env(self) -> dict[str, str]:
        return {"BENCH_HTTP_UPSTREAM": HTTP_UPSTREAM, "BENCH_NODE_UPSTREAM": NODE_UPSTREAM}


class AsgiProxy(UvicornPeer):
    name = "asgiproxy"
    module = "asgiproxy_app"


class FastapiProxyLib(UvicornPeer):
    name = "fastapi-proxy-lib"
    module = "fastapi_proxy_lib_app"


class Floor(UvicornPeer):
    """The least a proxy can do under uvicorn (bench/peers/floor_app.py): HTTP/1.1 only."""

    name = "floor"
    module = "floor_app"

    def serves(self, kind: str) -> bool:
        return kind == "http"


ALL_TARGETS = ("direct", "gateway", "nginx", "asgiproxy", "fastapi-proxy-lib")
# Not in the default run: the cost of the middleware stack and of an upstream pool, the
# frame relay's gain, and the floor under every Python proxy's HTTP figures.
EXTRA_TARGETS = ("gateway-bare", "gateway-pool", "gateway-bridge", "floor")


def make_targets(
    names: list[str], gateway_cmd: str, *, gateway_live: bool = False, sessions: int = 1000
) -> list[Target]:
    table: dict[str, Target] = {
        "direct": Direct(),
        "gateway": Gateway(gateway_cmd, live=gateway_live),
        "nginx": Nginx(worker_connections=min(max(16384, 2 * sessions + 4096), _hard_fd_limit())),
        "asgiproxy": AsgiProxy(),
        "fastapi-proxy-lib": FastapiProxyLib(),
        "gateway-bare": GatewayBare(gateway_cmd, live=gateway_live),
        "gateway-pool": GatewayPool(gateway_cmd, live=gateway_live),
        "gateway-bridge": GatewayBridge(gateway_cmd, live=gateway_live),
        "floor": Floor(),
    }
    return [table[n] for n in names]


def probe(running: Running) -> None:
    """One GET /small through the target: 200 and the exact 100-byte body, or StartError."""
    context = ssl.create_default_context(cafile=str(CERT_FILE))
    url = running.url("/small")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=15) as response:
            body = response.read()
            status = response.status
    except Exception as exc:
        raise StartError(f"{running.name}: probe GET {url} failed: {exc!r}") from exc
    if status != 200 or len(body) != 100:
        raise StartError(f"{running.name}: probe GET {url} -> {status}, {len(body)} bytes")
