"""Settings -> the middleware stack in front of each route's proxies, in one fixed order.

Outermost first::

    request id          (app level, so every answer - also a 404 - carries it)
    IP filter           403 before anything else is spent on the client
    rate limit          429 with Retry-After; connection limits
    auth                401 (Basic or Bearer)
    origin              403 for foreign Origins on WebSocket handshakes (and chosen methods)
    headers             request/response rules, security preset (also on the answers below)
    size limits         413 / 431 / 414 before the backend sees the request
    timeouts            408 slow body, 504 whole request
    user middleware     settings' ``middleware = [...]``, in the order given
    proxy               ReverseProxy (HTTP) or WebSocketProxy (upgrades)

A route's own section (``[routes.headers]``, ...) replaces the global one for that route.
Construction errors become ConfigError lines naming the key.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.types import ASGIApp

from gateway.errors import MissingExtra
from gateway.middleware.auth import BasicAuthMiddleware, BearerTokenMiddleware
from gateway.middleware.headers import HeadersMiddleware, security_headers
from gateway.middleware.ipfilter import IPFilterMiddleware
from gateway.middleware.limits import RequestLimitsMiddleware
from gateway.middleware.origin import OriginCheckMiddleware
from gateway.middleware.ratelimit import MemoryStore, RateLimitMiddleware, RateStore
from gateway.middleware.timeouts import TimeoutsMiddleware
from gateway.settings import (
    ConfigError,
    MiddlewareSpec,
    RateLimitSettings,
    RouteSettings,
    Settings,
)

__all__ = ["StackBuilder", "load_middleware"]

T = TypeVar("T")


def load_middleware(path: str) -> Callable[..., ASGIApp]:
    """The middleware class named by ``"package.module:Class"``."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attribute!r}") from None
    if not callable(factory):
        raise ValueError(f"{path!r} is not callable")
    return factory  # type: ignore[no-any-return]


