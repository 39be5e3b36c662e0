"""Header rules: set, add and remove request and response headers, like nginx.

``request_*`` rules change the headers the wrapped app (the proxy, so the backend)
receives - nginx ``proxy_set_header``; ``response_*`` rules change the headers the
client receives - nginx ``add_header`` and ``proxy_hide_header``.  They apply in the
order remove, set, add:

- ``*_remove``: names to drop;
- ``*_set``: ``{name: template}``; replaces every header of that name, and an empty
  result drops it (as in nginx, so ``"$request_id"`` without a request id sends none);
- ``*_add``: ``{name: template}`` or ``(name, template)`` pairs, appended (empty
  results are skipped).

Templates are text with variables, compiled once at construction (an unknown
variable is a ``ValueError`` naming it): ``$remote_addr`` (the client: a trusted-proxy
layer's ``scope["state"]["client_ip"]`` when set, else the peer address),
``$scheme`` (``http``/``https``, also for WebSockets), ``$host`` (Host without port,
lower-case), ``$http_host`` (Host as sent), ``$request_id`` (from
``RequestIdMiddleware``, which must run further out) and ``$request_uri`` (path and
query as sent).  ``${name}`` separates a variable from following letters; a ``$``
not followed by a name is literal.

Strict-Transport-Security from these rules is only sent over TLS (``https``/``wss``
scope; RFC 6797 7.2).  WebSocket handshakes get the request rules, and a refused
handshake's HTTP response the response rules.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "VARIABLES",
    "HeaderRules",
    "HeadersMiddleware",
    "Template",
    "apply_rules",
    "render",
    "request_variables",
    "security_headers",
]

Headers = list[tuple[bytes, bytes]]
HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]

VARIABLES = frozenset({"remote_addr", "scheme", "host", "http_host", "request_id", "request_uri"})
HSTS = b"strict-transport-security"
BACKEND_IDENTITY = (b"server", b"x-powered-by")
# Rewriting these would break the body's framing between client, app and backend.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VARIABLE_RE = re.compile(
    r"\$(?:\{(?P<braced>[^{}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<unclosed>\{))"
)
_FORBIDDEN_CHARS_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled header value: literals at even indexes of ``parts``, variables at odd."""

    source: str
    parts: tuple[str, ...]

    @classmethod
    def compile(cls, source: str, *, key: str = "template") -> Template:
        """Parse ``source``; ``ValueError`` naming ``key`` and an unknown variable."""
        if _FORBIDDEN_CHARS_RE.search(source):
            raise ValueError(f"{key}: control characters in {source!r}")
        try:
            source.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"{key}: {source!r} is not latin-1 text") from None
        parts: list[str] = []
        position = 0
        for match in _VARIABLE_RE.finditer(source):
            if match["unclosed"] is not None:
                raise ValueError(f"{key}: unclosed '${{' in {source!r}")
            name = match["braced"] if match["braced"] is not None else match["bare"]
            if name not in VARIABLES:
                known = ", ".join(f"${known}" for known in sorted(VARIABLES))
                raise ValueError(
                    f"{key}: unknown variable {match[0]} in {source!r} (known: {known})"
                )
            parts += [source[position : match.start()], name]
            position = match.end()
        parts.append(source[position:])
        return cls(source, tuple(parts))

    @property
    def variables(self) -> frozenset[str]:
        """The variable names the template uses."""
        return frozenset(self.parts[1::2])


def render(template: Template, variables: Mapping[str, str]) -> str:
    """The template's text with each variable replaced by its value in ``variables``."""
    parts = template.parts
    if len(parts) == 1:
        return parts[0]
    return "".join(part if index % 2 == 0 else variables[part] for index, part in enumerate(parts))


def _header_name(name: str, key: str) -> bytes:
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"{key}: {name!r} is not a valid header name")
    lowered = name.lower().encode("ascii")
    if lowered in _FRAMING:
        raise ValueError(f"{key}: {name} cannot be changed (it frames the body)")
    return lowered


def _compile_items(items: HeaderItems, key: str) -> tuple[tuple[bytes, Template], ...]:
    pairs = items.items() if isinstance(items, Mapping) else items
    return tuple(
        (_header_name(name, key), Template.compile(value, key=f"{key}[{name!r}]"))
        for name, value in pairs
    )


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """Compiled rules for one direction; build them with ``HeaderRules.compile``."""

    remove: frozenset[bytes] = frozenset()
    set: tuple[tuple[bytes, Template], ...] = ()
    add: tuple[tuple[bytes, Template], ...] = ()
    # Worked out once from the three above: the names to drop (removed or set) and, when
    # no template uses a variable, the finished headers to append.
    drop: frozenset[bytes] = field(init=False, repr=False, compare=False)
    fixed: tuple[tuple[bytes, bytes], ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "drop", self.remove.union(name for name, _ in self.set))
        fixed = None if self.variables else tuple(_rendered(self.set + self.add, {}))
        object.__setattr__(self, "fixed", fixed)

    @classmethod
    def compile(
        cls,
        *,
        set: HeaderItems = (),
        add: HeaderItems = (),
        remove: Iterable[str] = (),
        key: str = "headers",
    ) -> HeaderRules:
        """Validate names and templates; ``ValueError`` names ``key`` and the culprit."""
        set_rules = _compile_items(set, f"{key}_set")
        names = [name for name, _ in set_rules]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"{key}_set: {name.decode()} is set twice")
        return cls(
            remove=frozenset(_header_name(name, f"{key}_remove") for name in remove),
            set=set_rules,
            add=_compile_items(add, f"{key}_add"),
        )

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)

    @property
    def variables(self) -> frozenset[str]:
        """Every variable the rules use."""
        return frozenset[str]().union(*(template.variables for _, template in self.set + self.add))

    def without(self, name: bytes) -> HeaderRules:
        """These rules minus every set/add of ``name`` (removals stay)."""
        keep = tuple(rule for rule in self.set if rule[0] != name)
        return replace(self, set=keep, add=tuple(rule for rule in self.add if rule[0] != name))


