"""Value objects that configure an upstream: `Target` (one backend) and `HealthCheck`."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["BALANCE_POLICIES", "HealthCheck", "Target"]

BALANCE_POLICIES = ("round_robin", "least_conn", "ip_hash")

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def _check_number(key: str, value: float, *, minimum: float, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{key} must be {relation} {minimum}, got {value!r}")


def _check_int(key: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Target:
    """One backend instance of an upstream, like nginx's ``server address weight=N``.

    ``url`` is one of:

    - ``http://host[:port][/base]`` or ``https://...`` (``ws://``/``wss://`` are the
      same targets spelled for WebSocket: HTTP goes to ``http``/``https``, WebSocket
      sessions to ``ws``/``wss`` of the same address);
    - ``unix:/path/to.sock`` or ``unix:/path/to.sock:/base``: plain HTTP (and WS) over
      a Unix socket, nginx's ``unix:`` notation; the socket path ends at the first
      ``:``. The Host sent when the client gave none is ``localhost``, as in nginx.

    ``/base`` is prepended to every forwarded path.
    """

    url: str
    weight: int = 1
    # Derived from ``url`` (see __post_init__).
    scheme: str = field(init=False, repr=False, compare=False)
    """``http`` or ``https``."""
    host: str = field(init=False, repr=False, compare=False)
    """Host name or address (``localhost`` for a Unix socket)."""
    port: int | None = field(init=False, repr=False, compare=False)
    """The port given in the URL, or None for the scheme's default (or a Unix socket)."""
    authority: str = field(init=False, repr=False, compare=False)
    """``host[:port]`` as written in the URL: the Host header when none is forwarded."""
    unix_path: str | None = field(init=False, repr=False, compare=False)
    base_path: str = field(init=False, repr=False, compare=False)
    """Path prefix without the trailing slash (``""`` for none)."""

    def __post_init__(self) -> None:
        _check_int("weight", self.weight, 1)
        if not isinstance(self.url, str):
            raise ValueError(f"target url must be a string, got {self.url!r}")
        derived: tuple[str, str, int | None, str, str | None, str]
        if self.url.startswith("unix:"):
            path, sep, base = self.url[len("unix:") :].partition(":")
            if not path.startswith("/") or (sep and not base.startswith("/")):
                raise ValueError(
                    f"target {self.url!r} must look like unix:/path/to.sock or"
                    " unix:/path/to.sock:/base"
                )
            derived = ("http", "localhost", None, "localhost", path, base.rstrip("/"))
        else:
            derived = _parse_network_url(self.url)
        for name, value in zip(
            ("scheme", "host", "port", "authority", "unix_path", "base_path"),
            derived,
            strict=True,
        ):
            object.__setattr__(self, name, value)

    @property
    def origin(self) -> str:
        """``scheme://authority`` (``http://localhost`` for a Unix socket)."""
        return f"{self.scheme}://{self.authority}"

    @property
    def base_url(self) -> str:
        """The URL the backend believes it has: origin + base path (for Location rewriting)."""
        return self.origin + self.base_path


def _parse_network_url(url: str) -> tuple[str, str, int | None, str, None, str]:
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(
            f"target {url!r} must be an absolute http(s):// or ws(s):// URL, or unix:/path"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"target {url!r} must not have credentials, query or fragment")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"target {url!r}: {exc}") from None
    return scheme, parts.hostname, port, parts.netloc, None, parts.path.rstrip("/")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checks: probe every target with ``GET path`` every ``interval_s``.

    A target is marked unhealthy after ``unhealthy_threshold`` consecutive failed probes
    (no answer within ``timeout_s``, or a status outside ``expect_status``) and healthy
    again after ``healthy_threshold`` consecutive good ones. Targets start healthy.
    ``path`` is absolute on the target: the target's base path is not prepended.
    """

    path: str = "/healthz"
    interval_s: float = 5.0
    timeout_s: float = 2.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expect_status: Container[int] = range(200, 400)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        if not all(0x21 <= ord(char) <= 0x7E for char in self.path):
            raise ValueError(f"path must be visible ASCII (percent-encoded), got {self.path!r}")
        _check_number("interval_s", self.interval_s, minimum=0, strict=True)
        _check_number("timeout_s", self.timeout_s, minimum=0, strict=True)
        _check_int("healthy_threshold", self.healthy_threshold, 1)
        _check_int("unhealthy_threshold", self.unhealthy_threshold, 1)


def check_upstream_options(
    *,
    balance: str,
    max_fails: int,
    fail_timeout_s: float,
    max_tries: int,
    try_timeout_s: float,
) -> None:
    """Validate the keyword arguments of `Upstream`; ValueError names the key."""
    if balance not in BALANCE_POLICIES:
        raise ValueError(f"balance must be one of {', '.join(BALANCE_POLICIES)}, got {balance!r}")
    _check_int("max_fails", max_fails, 0)
    _check_number("fail_timeout_s", fail_timeout_s, minimum=0, strict=True)
    _check_int("max_tries", max_tries, 1)
    _check_number("try_timeout_s", try_timeout_s, minimum=0, strict=True)
