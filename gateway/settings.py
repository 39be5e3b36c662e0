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

__all__ = [
    "ConfigError",
    "ForwardingSettings",
    "LimitSettings",
    "ListenSettings",
    "RouteSettings",
    "Settings",
    "TimeoutSettings",
    "WebSocketSettings",
    "default_settings_path",
    "load_settings",
    "to_toml",
]

CONFIG_ENV = "GATEWAY_CONFIG"
UPSTREAM_SCHEMES = ("http", "https")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
        return self


class RouteSettings(_Section):
    """One route: requests under ``prefix`` go to ``upstream``."""

    prefix: str = "/"
    upstream: str
    strip_prefix: bool = False
    # None keeps the client's Host header (nginx: proxy_set_header Host $http_host).
    host_header: str | None = None
    http: bool = True
    websocket: bool = True

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"prefix {value!r} must start with '/'")
        return value if value == "/" else value.rstrip("/")

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        check_upstream_url(value)
        return value.rstrip("/")


def check_upstream_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL without query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in UPSTREAM_SCHEMES:
        raise ValueError(
            f"upstream {url!r}: unsupported scheme {parts.scheme!r} (use http or https)"
        )
    if not parts.hostname:
        raise ValueError(f"upstream {url!r}: no host")
    if parts.query or parts.fragment:
        raise ValueError(f"upstream {url!r}: must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"upstream {url!r}: {exc}") from None


class TimeoutSettings(_Section):
    """Backend timeouts, nginx-like defaults (proxy_connect/read/send_timeout)."""

    connect_s: float = Field(5.0, gt=0)
    read_s: float = Field(60.0, gt=0)
    write_s: float = Field(60.0, gt=0)
    pool_s: float = Field(5.0, gt=0)
    websocket_idle_s: float = Field(86400.0, gt=0)
    shutdown_grace_s: float = Field(10.0, ge=0)


class ForwardingSettings(_Section):
    """Which forwarding headers the backend gets, and whose incoming ones are trusted."""

    trusted_proxies: list[IPNetwork] = Field(default_factory=list)
    x_forwarded: bool = True
    forwarded: bool = False
    via: bool = False
    rewrite_location: bool = True

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
    """Size limits on what clients send."""

    max_body_bytes: int = Field(1024**3, ge=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)


class WebSocketSettings(_Section):
    """WebSocket bridge settings."""

    # Allowed Origin values: "same-origin", "*", exact origins, "https://*.example.com".
    origins: list[str] = Field(default_factory=lambda: ["same-origin"])
    allow_missing_origin: bool = True
    max_message_bytes: int = Field(1024 * 1024, ge=1)
    ping_interval_s: float | None = Field(20.0, gt=0)
    ping_timeout_s: float | None = Field(20.0, gt=0)


class LogSettings(_Section):
    """Logging."""

    level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False


class Settings(BaseSettings):
    """The whole configuration of one gateway."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    listen: ListenSettings = ListenSettings()
    routes: list[RouteSettings] = Field(
        default_factory=lambda: [RouteSettings(prefix="/", upstream="http://127.0.0.1:8080")]
    )
    timeouts: TimeoutSettings = TimeoutSettings()
    forwarding: ForwardingSettings = ForwardingSettings()
    limits: LimitSettings = LimitSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    log: LogSettings = LogSettings()

    @field_validator("routes")
    @classmethod
    def _check_routes(cls, routes: list[RouteSettings]) -> list[RouteSettings]:
        if not routes:
            raise ValueError("at least one route is needed")
        seen: set[str] = set()
        for route in routes:
            if route.prefix in seen:
                raise ValueError(f"prefix {route.prefix!r} appears twice")
            seen.add(route.prefix)
        return routes

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
    where = "environment" if source is None else str(source)
    if source is not None:
        data = _read_toml(source)
        _resolve_paths(data, source.parent)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(where, exc)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    listen = data.get("listen")
    if not isinstance(listen, dict):
        return
    for key in ("certfile", "keyfile"):
        value = listen.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            listen[key] = str(base / value)


def _describe(where: str, exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {key}: {message}")
    return problems


def to_toml(settings: Settings) -> str:
    """The effective settings as TOML that ``load_settings`` reads back."""
    data = settings.model_dump(mode="json")
    lines: list[str] = []
    for section, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines += ["", f"[[{section}]]", *_toml_pairs(item)]
        elif isinstance(value, dict):
            lines += ["", f"[{section}]", *_toml_pairs(value)]
        else:
            lines.append(f"{section} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_pairs(table: dict[str, Any]) -> list[str]:
    return [f"{key} = {_toml_value(value)}" for key, value in table.items() if value is not None]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))
