"""A TLS-terminating HTTP and WebSocket reverse proxy as an ASGI application.

Public surface::

    from gateway import create_app, load_settings, ReverseProxy, WebSocketProxy, Settings
"""

from gateway.app import create_app
from gateway.proxy.http import ReverseProxy
from gateway.proxy.websocket import WebSocketProxy
from gateway.settings import ConfigError, Settings, load_settings

__all__ = [
    "ConfigError",
    "ReverseProxy",
    "Settings",
    "WebSocketProxy",
    "create_app",
    "load_settings",
]
__version__ = "0.1.0"