def _rendered(
    rules: Iterable[tuple[bytes, Template]], variables: Mapping[str, str]
) -> list[tuple[bytes, bytes]]:
    """The headers ``rules`` make with ``variables``; an empty value makes none."""
    out = []
    for name, template in rules:
        value = render(template, variables)
        if value:
            out.append((name, value.encode("latin-1")))
    return out


def apply_rules(
    headers: Iterable[tuple[bytes, bytes]], rules: HeaderRules, variables: Mapping[str, str]
) -> Headers:
    """``headers`` after the rules' remove, set and add, with ``variables`` rendered."""
    drop = rules.drop
    out = [(name, value) for name, value in headers if name.lower() not in drop]
    out += rules.fixed if rules.fixed is not None else _rendered(rules.set + rules.add, variables)
    return out


def _host_header(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            return str(value.decode("latin-1"))
    server = scope.get("server")
    return str(server[0]) if server else ""


def _host_without_port(scope: Scope) -> str:
    host = _host_header(scope).lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def _remote_addr(scope: Scope) -> str:
    client_ip = scope.get("state", {}).get("client_ip")
    if client_ip:
        return str(client_ip)
    client = scope.get("client")
    return str(client[0]) if client else ""


def _request_uri(scope: Scope) -> str:
    path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    if scope.get("query_string"):
        path += b"?" + scope["query_string"]
    return path.decode("latin-1")


_VARIABLE_VALUES: dict[str, Callable[[Scope], str]] = {
    "remote_addr": _remote_addr,
    "scheme": lambda scope: "https" if scope.get("scheme") in ("https", "wss") else "http",
    "host": _host_without_port,
    "http_host": _host_header,
    "request_id": lambda scope: str(scope.get("state", {}).get("request_id", "")),
    "request_uri": _request_uri,
}


def request_variables(scope: Scope, names: Collection[str]) -> dict[str, str]:
    """The values of the template variables ``names`` for the request in ``scope``."""
    return {name: _VARIABLE_VALUES[name](scope) for name in names}


def security_headers(
    *, hsts_max_age_s: int = 31_536_000, tls: bool, hsts_include_subdomains: bool = False
) -> dict[str, str]:
    """``response_set`` entries of common browser hardening headers.

    ``tls=True`` includes HSTS, which ``HeadersMiddleware`` still sends only on
    requests that arrived over TLS; ``tls=False`` leaves it out altogether.
    """
    if isinstance(hsts_max_age_s, bool) or not isinstance(hsts_max_age_s, int):
        raise ValueError(f"hsts_max_age_s: {hsts_max_age_s!r} is not a whole number")
    if hsts_max_age_s < 0:
        raise ValueError(f"hsts_max_age_s: {hsts_max_age_s} is negative")
    entries: dict[str, str] = {}
    if tls:
        hsts = f"max-age={hsts_max_age_s}"
        entries["Strict-Transport-Security"] = (
            hsts + "; includeSubDomains" if hsts_include_subdomains else hsts
        )
    entries["X-Frame-Options"] = "SAMEORIGIN"
    entries["X-Content-Type-Options"] = "nosniff"
    entries["Referrer-Policy"] = "strict-origin-when-cross-origin"
    return entries


class HeadersMiddleware:
    """Apply header rules to requests (towards the app) and responses (to the client).

    ``hide_backend=True`` also removes the backend's ``Server`` and ``X-Powered-By``
    (the server's own ``Server`` header, uvicorn's ``server_header``, is its setting).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        request_set: HeaderItems = (),
        request_add: HeaderItems = (),
        request_remove: Iterable[str] = (),
        response_set: HeaderItems = (),
        response_add: HeaderItems = (),
        response_remove: Iterable[str] = (),
        hide_backend: bool = False,
    ) -> None:
        self.app = app
        self.request_rules = HeaderRules.compile(
            set=request_set, add=request_add, remove=request_remove, key="request"
        )
        response_rules = HeaderRules.compile(
            set=response_set, add=response_add, remove=response_remove, key="response"
        )
        if hide_backend:
            response_rules = replace(
                response_rules, remove=response_rules.remove.union(BACKEND_IDENTITY)
            )
        # Both variants are ready so that the per-request choice costs nothing.
        self.response_rules_tls = response_rules
        self.response_rules_plain = response_rules.without(HSTS)
        self._variables = self.request_rules.variables | response_rules.variables

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Most rule sets (the security preset) use no variables: skip building them.
        variables = request_variables(scope, self._variables) if self._variables else {}
        if self.request_rules:
            headers = apply_rules(scope["headers"], self.request_rules, variables)
            scope = {**scope, "headers": headers}
        secure = scope.get("scheme") in ("https", "wss")
        rules = self.response_rules_tls if secure else self.response_rules_plain
        if not rules:
            await self.app(scope, receive, send)
            return

        # Returns send's awaitable: no coroutine frame of its own per relayed message.
        def send_with_rules(message: Message) -> Awaitable[None]:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                headers = apply_rules(message.get("headers", ()), rules, variables)
                message = {**message, "headers": headers}
            return send(message)

        await self.app(scope, receive, send_with_rules)
