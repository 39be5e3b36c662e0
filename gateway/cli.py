"""``gateway run | check | cert | demo``: the only module that starts servers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import logging
import multiprocessing
import os
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.app import build_gateway, close_websockets, create_app
from gateway.demo import demo_app
from gateway.middleware.auth import hash_password
from gateway.proxy.websocket_rules import wire_max_size
from gateway.settings import ConfigError, Settings, load_settings, to_toml
from gateway.tls import CertificatePair, RedirectToHttps, dev_certificate, harden, write_self_signed

__all__ = ["main"]

logger = logging.getLogger("gateway")


class _Config(uvicorn.Config):
    """uvicorn's Config with the TLS context hardened (TLS 1.2+, ALPN http/1.1)."""

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            harden(self.ssl)


class _Server(uvicorn.Server):
    """A uvicorn Server that leaves signal handling to ``_serve`` (it owns several servers).

    ``before_shutdown`` runs after the listeners stop accepting and before uvicorn
    closes connections itself (which would close WebSockets with 1012).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        before_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._before_shutdown is not None:
            for server in self.servers:
                server.close()
            await self._before_shutdown()
        await super().shutdown(sockets)


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, with the handshake marked complete after a
    refusal sent through ``websocket.http.response`` (as uvicorn's wsproto protocol does;
    uvicorn PR #3138). Without it every refused handshake (403 for a foreign Origin, the
    backend's own refusal) is also logged as "returned without completing handshake"."""

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True


@dataclass(frozen=True)
class Listener:
    """A bound socket and what serves it."""

    sock: socket.socket
    redirect: bool


def state_dir() -> Path:
    """Where the gateway keeps generated files (the development certificate)."""
    if value := os.environ.get("GATEWAY_STATE_DIR"):
        return Path(value)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gateway"


def resolve_certificate(settings: Settings) -> CertificatePair | None:
    """The certificate to serve: the configured one, or a development one made on demand."""
    listen = settings.listen
    if not listen.tls:
        return None
    if listen.certfile is not None and listen.keyfile is not None:
        return CertificatePair(listen.certfile, listen.keyfile)
    pair, made = dev_certificate(state_dir() / "dev-cert")
    logger.warning(
        "no certificate configured: using a %s development certificate for localhost, "
        "127.0.0.1 and ::1 (%s); browsers will warn about it",
        "new" if made else "saved",
        pair.certfile,
    )
    return pair


def check_certificate(pair: CertificatePair | None, where: str) -> list[str]:
    """Problems loading ``pair`` into an SSL context (wrong key, not PEM, ...)."""
    if pair is None:
        return []
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            pair.certfile, pair.keyfile
        )
    except (ssl.SSLError, OSError) as exc:
        return [f"{where}: listen.certfile: cannot load certificate and key: {exc}"]
    return []


def bind(host: str, port: int, key: str, where: str) -> socket.socket:
    """A listening socket on host:port; ConfigError naming ``key`` if that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            [f"{where}: {key}: cannot listen on {host}:{port}: {exc.strerror}"]
        ) from None
    sock.set_inheritable(True)
    return sock


def bind_listeners(settings: Settings, where: str) -> list[Listener]:
    """Bind every configured listener, or raise ConfigError (closing what was bound)."""
    listen = settings.listen
    listeners = [Listener(bind(listen.host, listen.port, "listen.port", where), redirect=False)]
    if listen.redirect_port is not None:
        try:
            sock = bind(listen.host, listen.redirect_port, "listen.redirect_port", where)
        except ConfigError:
            listeners[0].sock.close()
            raise
        listeners.append(Listener(sock, redirect=True))
    return listeners


def uvicorn_config(
    app: object, settings: Settings, pair: CertificatePair | None, *, access_log: bool = False
) -> uvicorn.Config:
    """uvicorn settings for a gateway listener: fastest loop/parser available, our TLS."""
    return _Config(
        app,  # type: ignore[arg-type]
        loop="auto",
        http="auto",
        ws=_WebSocketProtocol,
        lifespan="on",
        ssl_certfile=str(pair.certfile) if pair else None,
        ssl_keyfile=str(pair.keyfile) if pair else None,
        # The backend's Date and Server pass through; uvicorn adding its own would duplicate them.
        server_header=False,
        date_header=False,
        # Forwarding headers are the gateway's own business (trusted_proxies).
        proxy_headers=False,
        # websockets checks the limit on compressed frames, which deflate can make a
        # little larger than the message; the bridge enforces the exact limit itself.
        ws_max_size=wire_max_size(settings.websocket.max_message_bytes),
        ws_ping_interval=settings.websocket.ping_interval_s,
        ws_ping_timeout=settings.websocket.ping_timeout_s,
        h11_max_incomplete_event_size=settings.limits.max_header_bytes,
        timeout_graceful_shutdown=int(settings.timeouts.shutdown_grace_s),
        access_log=access_log,
        log_config=None,
    )


async def _serve(servers: list[tuple[uvicorn.Server, list[socket.socket]]]) -> None:
    """Serve all ``servers`` until SIGINT/SIGTERM, or until any of them stops."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server, _ in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve(sockets=socks)) for server, socks in servers]
    try:
        # If one listener fails, stop the others rather than serve half a gateway.
        for finished in asyncio.as_completed(tasks):
            await finished
            stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


ServerList = list[tuple[uvicorn.Server, list[socket.socket]]]


def run_worker(settings: Settings, pair: CertificatePair | None, listeners: list[Listener]) -> None:
    """Serve ``listeners`` in this process until SIGTERM/SIGINT."""
    configure_logging(settings)
    run_servers(gateway_servers(settings, pair, listeners))


