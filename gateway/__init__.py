"""A TLS-terminating HTTP and WebSocket reverse proxy, as an ASGI application.

Public surface (imported on first use, so that ``from gateway import ReverseProxy`` loads
neither the settings loader, the metrics, Redis nor cryptography)::

    from gateway import ReverseProxy, WebSocketProxy    # the proxies (mount them anywhere)
    from gateway import Upstream, Target, HealthCheck   # several targets, balancing, health
    from gateway import create_app, load_settings, Settings   # the whole gateway
    from gateway import GatewayError, ConfigError, MissingExtra   # exceptions

The middleware classes are in ``gateway.middleware``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import create_app
    from gateway.errors import ConfigError, GatewayError, MissingExtra
    from gateway.proxy.http import ReverseProxy
    from gateway.proxy.websocket import WebSocketProxy
    from gateway.settings import Settings, load_settings
    from gateway.upstream import HealthCheck, Target, Upstream

__all__ = [
    "ConfigError",
    "GatewayError",
    "HealthCheck",
    "MissingExtra",
    "ReverseProxy",
    "Settings",
    "Target",
    "Upstream",
    "WebSocketProxy",
    "create_app",
    "load_settings",
]
__version__ = "0.1.0"

_WHERE = {
    "ConfigError": "gateway.errors",
    "GatewayError": "gateway.errors",
    "MissingExtra": "gateway.errors",
    "HealthCheck": "gateway.upstream",
    "Target": "gateway.upstream",
    "Upstream": "gateway.upstream",
    "ReverseProxy": "gateway.proxy.http",
    "WebSocketProxy": "gateway.proxy.websocket",
    "Settings": "gateway.settings",
    "load_settings": "gateway.settings",
    "create_app": "gateway.app",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
