"""Typed settings: a TOML file plus ``GATEWAY_*`` environment overrides.

This is the only module that reads configuration files and the environment, and
the only place where configuration is validated.  Every problem is reported as
one line that names the file, the key and what is wrong::

    settings/gateway.toml: routes.0.upstream: unsupported scheme 'ftp' (use http or https)

Environment variables override the file, nested keys separated by ``__``:
``GATEWAY_LISTEN__PORT=9443``, ``GATEWAY_TIMEOUTS__READ_S=120``; lists and tables
take JSON: ``GATEWAY_ROUTES='[{"prefix": "/", "upstream": "http://127.0.0.1:8080"}]'``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gateway.errors import ConfigError
from gateway.proxy.forwarding import CLIENT_TRUST_HEADERS
from gateway.routing import normalise_host_pattern
from gateway.settings_sources import env_variable_for, field_names_at, line_of, suggestion
from gateway.upstream import Target

__all__ = [
    "AcmeSettings",
    "CertificateSettings",
    "ConfigError",
    "ForwardingSettings",
    "Http2Settings",
    "LimitSettings",
    "ListenSettings",
    "RouteSettings",
    "Settings",
    "TLSSettings",
    "TimeoutSettings",
    "WebSocketSettings",
    "default_settings_path",
    "load_settings",
    "to_toml",
]

CONFIG_ENV = "GATEWAY_CONFIG"
UPSTREAM_SCHEMES = ("http", "https")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenSettings(_Section):
    """The public listener: where clients connect."""

    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)
    tls: bool = True
    certfile: Path | None = None
    keyfile: Path | None = None
    # A plain-HTTP listener that answers every request with 308 to the https URL.
    redirect_port: int | None = Field(None, ge=0, le=65535)
    # The port clients use for https in redirects, when a load balancer maps ports.
    public_port: int | None = Field(None, ge=1, le=65535)
    # Plain HTTP sent to the TLS port: "reject" answers 400 with an explanation,
    # "redirect" a 308 to the https URL (for a gateway without redirect_port).
    plain_http: Literal["reject", "redirect"] = "reject"
    # HTTP/2 next to HTTP/1.1 on the TLS listener, chosen by ALPN (served by hypercorn:
    # pip install 'gateway[http2]'; bounds in [http2]). Never in cleartext (h2c).
    http2: bool = False

    @field_validator("certfile", "keyfile")
    @classmethod
    def _check_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{str(path)!r} does not exist or is not a file")
        return path

    @model_validator(mode="after")
    def _check_tls_files(self) -> ListenSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile must be given together")
        if self.redirect_port is not None and not self.tls:
            raise ValueError("redirect_port needs tls = true (it redirects to https)")
        if self.http2 and not self.tls:
            raise ValueError("http2 needs tls = true (cleartext HTTP/2, h2c, is not served)")
        return self


def is_upstream_name(value: str) -> bool:
    """A route's ``upstream`` names an [upstreams.NAME] table unless it looks like a URL."""
    return ":" not in value and "/" not in value


