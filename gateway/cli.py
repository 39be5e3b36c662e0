"""``gateway run | check | reload | cert | demo | hash-password``: the command line.

Commands validate everything before any socket opens; ``gateway.server`` runs uvicorn.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.app import build_gateway
from gateway.demo import demo_app
from gateway.middleware.auth import hash_password
from gateway.nginx.cli import add_arguments as add_nginx_arguments
from gateway.nginx.cli import settings_from_nginx
from gateway.server import (
    bind,
    bind_listeners,
    configure_logging,
    gateway_servers,
    plain_server,
    run_servers,
    run_worker,
    run_workers,
    uvicorn_config,
)
from gateway.settings import ConfigError, Settings, load_settings, to_toml
from gateway.tls import CertificatePair, dev_certificate, write_self_signed

__all__ = ["main"]

logger = logging.getLogger("gateway")


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
    load: Callable[[], Settings]
    if args.nginx:
        if args.config:
            raise ConfigError(["run: use either -c or --nginx"])
        load = functools.partial(
            settings_from_nginx, args.nginx, strict=args.strict, show_notes=False
        )
        settings, where = settings_from_nginx(args.nginx, strict=args.strict), args.nginx
        try:
            build_gateway(settings)
        except ConfigError as exc:
            raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
    else:
        settings, where = _load(args.config)
        load = functools.partial(load_settings, args.config)
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
    pid_file = Path(args.pid_file) if args.pid_file else state_dir() / "gateway.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        if args.workers > 1:
            return run_workers(settings, pair, listeners, args.workers, load, where)
        run_worker(settings, pair, listeners, load, where)
    finally:
        pid_file.unlink(missing_ok=True)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask a running gateway (found by its pid file) to reload: SIGHUP."""
    pid_file = Path(args.pid_file) if args.pid_file else state_dir() / "gateway.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"reload: no running gateway found via {pid_file}: {exc}"]) from None
    print(f"sent SIGHUP to gateway process {pid}")
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
    servers = [
        plain_server(uvicorn_config(demo_app(), settings, None), backend),
        *gateway_servers(settings, pair, listeners),
    ]
    host = "localhost" if args.host in ("127.0.0.1", "::1", "localhost") else args.host
    print(
        f"echo backend on http://127.0.0.1:{args.backend_port}/ (plain HTTP + ws://)\n"
        f"gateway on https://{host}:{args.port}/ -> open this URL "
        "(accept the development certificate); Ctrl-C stops both",
        flush=True,
    )
    run_servers(servers)
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    """Only the demo's echo backend (plain HTTP + ws://), e.g. as a container."""
    settings = Settings()
    configure_logging(settings)
    sock = bind(args.host, args.port, "--port", "echo")
    print(f"echo backend on http://{args.host}:{args.port}/ (plain HTTP + ws://)", flush=True)
    run_servers([plain_server(uvicorn_config(demo_app(), settings, None), sock)])
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
    run.add_argument("--pid-file", help="default: $GATEWAY_STATE_DIR/gateway.pid")
    run.add_argument("--nginx", metavar="FILE", help="run from an nginx configuration")
    run.add_argument(
        "--strict", action="store_true", help="with --nginx: refuse anything untranslatable"
    )
    run.set_defaults(func=cmd_run)
    add_nginx_arguments(sub)

    reload = sub.add_parser("reload", help="make a running gateway re-read settings (SIGHUP)")
    reload.add_argument("--pid-file", help="default: $GATEWAY_STATE_DIR/gateway.pid")
    reload.set_defaults(func=cmd_reload)

    check = sub.add_parser("check", help="validate settings and print the effective configuration")
    check.add_argument("-c", "--config", help="settings file (TOML); default: $GATEWAY_CONFIG")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="echo backend + gateway in front of it (the seed scenario)")
    demo.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8443, help="gateway https port (default 8443)")
    demo.add_argument("--backend-port", type=int, default=8080, help="echo backend port (8080)")
    demo.set_defaults(func=cmd_demo)

    echo = sub.add_parser("echo", help="only the demo echo backend (HTTP page + WebSocket echo)")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=8080)
    echo.set_defaults(func=cmd_echo)

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
