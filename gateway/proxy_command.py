"""``gateway proxy --from HOST[:PORT] --to URL``: a gateway from two arguments, like
``caddy reverse-proxy --from example.com --to localhost:8080``.

Pure decisions only (``proxy_settings`` and what it needs); ``gateway.cli`` runs them.

- a public host name gets the standard ports (443, and 80 for redirects and ACME's
  http-01), listens on every address, and a certificate from an ACME CA (Let's Encrypt
  unless ``--acme-directory`` names another);
- ``localhost``, an IP address or a name under a reserved suffix (``.test``,
  ``.localhost``, ``.internal``...) gets port 8443 on loopback and the development
  certificate - unless ``--acme-directory`` asks for ACME (a private CA, a test CA);
- the route sends every path of that host to URL (``localhost:8080`` means
  ``http://localhost:8080``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.settings import ConfigError, Settings, settings_from

__all__ = ["ProxyPlan", "is_public_name", "parse_from", "plan_proxy", "upstream_url"]

# Names that no public CA will certify (RFC 6761, RFC 8375, ICANN's .internal).
_RESERVED_SUFFIXES = ("localhost", "test", "example", "invalid", "local", "internal", "home.arpa")


def parse_from(value: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` as (host, port or None)."""
    host, port = value, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError([f"--from {value!r}: expected [ADDRESS]:PORT"])
            port = _port(value, rest[1:])
    elif value.count(":") == 1:
        host, _, text = value.partition(":")
        port = _port(value, text)
    host = host.strip().lower().rstrip(".")
    if not host or "/" in host:
        raise ConfigError([f"--from {value!r}: expected HOST or HOST:PORT (no scheme, no path)"])
    return host, port


def _port(value: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError([f"--from {value!r}: {text!r} is not a port number (1-65535)"])
    return int(text)


def is_local(host: str) -> bool:
    """An IP address, ``localhost`` or a name under a reserved suffix."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or not is_public_name(host)
    return True


def is_public_name(host: str) -> bool:
    """A DNS name a public ACME CA could validate (has a dot, no reserved suffix)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return False
    if "." not in host:
        return False
    return not any(host == s or host.endswith("." + s) for s in _RESERVED_SUFFIXES)


def upstream_url(value: str) -> str:
    """``--to``: a URL, or ``HOST:PORT`` / ``:PORT`` for plain HTTP."""
    if "://" in value:
        return value
    if value.startswith(":"):
        value = "127.0.0.1" + value
    return f"http://{value}"


@dataclass(frozen=True)
class ProxyPlan:
    """What ``gateway proxy`` will run, and what it says it does."""

    settings: Settings
    acme: bool
    url: str  # the URL to open


def plan_proxy(
    source: str,
    to: str,
    *,
    acme_directory: str | None = None,
    acme_ca_bundle: Path | None = None,
    acme_storage: Path | None = None,
    email: str | None = None,
    host: str | None = None,
    redirect_port: int | None = None,
) -> ProxyPlan:
    """The settings for ``gateway proxy --from SOURCE --to TO`` (and its options)."""
    name, port = parse_from(source)
    acme = acme_directory is not None or is_public_name(name)
    local = is_local(name) and not acme
    listen: dict[str, Any] = {
        "host": host or ("127.0.0.1" if local else "0.0.0.0"),
        "port": port or (8443 if local else 443),
    }
    if acme:
        listen["redirect_port"] = redirect_port if redirect_port is not None else 80
    elif redirect_port is not None:
        listen["redirect_port"] = redirect_port
    route: dict[str, Any] = {"prefix": "/", "upstream": upstream_url(to)}
    if not local:  # a site serves its own name only (nginx: server_name)
        route["hosts"] = [name]
    data: dict[str, Any] = {"listen": listen, "routes": [route]}
    if acme:
        section: dict[str, Any] = {"domains": [name], "email": email}
        if acme_directory is not None:
            section["directory"] = acme_directory
        if acme_ca_bundle is not None:
            section["ca_bundle"] = acme_ca_bundle
        if acme_storage is not None:
            section["storage"] = acme_storage
        data["acme"] = section
    settings = settings_from(data, "proxy")
    shown = f"[{name}]" if ":" in name else name
    port_part = "" if listen["port"] == 443 else f":{listen['port']}"
    return ProxyPlan(settings, acme, f"https://{shown}{port_part}/")
