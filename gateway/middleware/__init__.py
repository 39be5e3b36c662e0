"""The gateway's pure-ASGI middleware, each usable on its own in any ASGI app
(imported on first use)::

    from gateway.middleware import OriginCheckMiddleware, HeadersMiddleware, security_headers
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.middleware.access_log import AccessLogMiddleware
    from gateway.middleware.auth import BasicAuthMiddleware, BearerTokenMiddleware
    from gateway.middleware.headers import HeadersMiddleware, security_headers
    from gateway.middleware.ipfilter import IPFilterMiddleware
    from gateway.middleware.limits import RequestLimitsMiddleware
    from gateway.middleware.origin import OriginCheckMiddleware
    from gateway.middleware.ratelimit import MemoryStore, RateLimitMiddleware
    from gateway.middleware.ratelimit_redis import RedisStore
    from gateway.middleware.request_id import RequestIdMiddleware
    from gateway.middleware.timeouts import TimeoutsMiddleware

_WHERE = {
    "AccessLogMiddleware": "access_log",
    "BasicAuthMiddleware": "auth",
    "BearerTokenMiddleware": "auth",
    "HeadersMiddleware": "headers",
    "security_headers": "headers",
    "IPFilterMiddleware": "ipfilter",
    "RequestLimitsMiddleware": "limits",
    "OriginCheckMiddleware": "origin",
    "MemoryStore": "ratelimit",
    "RateLimitMiddleware": "ratelimit",
    "RedisStore": "ratelimit_redis",  # needs the redis extra
    "RequestIdMiddleware": "request_id",
    "TimeoutsMiddleware": "timeouts",
}
__all__ = [
    "AccessLogMiddleware",
    "BasicAuthMiddleware",
    "BearerTokenMiddleware",
    "HeadersMiddleware",
    "IPFilterMiddleware",
    "MemoryStore",
    "OriginCheckMiddleware",
    "RateLimitMiddleware",
    "RedisStore",
    "RequestIdMiddleware",
    "RequestLimitsMiddleware",
    "TimeoutsMiddleware",
    "security_headers",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.middleware' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gateway.middleware.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