def check_upstream_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL without query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in UPSTREAM_SCHEMES:
        raise ValueError(
            f"upstream {url!r}: unsupported scheme {parts.scheme!r} (use http or https)"
        )
    if not parts.hostname:
        raise ValueError(f"upstream {url!r}: no host")
    if parts.username is not None or parts.password is not None:
        # Never sent by the proxy, and they would show wherever the URL is shown.
        raise ValueError(
            "upstream URLs cannot carry credentials (user:password@); send them with"
            ' headers.request_set, e.g. { "Authorization" = "Basic ..." }'
        )
    if parts.query or parts.fragment:
        raise ValueError(f"upstream {url!r}: must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"upstream {url!r}: {exc}") from None


class TLSSettings(_Section):
    """TLS towards clients (the default certificate is in [listen])."""

    # Mozilla's server side TLS guideline: "intermediate" (TLS 1.2 with ECDHE and AEAD
    # ciphers, and TLS 1.3) or "modern" (TLS 1.3 only).
    profile: Literal["intermediate", "modern"] = "intermediate"
    # A client's SNI name that no [[certificates]] entry (nor ACME) covers: "default"
    # serves the default certificate, "reject" ends the handshake (unrecognized_name).
    unknown_sni: Literal["default", "reject"] = "default"


class Http2Settings(_Section):
    """Bounds of one HTTP/2 connection (listen.http2); its header list is bounded by
    limits.max_header_bytes."""

    # Streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS; nginx http2_max_concurrent_streams).
    # At most 900: hypercorn's priority tree holds 1,000 streams at once.
    max_concurrent_streams: int = Field(100, ge=1, le=900)
    # Then a graceful GOAWAY: a client opens a new connection (nginx keepalive_requests).
    # Rapid-reset bursts are ended sooner by max_control_frames_per_s.
    max_requests_per_connection: int = Field(500, ge=1, le=10_000_000)
    # A connection without an open stream is closed after this long.
    idle_timeout_s: float = Field(5.0, gt=0)
    # The largest frame a client may send (SETTINGS_MAX_FRAME_SIZE, 16 KiB to 16 MiB).
    max_frame_bytes: int = Field(16384, ge=16384, le=16777215)
    # Frames that carry no request - PING, SETTINGS, RST_STREAM, PRIORITY, empty DATA,
    # refused streams - per second and connection (one second's worth at once); past it:
    # GOAWAY ENHANCE_YOUR_CALM (ping/settings floods, rapid reset).
    max_control_frames_per_s: int = Field(200, ge=10)


class CertificateSettings(_Section):
    """A certificate for some host names (nginx: another server block on 443)."""

    hosts: list[str] = Field(min_length=1)
    certfile: Path
    keyfile: Path

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, values: list[str]) -> list[str]:
        return [normalise_host_pattern(value) for value in values]

    @field_validator("certfile", "keyfile")
    @classmethod
    def _check_file(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"{str(path)!r} does not exist or is not a file")
        return path