def gateway_servers(
    settings: Settings, pair: CertificatePair | None, listeners: list[Listener]
) -> ServerList:
    """A uvicorn server for each listener: the gateway app, or the https redirect."""
    servers: ServerList = []
    for listener in listeners:
        if listener.redirect:
            https_port = settings.listen.public_port or settings.listen.port
            redirect = uvicorn_config(RedirectToHttps(https_port), settings, None)
            redirect.lifespan = "off"
            servers.append((_Server(redirect), [listener.sock]))
            continue
        app = create_app(settings)
        config = uvicorn_config(app, settings, pair, access_log=settings.log.access_log)
        grace_s = settings.timeouts.shutdown_grace_s
        server = _Server(config, before_shutdown=functools.partial(close_websockets, app, grace_s))
        servers.append((server, [listener.sock]))
    return servers


def run_servers(servers: ServerList) -> None:
    """Run ``servers`` in one event loop (uvloop when installed) until a signal stops them."""
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        runner.run(_serve(servers))


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


def configure_logging(settings: Settings) -> None:
    """One plain log format for the gateway's and uvicorn's loggers."""
    logging.basicConfig(
        level=settings.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_workers(
    settings: Settings, pair: CertificatePair | None, listeners: list[Listener], workers: int
) -> int:
    """Run ``workers`` processes sharing the listening sockets; forward signals to them."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=run_worker, args=(settings, pair, listeners), daemon=False)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(sig: int, frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    for process in processes:
        process.join()
    return max((abs(p.exitcode or 0) for p in processes), default=0)


def _load(path: str | None) -> tuple[Settings, str]:
    """Settings from ``path``, checked as far as building the app (middleware arguments)."""
    settings = load_settings(path)
    where = path or os.environ.get("GATEWAY_CONFIG") or "environment"
    try:
        build_gateway(settings)
    except ConfigError as exc:
        raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
    return settings, where


def cmd_run(args: argparse.Namespace) -> int:
    """Validate everything, bind, then serve."""
    settings, where = _load(args.config)
    configure_logging(settings)
    pair = resolve_certificate(settings)
    problems = check_certificate(pair, where)
    if problems:
        raise ConfigError(problems)
    listeners = bind_listeners(settings, where)
    scheme = "https" if pair else "http"
    listen = settings.listen
    port = listeners[0].sock.getsockname()[1]
    logger.info("gateway listening on %s://%s:%d/", scheme, listen.host, port)
    if args.workers > 1:
        return run_workers(settings, pair, listeners, args.workers)
    run_worker(settings, pair, listeners)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Like ``nginx -t``: validate, try the certificate and ports, print the result."""
    settings, where = _load(args.config)
    listen = settings.listen
    problems = []
    if listen.tls and listen.certfile is not None and listen.keyfile is not None:
        problems += check_certificate(CertificatePair(listen.certfile, listen.keyfile), where)
    try:
        for listener in bind_listeners(settings, where):
            listener.sock.close()
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    print(to_toml(settings), end="")
    print(f"# {where}: configuration is valid", file=sys.stderr)
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    """Write a self-signed certificate for local development."""
    names = tuple(args.name) if args.name else ("localhost", "127.0.0.1", "::1")
    pair = write_self_signed(Path(args.out), names, args.days)
    print(f"certificate: {pair.certfile}\nkey:         {pair.keyfile}")
    print(f"valid for {', '.join(names)} for {args.days} days (self-signed: browsers will warn)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The echo backend on 127.0.0.1 and the gateway in front of it, with default settings."""
    settings = Settings(
        listen={"host": args.host, "port": args.port},
        routes=[{"prefix": "/", "upstream": f"http://127.0.0.1:{args.backend_port}"}],
    )
    configure_logging(settings)
    pair = resolve_certificate(settings)
    backend = bind("127.0.0.1", args.backend_port, "--backend-port", "demo")
    try:
        listeners = bind_listeners(settings, "demo")
    except ConfigError:
        backend.close()
        raise
    backend_config = uvicorn_config(demo_app(), settings, None)
    backend_config.lifespan = "off"
    servers = [(_Server(backend_config), [backend]), *gateway_servers(settings, pair, listeners)]
    host = "localhost" if args.host in ("127.0.0.1", "::1", "localhost") else args.host
    print(
        f"echo backend on http://127.0.0.1:{args.backend_port}/ (plain HTTP + ws://)\n"
        f"gateway on https://{host}:{args.port}/ -> open this URL "
        "(accept the development certificate); Ctrl-C stops both",
        flush=True,
    )
    run_servers(servers)
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print a password hash for ``auth.basic_users`` (password from stdin or a prompt)."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise ConfigError(["hash-password: empty password"])
    print(hash_password(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="gateway", description="TLS-terminating HTTP and WebSocket reverse proxy"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("-c", "--config", help="settings file (TOML); default: $GATEWAY_CONFIG")
    run.add_argument("--workers", type=_positive, default=1, help="worker processes (default 1)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate settings and print the effective configuration")
    check.add_argument("-c", "--config", help="settings file (TOML); default: $GATEWAY_CONFIG")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="echo backend + gateway in front of it (the seed scenario)")
    demo.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8443, help="gateway https port (default 8443)")
    demo.add_argument("--backend-port", type=int, default=8080, help="echo backend port (8080)")
    demo.set_defaults(func=cmd_demo)

    hashing = sub.add_parser("hash-password", help="hash a password for auth.basic_users")
    hashing.set_defaults(func=cmd_hash_password)

    cert = sub.add_parser("cert", help="write a self-signed development certificate")
    cert.add_argument("--out", default="certs", help="folder for cert.pem and key.pem")
    cert.add_argument("--name", action="append", help="host name or IP (repeatable)")
    cert.add_argument("--days", type=_positive, default=365)
    cert.set_defaults(func=cmd_cert)
    return parser


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` command."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gateway: {problem}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