class StackBuilder:
    """Builds each route's stack; collects problems instead of stopping at the first."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.problems: list[str] = []
        self.stores: list[RateStore] = []
        self._global_store: RateStore | None = None

    def check(self) -> None:
        """Raise ConfigError if any construction failed."""
        if self.problems:
            # A route builds its stack twice (HTTP and WebSocket): report each problem once.
            raise ConfigError(list(dict.fromkeys(self.problems)))

    def make(self, key: str, factory: Callable[[], T]) -> T | None:
        """``factory()``, or None with the problem recorded under ``key``."""
        try:
            return factory()
        except (ValueError, TypeError, MissingExtra) as exc:
            self.problems.append(f"{key}: {exc}")
            return None

    def layer(
        self, app: ASGIApp, where: str, middleware: Callable[..., ASGIApp], /, **options: Any
    ) -> ASGIApp:
        """``middleware(app, **options)``; a bad option is recorded under the key ``where``."""
        return self.make(where, lambda: middleware(app, **options)) or app

    def wrap(
        self, app: ASGIApp, route: RouteSettings, index: int, *, websocket: bool = False
    ) -> ASGIApp:
        """``app`` (a route's HTTP proxy, or with ``websocket`` its bridge) in the route's stack.

        Layers that do nothing for the kind of scope ``app`` serves are left out (they
        are still built, so that their settings are checked).
        """
        s = self.settings

        def own(name: str) -> str:
            # Problems name the section that was used: the route's own or the global one.
            return f"routes.{index}.{name}" if getattr(route, name) is not None else name

        for number, spec in reversed(list(enumerate(route.middleware or s.middleware))):
            app = self._user(app, spec, f"{own('middleware')}.{number}")

        if not websocket:  # client-side HTTP deadlines; a session has its idle timeout
            timeouts = route.timeouts or s.timeouts
            app = TimeoutsMiddleware(
                app,
                body_timeout_s=timeouts.body_s,
                request_timeout_s=timeouts.request_s,
                send_timeout_s=timeouts.send_s,
            )
        limits = route.limits or s.limits
        app = RequestLimitsMiddleware(
            app,
            max_body_bytes=limits.max_body_bytes or None,
            max_header_count=limits.max_header_count,
            max_header_bytes=limits.max_header_bytes,
            max_url_bytes=limits.max_url_bytes,
        )
        headers = route.headers or s.headers
        response_set = dict(
            security_headers(hsts_max_age_s=headers.hsts_max_age_s, tls=s.listen.tls)
            if headers.security
            else {}
        )
        response_set.update(headers.response_set)
        app = self.layer(
            app,
            own("headers"),
            HeadersMiddleware,
            request_set=headers.request_set,
            request_add=headers.request_add,
            request_remove=headers.request_remove,
            response_set=response_set,
            response_add=headers.response_add,
            response_remove=headers.response_remove,
            hide_backend=headers.hide_backend,
        )
        origin = route.origin or s.origin
        checked = self.layer(
            app,
            own("origin"),
            OriginCheckMiddleware,
            allow=origin.allow,
            allow_missing=origin.allow_missing,
            methods=origin.http_methods,
        )
        if websocket or origin.http_methods:  # HTTP requests: only the chosen methods
            app = checked
        auth = route.auth or s.auth
        if auth is not None:
            # Settings allow exactly one of the two schemes.
            gate, credentials = (
                (
                    BasicAuthMiddleware,
                    {
                        "users": auth.basic_users,
                        "max_failures": auth.max_failures,
                        "failure_window_s": auth.failure_window_s,
                    },
                )
                if auth.basic_users
                else (BearerTokenMiddleware, {"tokens": auth.bearer_tokens})
            )
            app = self.layer(
                app,
                own("auth"),
                gate,
                realm=auth.realm,
                forward_authorization=auth.forward_authorization,
                **credentials,
            )
        limit = route.rate_limit or s.rate_limit
        if (
            limit.rate_per_s is not None
            or limit.max_concurrent_per_ip is not None
            or limit.max_websockets_per_ip is not None
        ):
            app = self._rate_limit(app, limit, route, own("rate_limit"))
        ip = route.ip or s.ip
        if ip.allow or ip.deny:
            app = self.layer(
                app,
                own("ip"),
                IPFilterMiddleware,
                allow=ip.allow,
                deny=ip.deny,
                trusted_proxies=tuple(s.forwarding.trusted_proxies),
            )
        return app

    def _rate_limit(
        self, app: ASGIApp, limit: RateLimitSettings, route: RouteSettings, key: str
    ) -> ASGIApp:
        # Connection limits alone need no token store (nor Redis).
        store = self._store(limit, key) if limit.rate_per_s is not None else MemoryStore()
        if store is None:
            return app
        return self.layer(
            app,
            key,
            RateLimitMiddleware,
            rate_per_s=limit.rate_per_s,
            burst=limit.burst,
            key="ip+route" if limit.per_route else "ip",
            route=route.prefix,
            store=store,
            max_concurrent_per_ip=limit.max_concurrent_per_ip,
            max_websockets_per_ip=limit.max_websockets_per_ip,
            trusted_proxies=tuple(self.settings.forwarding.trusted_proxies),
        )

    def _store(self, limit: RateLimitSettings, key: str) -> RateStore | None:
        # Routes using the global section share one store: one budget per client.
        shared = limit is self.settings.rate_limit
        if shared and self._global_store is not None:
            return self._global_store
        store: RateStore | None
        if limit.redis_url:
            url = limit.redis_url
            store = self.make(f"{key}.redis_url", lambda: redis_store(url))
        else:
            store = MemoryStore()
        if store is not None:
            self.stores.append(store)
            if shared:
                self._global_store = store
        return store

    def _user(self, app: ASGIApp, spec: MiddlewareSpec, key: str) -> ASGIApp:
        factory = self.make(f"{key}.path", lambda: load_middleware(spec.path))
        if factory is None:
            return app
        return self.layer(app, f"{key}.options", factory, **spec.options)


def redis_store(url: str) -> RateStore:
    """A shared token store in Redis; the Redis client is imported only now (an extra)."""
    try:
        from gateway.middleware.ratelimit_redis import RedisStore
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "redis":
            raise MissingExtra("a shared Redis store", "redis", "redis") from None
        raise
    return RedisStore(url)
