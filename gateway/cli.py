"""``gateway run | check | reload | cert | demo | hash-password``: the command line.

Commands validate everything before any socket opens; ``gateway.server`` runs uvicorn.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.app import build_gateway
from gateway.certificate_settings import certificate_problems
from gateway.control import read_report, report_path, state_dir, write_atomically
from gateway.demo import demo_app
from gateway.logs import configure_logging, get_logger
from gateway.middleware.auth import hash_password
from gateway.nginx.cli import add_arguments as add_nginx_arguments
from gateway.nginx.cli import settings_from_nginx
from gateway.proxy_command import plan_proxy
from gateway.server import (
    defer_stop_signals,
    gateway_servers,
    plain_server,
    run_servers,
    run_worker,
    run_workers,
    uvicorn_config,
)
from gateway.settings import ConfigError, Settings, load_settings, to_toml
from gateway.sockets import announce, bind, bind_listeners
from gateway.tls import (
    CertificatePair,
    check_pair,
    describe_profile,
    dev_certificate,
    openssl_groups_config,
    write_self_signed,
)

__all__ = ["main"]

logger = get_logger("gateway")


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


def check_certificates(settings: Settings, pair: CertificatePair | None, where: str) -> list[str]:
    """Problems loading the default certificate ``pair`` or the ``[[certificates]]``."""
    if not settings.listen.tls:
        return []
    problem = check_pair(pair) if pair is not None else None
    problems = [f"listen.certfile: {problem}"] if problem is not None else []
    return [f"{where}: {text}" for text in [*problems, *certificate_problems(settings)]]


def check_extras(settings: Settings, where: str) -> list[str]:
    """Features turned on whose optional packages are not installed."""
    wanted = [("listen.http2", "hypercorn", "http2")] if settings.listen.http2 else []
    if settings.acme is not None:
        wanted.append(("[acme]", "acme", "acme"))
    return [
        f"{where}: {key}: needs the {module!r} package: pip install 'gateway[{extra}]'"
        for key, module, extra in wanted
        if importlib.util.find_spec(module) is None
    ]


def _load(path: str | None) -> tuple[Settings, str]:
    """Settings from ``path``, checked as far as building the app (middleware arguments)."""
    settings = load_settings(path)
    where = path or os.environ.get("GATEWAY_CONFIG") or "environment"
    try:
        build_gateway(settings)
    except ConfigError as exc:
        raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
    return settings, where


def _load_nginx(args: argparse.Namespace) -> tuple[Settings, str, Callable[[], Settings]]:
    """Settings translated from ``--nginx FILE``, checked as far as building the app."""
    where = args.nginx
    settings = settings_from_nginx(where, strict=args.strict)
    try:
        build_gateway(settings)
    except ConfigError as exc:
        raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
    load = functools.partial(settings_from_nginx, where, strict=args.strict, show_notes=False)
    return settings, where, load


def _pid_file(args: argparse.Namespace) -> Path:
    return Path(args.pid_file) if args.pid_file else state_dir() / "gateway.pid"


def cmd_run(args: argparse.Namespace) -> int:
    """Validate everything, bind, then serve."""
    load: Callable[[], Settings]
    if args.nginx:
        if args.config:
            raise ConfigError(["run: use either -c or --nginx"])
        settings, where, load = _load_nginx(args)
    else:
        settings, where = _load(args.config)
        load = functools.partial(load_settings, args.config)
    return serve(settings, where, load, args.workers, _pid_file(args))


def serve(
    settings: Settings,
    where: str,
    load: Callable[[], Settings],
    workers: int,
    pid_file: Path,
) -> int:
    """Check the certificates, bind, then serve ``settings`` until a signal stops it."""
    configure_logging(settings.log.level)
    pair = resolve_certificate(settings)
    problems = check_extras(settings, where) + check_certificates(settings, pair, where)
    if problems:
        raise ConfigError(problems)
    listeners = bind_listeners(settings, where)
    defer_stop_signals()
    announce(listeners, pair is not None, settings)
    if pair is not None:
        log_tls_profile(settings)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(pid_file, f"{os.getpid()}\n")
    report = report_path(pid_file)
    logger.info(
        "gateway starting: pid %d, %d worker(s), settings from %s", os.getpid(), workers, where
    )
    try:
        if workers > 1:
            return run_workers(settings, pair, listeners, workers, load, where, report)
        run_worker(settings, pair, listeners, load, where, report)
    finally:
        pid_file.unlink(missing_ok=True)
        report.unlink(missing_ok=True)
        logger.info("gateway stopped")
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    """A gateway from two arguments: --from HOST[:PORT] --to URL (see gateway.proxy_command)."""
    plan = plan_proxy(
        args.source,
        args.to,
        acme_directory=args.acme_directory,
        acme_ca_bundle=args.acme_ca_bundle,
        acme_storage=args.acme_storage,
        email=args.email,
        host=args.host,
        redirect_port=args.redirect_port,
    )
    settings = plan.settings
    route = settings.routes[0]
    if plan.acme and settings.acme is not None:
        certificate = (
            f"a certificate for {', '.join(settings.acme.domains)} from {settings.acme.directory}"
            f" (ACME; http-01 on port {settings.listen.redirect_port}, tls-alpn-01 on"
            f" {settings.listen.port}), the development certificate until it arrives"
        )
    else:
        certificate = "the development certificate (browsers will warn)"
    print(
        f"gateway proxy: https on {settings.listen.host}:{settings.listen.port} -> "
        f"{route.upstream}, with {certificate}",
        flush=True,
    )
    print(f"open {plan.url}", flush=True)
    load = functools.partial(Settings.model_copy, settings)  # SIGHUP: the same settings
    return serve(settings, "proxy", load, args.workers, _pid_file(args))


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask a running gateway (found by its pid file) to reload, and say whether it did."""
    pid_file = _pid_file(args)
    report = report_path(pid_file)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError([f"reload: no running gateway found via {pid_file}: {exc}"]) from None
    asked = time.time_ns()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ConfigError([f"reload: gateway process {pid} ({pid_file}): {exc.strerror}"]) from None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        outcome = read_report(report)
        if outcome is not None and outcome.time_ns >= asked:
            if not outcome.ok:
                rejected = f"reload rejected by gateway process {pid}, configuration kept:"
                raise ConfigError([rejected, *outcome.problems])
            print(f"gateway process {pid} reloaded its settings")
            return 0
        time.sleep(0.05)
    raise ConfigError(
        [
            f"reload: sent SIGHUP to gateway process {pid}, but it reported no outcome within "
            f"{args.timeout:g} s ({report}); see its log"
        ]
    )


