"""Listening sockets: bind the configured ports before anything is served, and announce
each listener once with a URL a person can open.

A port that is taken is a ``ConfigError`` naming the key (or the command's option) and
how to choose another, so that ``gateway run`` fails before it serves anything.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.logs import get_logger
from gateway.settings import ConfigError, Settings

__all__ = ["Listener", "announce", "bind", "bind_listeners", "listener_url"]

logger = get_logger("gateway")


@dataclass(frozen=True)
class Listener:
    """A bound socket and what serves it."""

    sock: socket.socket
    kind: Literal["gateway", "redirect", "admin"] = "gateway"


_BIND_HINTS = {
    "listen.port": "set listen.port (GATEWAY_LISTEN__PORT)",
    "listen.redirect_port": "set listen.redirect_port (GATEWAY_LISTEN__REDIRECT_PORT)",
    "admin.port": (
        "set admin.port (GATEWAY_ADMIN__PORT), or admin.enabled = false"
        " (GATEWAY_ADMIN__ENABLED=false)"
    ),
}


def bind(host: str, port: int, key: str, where: str, fix: str | None = None) -> socket.socket:
    """A listening socket on host:port; ConfigError naming ``key`` (and, for a port in use,
    ``fix``: how to choose another) if that fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            fix = fix or _BIND_HINTS.get(key, "choose another port")
            hint = f" (another program, or another gateway, listens there: {fix})"
        raise ConfigError(
            [f"{where}: {key}: cannot listen on {host}:{port}: {exc.strerror}{hint}"]
        ) from None
    sock.set_inheritable(True)
    return sock


def listener_url(listener: Listener, tls: bool) -> str:
    """A URL a person can open for ``listener`` (a wildcard address is shown as localhost)."""
    host, port = listener.sock.getsockname()[:2]
    scheme = "https" if tls and listener.kind == "gateway" else "http"
    if host in ("0.0.0.0", "::"):
        other = f"{scheme}://{socket.gethostname()}:{port}/"
        return f"{scheme}://localhost:{port}/ (all interfaces; also {other})"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}/"


def announce(listeners: list[Listener], tls: bool, settings: Settings) -> None:
    """One log line per listener, with a URL to open."""
    for listener in listeners:
        url = listener_url(listener, tls)
        if listener.kind == "gateway":
            logger.info("gateway listening on %s", url)
        elif listener.kind == "redirect":
            https_port = settings.listen.public_port or settings.listen.port
            logger.info("redirect listener on %s -> https port %d", url, https_port)
        else:
            logger.info(
                "admin listener on %s (/healthz /readyz /metrics /status; admin.port,"
                " admin.enabled)",
                url,
            )


def bind_listeners(
    settings: Settings, where: str, flags: Mapping[str, tuple[str, str]] | None = None
) -> list[Listener]:
    """Bind every configured listener, or raise ConfigError (closing what was bound).

    ``flags`` renames settings keys for a command that sets them from its own options:
    ``{"listen.port": ("--port", "use --port")}`` (the name, and how to fix a busy port).
    """
    listen, admin = settings.listen, settings.admin
    wanted: list[tuple[str, int, str, Literal["gateway", "redirect", "admin"]]] = [
        (listen.host, listen.port, "listen.port", "gateway")
    ]
    if listen.redirect_port is not None:
        wanted.append((listen.host, listen.redirect_port, "listen.redirect_port", "redirect"))
    if admin.enabled:
        wanted.append((admin.host, admin.port, "admin.port", "admin"))
    listeners: list[Listener] = []
    try:
        for host, port, key, kind in wanted:
            name, fix = (flags or {}).get(key, (key, None))
            listeners.append(Listener(bind(host, port, name, where, fix), kind))
    except ConfigError:
        for listener in listeners:
            listener.sock.close()
        raise
    return listeners