class AcmeSettings(_Section):
    """Automatic HTTPS: certificates from an ACME CA (RFC 8555), obtained and renewed by
    the gateway (needs ``pip install 'gateway[acme]'``)."""

    # Let's Encrypt; its staging directory for trials:
    # https://acme-staging-v02.api.letsencrypt.org/directory
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    email: str | None = None
    # Default: the exact host names of the routes (wildcards cannot be validated so).
    domains: list[str] = Field(default_factory=list)
    # The CA's own TLS certificate is checked against this bundle (a private ACME CA).
    ca_bundle: Path | None = None
    # Default: STATE_DIR/acme (account key, keys and certificates: 0700 folders, 0600 files).
    storage: Path | None = None
    # http-01 is answered on listen.redirect_port, tls-alpn-01 on the TLS listener.
    # Default: both where possible.
    challenges: list[Literal["http-01", "tls-alpn-01"]] = Field(default_factory=list)
    renew_before_days: float = Field(30.0, gt=0)
    # How often certificates are looked at (renewal information, files of other replicas).
    check_interval_s: float = Field(43200.0, gt=0)
    # A failing CA is retried after retry_min_s, doubling up to retry_max_s.
    retry_min_s: float = Field(60.0, gt=0)
    retry_max_s: float = Field(86400.0, gt=0)

    @field_validator("directory")
    @classmethod
    def _check_directory(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"directory {value!r} must be an https:// URL")
        return value

    @field_validator("domains")
    @classmethod
    def _check_domains(cls, values: list[str]) -> list[str]:
        names = [normalise_host_pattern(value) for value in values]
        for name in names:
            if name.startswith("*."):
                raise ValueError(f"{name!r}: wildcards need dns-01, which the gateway lacks")
        return names

    @field_validator("ca_bundle")
    @classmethod
    def _check_bundle(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{str(path)!r} does not exist or is not a file")
        return path


class TimeoutSettings(_Section):
    """Backend timeouts, nginx-like defaults (proxy_connect/read/send_timeout)."""

    connect_s: float = Field(5.0, gt=0)
    read_s: float = Field(60.0, gt=0)
    write_s: float = Field(60.0, gt=0)
    pool_s: float = Field(5.0, gt=0)
    websocket_idle_s: float = Field(86400.0, gt=0)
    shutdown_grace_s: float = Field(10.0, ge=0)
    # Client side: the request head must arrive within header_s of the connection or of the
    # head's first byte (408, nginx client_header_timeout; listener-wide, not per route).
    header_s: float = Field(60.0, gt=0)
    # Client side: a TLS handshake must complete within tls_handshake_s of the connection,
    # else it is dropped (a flood of stalled handshakes holds each socket this long at most;
    # listener-wide, not per route).
    tls_handshake_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    # Client side: between two reads of the request body (408), and a whole request (504).
    body_s: float | None = Field(60.0, gt=0)
    # Client side: between two writes of the response body to a client that stopped
    # reading (the connection is cut; nginx send_timeout).
    send_s: float | None = Field(60.0, gt=0)
    request_s: float | None = Field(None, gt=0)


class ForwardingSettings(_Section):
    """Which forwarding headers the backend gets, and whose incoming ones are trusted."""

    trusted_proxies: list[IPNetwork] = Field(default_factory=list)
    x_forwarded: bool = True
    forwarded: bool = False
    via: bool = False
    rewrite_location: bool = True
    # Headers dropped from clients that are not trusted proxies: names some frameworks
    # and CDNs take as the client's address, scheme or URL. [] keeps them all.
    strip_client_headers: list[str] = Field(
        default_factory=lambda: sorted(n.decode() for n in CLIENT_TRUST_HEADERS)
    )
    # Header names with "_" are dropped (nginx: underscores_in_headers off).
    keep_underscore_headers: bool = False
    # The backend's Date and Server are replaced by the gateway's (as nginx does); true
    # passes them on, and the gateway adds none (its own answers then carry no Date).
    pass_date_server: bool = False

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        networks = []
        for item in value:
            try:
                networks.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
        return networks


class LimitSettings(_Section):
    """Limits on what clients send (413 body, 431 headers, 414 URL, 400 dot segments)."""

    max_body_bytes: int = Field(1024**3, ge=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_header_count: int = Field(100, ge=1)
    max_url_bytes: int = Field(8192, ge=256)
    # 400 for a path with a "." or ".." segment, literal or %2e-encoded (browsers and curl
    # never send one). False forwards such paths byte for byte, as routed without resolving.
    reject_dot_segments: bool = True
    # 400 for a path a backend may normalise into another: ";" parameters, backslashes,
    # encoded control characters, segments ending in a space or dot, overlong UTF-8,
    # fullwidth forms (gateway.path_rules). False forwards them byte for byte.
    reject_ambiguous_paths: bool = True


class HeaderSettings(_Section):
    """Header rules (nginx proxy_set_header / add_header / proxy_hide_header).

    Values may use ``$remote_addr``, ``$scheme``, ``$host``, ``$http_host``,
    ``$request_id`` and ``$request_uri``.
    """

    request_set: dict[str, str] = Field(default_factory=dict)
    request_add: dict[str, str] = Field(default_factory=dict)
    request_remove: list[str] = Field(default_factory=list)
    response_set: dict[str, str] = Field(default_factory=dict)
    response_add: dict[str, str] = Field(default_factory=dict)
    response_remove: list[str] = Field(default_factory=list)
    # Drop the backend's Server and X-Powered-By.
    hide_backend: bool = False
    # HSTS (TLS listeners only), X-Frame-Options SAMEORIGIN, nosniff, Referrer-Policy.
    security: bool = True
    hsts_max_age_s: int = Field(31536000, ge=0)


class OriginSettings(_Section):
    """Origin allowlist: always for WebSocket handshakes, optionally for HTTP methods."""

    # "same-origin", "*", exact origins, "https://*.example.com".
    allow: list[str] = Field(default_factory=lambda: ["same-origin"])
    # Requests without Origin come from non-browser clients.
    allow_missing: bool = True
    # State-changing HTTP methods to check too, e.g. ["POST", "PUT", "PATCH", "DELETE"].
    http_methods: list[str] = Field(default_factory=list)


class IPSettings(_Section):
    """Client address allow/deny lists (CIDR); deny wins, a non-empty allow is exclusive."""

    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)


class RateLimitSettings(_Section):
    """Token bucket per client IP (off unless rate_per_s is set), and connection limits per
    client IP (each on its own)."""

    rate_per_s: float | None = Field(None, gt=0)
    burst: int = Field(20, ge=1)
    per_route: bool = False
    max_concurrent_per_ip: int | None = Field(None, ge=1)
    max_websockets_per_ip: int | None = Field(None, ge=1)
    # Shared buckets for several replicas; None keeps them in this process.
    redis_url: str | None = None


class AuthSettings(_Section):
    """A simple gate: HTTP Basic users and/or bearer tokens (either one passes)."""

    # user -> hash from `gateway hash-password` (pbkdf2_sha256$iterations$salt$hash).
    basic_users: dict[str, str] = Field(default_factory=dict)
    # Tokens, or "sha256:<hex>" of a token so the file need not hold the secret.
    bearer_tokens: list[str] = Field(default_factory=list)
    realm: str = "gateway"
    forward_authorization: bool = False
    # Basic auth: failed attempts per client address within failure_window_s before 429,
    # checked before the (deliberately slow) password hash is computed.
    max_failures: int = Field(10, ge=1)
    failure_window_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _one_scheme(self) -> AuthSettings:
        if bool(self.basic_users) == bool(self.bearer_tokens):
            raise ValueError("set exactly one of basic_users and bearer_tokens")
        return self


class RequestIdSettings(_Section):
    """X-Request-ID: accepted when sane, else generated; sent to backend and client."""

    enabled: bool = True
    header: str = "x-request-id"
    trust_incoming: bool = True


class MiddlewareSpec(_Section):
    """A user middleware: ``"package.module:Class"`` called as ``Class(app, **options)``."""

    path: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        module, _, attribute = value.partition(":")
        if not module or not attribute:
            raise ValueError(f"{value!r} is not in the form 'package.module:Class'")
        return value


class HealthCheckSettings(_Section):
    """Active health probe of every target of an upstream."""

    path: str = "/healthz"
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    healthy_threshold: int = Field(2, ge=1)
    unhealthy_threshold: int = Field(3, ge=1)


class TargetSettings(_Section):
    """One backend instance: ``http(s)://host:port[/base]`` or ``unix:/path.sock[:/base]``."""

    url: str
    weight: int = Field(1, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        Target(value)  # raises ValueError naming what is wrong
        return value


class UpstreamSettings(_Section):
    """A named pool of targets (nginx ``upstream``); routes refer to it by name."""

    targets: list[TargetSettings] = Field(min_length=1)
    balance: Literal["round_robin", "least_conn", "ip_hash"] = "round_robin"
    # Passive health (nginx max_fails / fail_timeout).
    max_fails: int = Field(1, ge=0)
    fail_timeout_s: float = Field(10.0, gt=0)
    # Retries on the next target (nginx proxy_next_upstream_tries / _timeout).
    max_tries: int = Field(3, ge=1)
    try_timeout_s: float = Field(10.0, gt=0)
    health: HealthCheckSettings | None = None
    # TLS towards https targets: verified against the system CAs or this bundle.
    verify: bool = True
    ca_bundle: Path | None = None
    # Connection pool per target.
    max_connections: int = Field(512, ge=1)
    keepalive: int = Field(64, ge=0)
    keepalive_expiry_s: float = Field(60.0, gt=0)


class RouteSettings(_Section):
    """One route: requests under ``prefix`` go to ``upstream``.

    The optional sections replace the global ones of the same name for this route.
    """

    prefix: str = "/"
    # Host patterns ("example.com", "*.example.com"); empty: any host.
    hosts: list[str] = Field(default_factory=list)
    # Exactly one of: a backend URL, or a directory to serve (nginx root/index).
    upstream: str | None = None
    root: Path | None = None
    index: list[str] = Field(default_factory=lambda: ["index.html"])
    strip_prefix: bool = False
    # Match the prefix without regard to ASCII case (/admin takes /ADMIN/x): set it on a
    # guarded prefix in front of a backend that routes case-insensitively (Express).
    case_insensitive: bool = False
    # None keeps the client's Host header (nginx: proxy_set_header Host $http_host).
    host_header: str | None = None
    http: bool = True
    websocket: bool = True
    headers: HeaderSettings | None = None
    origin: OriginSettings | None = None
    ip: IPSettings | None = None
    rate_limit: RateLimitSettings | None = None
    auth: AuthSettings | None = None
    timeouts: TimeoutSettings | None = None
    limits: LimitSettings | None = None
    middleware: list[MiddlewareSpec] | None = None

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"prefix {value!r} must start with '/'")
        return value if value == "/" else value.rstrip("/")

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        if value is None or is_upstream_name(value):
            return value
        check_upstream_url(value)
        return value.rstrip("/")

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, values: list[str]) -> list[str]:
        return [normalise_host_pattern(value) for value in values]

    @field_validator("root")
    @classmethod
    def _check_root(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a directory")
        return value

    @model_validator(mode="after")
    def _upstream_or_root(self) -> RouteSettings:
        if (self.upstream is None) == (self.root is None):
            raise ValueError("set exactly one of upstream (a backend URL) and root (a directory)")
        return self


class WebSocketSettings(_Section):
    """WebSocket bridge settings (the Origin allowlist is [origin])."""

    max_message_bytes: int = Field(1024 * 1024, ge=1)
    ping_interval_s: float | None = Field(20.0, gt=0)
    ping_timeout_s: float | None = Field(20.0, gt=0)
    # permessage-deflate with clients. max_message_bytes bounds a message after
    # decompression (a 1 KB frame may inflate to 1 MiB, never more); false turns it off
    # (no inflation work at all, more bytes on the wire).
    compression: bool = True
    # Copy frames between the legs without decoding them (as nginx does) when neither
    # leg negotiated an extension - a client that offers no compression, or compression
    # = false: a fraction of the CPU per message. Limits, idle timeout, pings and close
    # codes still apply; UTF-8 of text messages is left to the endpoints. false: every
    # message goes through the bridge (parsed, checked, framed again).
    relay: bool = True


class LogSettings(_Section):
    """Logging."""

    level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False
    access_format: Literal["combined", "json"] = "combined"


class AdminSettings(_Section):
    """The admin listener: /healthz, /readyz, /metrics, /status (keep it internal)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9901, ge=0, le=65535)
    # Host names the admin answers besides IP addresses and localhost (DNS rebinding guard).
    allowed_hosts: list[str] = Field(default_factory=list)
    # /readyz: "backends" is not ready (503) while a route has no usable target (down by
    # its health check or by recent failures); "process" is ready once settings are loaded.
    readiness: Literal["backends", "process"] = "backends"


class Settings(BaseSettings):
    """The whole configuration of one gateway."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    listen: ListenSettings = ListenSettings()
    tls: TLSSettings = TLSSettings()
    http2: Http2Settings = Http2Settings()
    certificates: list[CertificateSettings] = Field(default_factory=list)
    acme: AcmeSettings | None = None
    routes: list[RouteSettings] = Field(
        default_factory=lambda: [RouteSettings(prefix="/", upstream="http://127.0.0.1:8080")]
    )
    timeouts: TimeoutSettings = TimeoutSettings()
    forwarding: ForwardingSettings = ForwardingSettings()
    limits: LimitSettings = LimitSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    upstreams: dict[str, UpstreamSettings] = Field(default_factory=dict)
    headers: HeaderSettings = HeaderSettings()
    origin: OriginSettings = OriginSettings()
    ip: IPSettings = IPSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    auth: AuthSettings | None = None
    request_id: RequestIdSettings = RequestIdSettings()
    middleware: list[MiddlewareSpec] = Field(default_factory=list)
    log: LogSettings = LogSettings()
    admin: AdminSettings = AdminSettings()

    @field_validator("routes")
    @classmethod
    def _check_routes(cls, routes: list[RouteSettings]) -> list[RouteSettings]:
        if not routes:
            raise ValueError("at least one route is needed")
        seen: set[tuple[str, tuple[str, ...]]] = set()
        for route in routes:
            key = (route.prefix, tuple(sorted(route.hosts)))
            if key in seen:
                hosts = f" for hosts {route.hosts}" if route.hosts else ""
                raise ValueError(f"prefix {route.prefix!r}{hosts} appears twice")
            seen.add(key)
        return routes

    @model_validator(mode="after")
    def _check_certificates(self) -> Settings:
        if self.certificates and not self.listen.tls:
            raise ValueError("certificates: served on the TLS listener: set listen.tls = true")
        acme = self.acme
        if acme is None:
            return self
        if not self.listen.tls:
            raise ValueError("acme: certificates need listen.tls = true")
        if "http-01" in acme.challenges and self.listen.redirect_port is None:
            raise ValueError("acme.challenges: http-01 is answered on listen.redirect_port: set it")
        if not acme.domains and not any(
            not host.startswith("*.") for route in self.routes for host in route.hosts
        ):
            raise ValueError("acme: no domains: set acme.domains, or routes[].hosts")
        return self

    @model_validator(mode="after")
    def _check_upstream_names(self) -> Settings:
        for index, route in enumerate(self.routes):
            name = route.upstream
            if name is not None and is_upstream_name(name) and name not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none defined"
                raise ValueError(f"routes.{index}.upstream: no [upstreams.{name}] ({known})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init arguments; the environment wins over it.
        return (env_settings, init_settings)


def default_settings_path() -> Path | None:
    """The file named by ``GATEWAY_CONFIG``, else None (built-in defaults)."""
    value = os.environ.get(CONFIG_ENV)
    return Path(value) if value else None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate settings from ``path`` (TOML) and the environment.

    Relative certificate paths are resolved against the file's folder.  Raises
    ConfigError with one line per problem.
    """
    source = Path(path) if path is not None else default_settings_path()
    data: dict[str, Any] = {}
    text = ""
    if source is not None:
        text = _read_text(source)
        data = _parse_toml(source, text)
        _resolve_paths(data, source.parent)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(source, text, exc)) from None


def settings_from(data: dict[str, Any], where: str) -> Settings:
    """Settings from ``data`` built by a command (``where`` names it in problems) and the
    environment. Raises ConfigError with one line per problem."""
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(None, "", exc, where)) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file names in the file are relative to the file's folder (like nginx)."""

    def resolve(table: Any, *keys: str) -> None:
        if not isinstance(table, dict):
            return
        for key in keys:
            value = table.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                table[key] = str(base / value)

    resolve(data.get("listen"), "certfile", "keyfile")
    certificates = data.get("certificates")
    for certificate in certificates if isinstance(certificates, list) else []:
        resolve(certificate, "certfile", "keyfile")
    resolve(data.get("acme"), "ca_bundle", "storage")
    routes = data.get("routes")
    for route in routes if isinstance(routes, list) else []:
        resolve(route, "root")


def _describe(
    source: Path | None, text: str, exc: ValidationError, origin: str = "environment"
) -> list[str]:
    """One line per problem, naming where the value came from: the environment variable
    that set it, else the file and line (or the file alone where the line is unknown),
    else ``origin``."""
    problems = []
    for error in exc.errors(include_url=False):
        location = error["loc"]
        key = ".".join(str(part) for part in location)
        if error["type"] == "extra_forbidden":
            known = field_names_at(Settings, location)
            message = "unknown key" + suggestion(str(location[-1]), known)
        else:
            message = error["msg"].removeprefix("Value error, ")
        variable = env_variable_for(location, os.environ) if location else None
        if variable is not None:
            where = variable
        elif source is not None:
            line = line_of(text, location) if location else None
            where = f"{source}:{line}" if line else str(source)
        else:
            where = origin
        # Checks across sections name their keys in the message themselves.
        problems.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")
    return problems


def to_toml(settings: Settings) -> str:
    """The effective settings as TOML that ``load_settings`` reads back."""
    data = settings.model_dump(mode="json", exclude_none=True)
    # Plain keys first: after a [table] header they would belong to that table.
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not _is_table(value)]
    for section, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{section}]", *_toml_pairs(value)]
        elif _is_table(value):
            for item in value:
                lines += ["", f"[[{section}]]", *_toml_pairs(item)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and isinstance(value[0], dict)
    )


def _toml_pairs(table: dict[str, Any]) -> list[str]:
    return [f"{key} = {_toml_value(value)}" for key, value in table.items() if value is not None]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{json.dumps(key)} = {_toml_value(item)}" for key, item in value.items())
        return "{ " + ", ".join(pairs) + " }" if value else "{}"
    return json.dumps(str(value))