def cmd_check(args: argparse.Namespace) -> int:
    """Like ``nginx -t``: validate everything without binding a socket, print the result.

    Works while the gateway runs (ports are checked by ``gateway run`` when it binds).
    """
    if args.nginx:
        if args.config:
            raise ConfigError(["check: use either -c or --nginx"])
        settings, where, _ = _load_nginx(args)
    else:
        settings, where = _load(args.config)
    listen = settings.listen
    given = listen.certfile is not None and listen.keyfile is not None
    pair = CertificatePair(listen.certfile, listen.keyfile) if given else None  # type: ignore[arg-type]
    problems = check_extras(settings, where) + check_certificates(settings, pair, where)
    if problems:
        raise ConfigError(problems)
    print(to_toml(settings), end="")
    if listen.tls:
        print(f"# TLS profile {describe_profile(settings.tls.profile)}", file=sys.stderr)
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
    admin: dict[str, object] = {"port": args.admin_port}
    if args.no_admin:
        admin = {"enabled": False}
    settings = Settings(
        listen={"host": args.host, "port": args.port},
        routes=[{"prefix": "/", "upstream": f"http://127.0.0.1:{args.backend_port}"}],
        admin=admin,
        # Ctrl-C closes the demo's WebSocket sessions (1001) after 2 s, not 10.
        timeouts={"shutdown_grace_s": 2},
    )
    configure_logging(settings.log.level)
    pair = resolve_certificate(settings)
    backend = bind("127.0.0.1", args.backend_port, "--backend-port", "demo", "use --backend-port")
    # The demo's options, not settings keys, are what its user can change.
    flags = {
        "listen.port": ("--port", "use --port"),
        "admin.port": ("--admin-port", "use --admin-port, or --no-admin"),
    }
    try:
        listeners = bind_listeners(settings, "demo", flags)
    except ConfigError:
        backend.close()
        raise
    print(
        f"echo backend on http://127.0.0.1:{args.backend_port}/ (plain HTTP + ws://)",
        flush=True,
    )
    announce(listeners, True, settings)
    log_tls_profile(settings)
    host = (
        "localhost"
        if args.host in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::")
        else args.host
    )
    print(
        f"open https://{host}:{listeners[0].sock.getsockname()[1]}/ "
        "(accept the development certificate); Ctrl-C stops both",
        flush=True,
    )
    # The gateway drains first (1001 to browsers), then the backend stops.
    backend_server = plain_server(uvicorn_config(demo_app(), settings, None), backend)
    run_servers(gateway_servers(settings, pair, listeners), after=[backend_server])
    logger.info("gateway stopped")
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    """Only the demo's echo backend (plain HTTP + ws://), e.g. as a container."""
    settings = Settings()
    configure_logging(settings.log.level)
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

    proxy = sub.add_parser(
        "proxy",
        help="one-line start: https for HOST (ACME for a public name) in front of URL",
        description="Run a gateway with default settings and one route: https://HOST[:PORT]/"
        " to URL. A public HOST gets ports 443 and 80 and a certificate from Let's Encrypt"
        " (ACME); localhost, an IP or a reserved name (.test, .internal...) gets port 8443"
        " on loopback and the development certificate.",
    )
    proxy.add_argument("--from", dest="source", required=True, metavar="HOST[:PORT]")
    proxy.add_argument("--to", required=True, metavar="URL", help="backend, e.g. localhost:8080")
    proxy.add_argument("--host", help="address to listen on (0.0.0.0; 127.0.0.1 for local)")
    proxy.add_argument("--redirect-port", type=int, help="http listener (80 with ACME)")
    proxy.add_argument("--email", help="contact address for the ACME account")
    proxy.add_argument("--acme-directory", metavar="URL", help="ACME CA (Let's Encrypt)")
    proxy.add_argument("--acme-ca-bundle", type=Path, metavar="FILE", help="trust for the CA")
    proxy.add_argument("--acme-storage", type=Path, metavar="DIR", help="STATE_DIR/acme")
    proxy.add_argument("--workers", type=_positive, default=1, help="worker processes (1)")
    proxy.add_argument("--pid-file", help="default: $GATEWAY_STATE_DIR/gateway.pid")
    proxy.set_defaults(func=cmd_proxy)
    add_nginx_arguments(sub)

    reload = sub.add_parser(
        "reload",
        help="make a running gateway re-read its settings (SIGHUP) and report the outcome",
    )
    reload.add_argument("--pid-file", help="default: $GATEWAY_STATE_DIR/gateway.pid")
    reload.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the outcome (10)"
    )
    reload.set_defaults(func=cmd_reload)

    check = sub.add_parser(
        "check",
        help="validate settings and print the effective configuration (binds no port)",
    )
    check.add_argument("-c", "--config", help="settings file (TOML); default: $GATEWAY_CONFIG")
    check.add_argument("--nginx", metavar="FILE", help="check an nginx configuration instead")
    check.add_argument(
        "--strict", action="store_true", help="with --nginx: refuse anything untranslatable"
    )
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="echo backend + gateway in front of it (the seed scenario)")
    demo.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8443, help="gateway https port (default 8443)")
    demo.add_argument("--backend-port", type=int, default=8080, help="echo backend port (8080)")
    demo.add_argument(
        "--admin-port",
        type=int,
        default=9901,
        help="admin listener on 127.0.0.1 (/healthz /readyz /metrics /status; default 9901)",
    )
    demo.add_argument("--no-admin", action="store_true", help="no admin listener")
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


