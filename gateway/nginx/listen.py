"""The ``[listen]`` section: where the gateway listens, its TLS certificates and versions.

The default server's certificate becomes the default one (``listen.certfile``); another
server with a certificate of its own becomes a ``[[certificates]]`` entry for its
``server_name`` names, chosen by SNI as nginx does.  nginx can also give one server several
(RSA and ECDSA); the gateway serves one chain per name, and notes the others.
``ssl_protocols`` is compared with the gateway's TLS 1.2+ and the difference noted.
Relative certificate paths are resolved against nginx's configuration folder, as nginx
does.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from gateway.nginx.context import Recorder, Scope
from gateway.nginx.notes import APPROXIMATED, UNSUPPORTED
from gateway.nginx.parser import Directive
from gateway.nginx.servers import Listener, Server
from gateway.routing import normalise_host_pattern

__all__ = ["certificate_entries", "listen_section"]

_OLD_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")


def listen_section(listener: Listener, recorder: Recorder, conf_dir: str) -> dict[str, Any]:
    """The ``[listen]`` section: address, port, TLS and its certificate, redirect port."""
    listen: dict[str, Any] = {
        "host": listener.host,
        "port": listener.port,
        "tls": listener.tls,
    }
    if listener.tls:
        _certificates(listener, listen, recorder, conf_dir)
        for server in listener.servers:
            _protocols(server, recorder)
    if listener.redirect_port is not None:
        listen["redirect_port"] = listener.redirect_port
    if listener.public_port is not None:
        listen["public_port"] = listener.public_port
    return listen


def _certificates(
    listener: Listener, listen: dict[str, Any], recorder: Recorder, conf_dir: str
) -> None:
    default = listener.default
    certificate = default.scope.get("ssl_certificate")
    key = default.scope.get("ssl_certificate_key")
    if certificate is None or key is None:
        recorder.note(
            default.directive,
            APPROXIMATED,
            "no ssl_certificate/ssl_certificate_key: the gateway uses a development "
            "certificate for localhost",
        )
        return
    for directive, setting in ((certificate, "certfile"), (key, "keyfile")):
        path = _path(directive, recorder, conf_dir)
        if path is not None:
            listen[setting] = path
    for server in listener.servers:
        for name in ("ssl_certificate", "ssl_certificate_key"):
            found = server.scope.get(name)
            extra = [d for d in _level_of(server.scope, name) if d is not found]
            for directive in extra:
                recorder.note(
                    directive,
                    UNSUPPORTED,
                    "a second certificate (e.g. ECDSA beside RSA): the gateway serves one",
                )


def certificate_entries(
    listener: Listener, recorder: Recorder, conf_dir: str
) -> list[dict[str, Any]]:
    """``[[certificates]]``: one per server whose certificate differs from the default
    server's, for that server's names (``.example.com`` also covers its subdomains)."""
    if not listener.tls:
        return []
    default = listener.default
    chosen = (default.scope.get("ssl_certificate"), default.scope.get("ssl_certificate_key"))
    entries: list[dict[str, Any]] = []
    for server in listener.servers:
        if server is default:
            continue
        own = (server.scope.get("ssl_certificate"), server.scope.get("ssl_certificate_key"))
        if own[0] is None or own[1] is None:
            continue
        if all(c is not None and o.args == c.args for o, c in zip(own, chosen, strict=True)):  # type: ignore[union-attr]
            continue
        hosts = _host_patterns(server.names)
        if not hosts:
            recorder.note(
                own[0],
                UNSUPPORTED,
                "a certificate for a server without a server_name the gateway can match",
            )
            continue
        certfile = _path(own[0], recorder, conf_dir)
        keyfile = _path(own[1], recorder, conf_dir)
        if certfile is not None and keyfile is not None:
            entries.append({"hosts": hosts, "certfile": certfile, "keyfile": keyfile})
    return entries


def _host_patterns(names: Sequence[str]) -> list[str]:
    """Plain and ``*.`` names as host patterns; regex and empty names are left out (the
    route translation notes them)."""
    patterns: list[str] = []
    for name in names:
        if name in ("", "_") or name.startswith("~") or "$" in name:
            continue
        candidates = [name[1:], "*" + name] if name.startswith(".") else [name]
        try:
            patterns += [normalise_host_pattern(candidate) for candidate in candidates]
        except ValueError:
            continue
    return list(dict.fromkeys(patterns))


def _path(directive: Directive, recorder: Recorder, conf_dir: str) -> str | None:
    value = directive.args[0] if len(directive.args) == 1 else ""
    if not value or "$" in value or value.startswith("data:"):
        recorder.note(directive, UNSUPPORTED, "only a file name is supported")
        return None
    path = PurePosixPath(value)
    return posixpath.normpath(path if path.is_absolute() else PurePosixPath(conf_dir) / path)


def _protocols(server: Server, recorder: Recorder) -> None:
    directive = server.scope.get("ssl_protocols")
    if directive is None:
        return
    older = [p for p in directive.args if p in _OLD_PROTOCOLS]
    if older:
        recorder.note(
            directive,
            APPROXIMATED,
            f"{', '.join(older)} will be refused: the gateway's minimum is TLS 1.2",
        )
    elif "TLSv1.2" not in directive.args:
        recorder.note(directive, APPROXIMATED, "the gateway also accepts TLS 1.2 (its minimum)")
    elif "TLSv1.3" not in directive.args:
        recorder.note(directive, APPROXIMATED, "the gateway also accepts TLS 1.3")


def _level_of(scope: Scope, name: str) -> list[Directive]:
    """The directives ``name`` at the nearest level of ``scope`` that has any."""
    for level in scope.chain():
        found = level.here(name)
        if found:
            return found
    return []