# The commands that serve TLS, and so restart once with the OpenSSL groups configuration.
_SERVING = ("run", "demo", "proxy")
_GROUPS_MARK = "GATEWAY_OPENSSL_GROUPS"


def log_tls_profile(settings: Settings) -> None:
    """Say which TLS profile is served, and where the key exchange groups come from."""
    conf = os.environ.get("OPENSSL_CONF")
    if conf and not os.environ.get(_GROUPS_MARK):
        source = f"groups as OPENSSL_CONF={conf} sets them"
    elif conf:
        source = f"groups set through {conf}"
    else:
        source = "groups left at OpenSSL's defaults (run through the gateway command for them)"
    logger.info("TLS profile %s; %s", describe_profile(settings.tls.profile), source)


def apply_tls_groups(argv: Sequence[str]) -> None:
    """Restart this process (same pid) with ``OPENSSL_CONF`` naming a file that limits TLS
    to Mozilla's key exchange groups, which OpenSSL reads only when a process starts.

    Nothing happens if ``OPENSSL_CONF`` is already set (by the user, or by this restart),
    or if the file cannot be written (then OpenSSL's default groups apply, and a warning
    says so).
    """
    if os.environ.get("OPENSSL_CONF") or os.environ.get(_GROUPS_MARK):
        return
    path = state_dir() / "openssl-tls-groups.cnf"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, openssl_groups_config())
    except OSError as exc:
        logger.warning("TLS groups left at OpenSSL's defaults: cannot write %s: %s", path, exc)
        return
    environment = {**os.environ, "OPENSSL_CONF": str(path), _GROUPS_MARK: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    # The same interpreter and arguments; the pid stays (pid file, PID 1 in a container).
    os.execve(sys.executable, [sys.executable, "-m", "gateway", *argv], environment)  # noqa: S606


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` command."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    if argv is None and args.command in _SERVING:
        apply_tls_groups(arguments)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gateway: {problem}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
