"""``proxy_set_header``, ``add_header``, ``proxy_hide_header``, ``expires`` -> ``[headers]``.

Recognised as what the gateway does anyway (no settings needed): ``X-Real-IP
$remote_addr``, ``X-Forwarded-For $proxy_add_x_forwarded_for`` (or ``$remote_addr``),
``X-Forwarded-Proto $scheme``, ``X-Forwarded-Host $host``; ``Host $http_host``/``$host``
(keep the client's Host); the WebSocket pair ``Upgrade $http_upgrade`` + ``Connection
$connection_upgrade``/``"upgrade"``; ``Connection ""`` (backend keep-alive); and
``add_header`` lines equal to the gateway's security preset.  Other headers become
``request_set`` / ``response_set`` templates, with nginx variables mapped to the
gateway's (``$remote_addr $scheme $host $http_host $request_id $request_uri``) or to
fixed text where they are fixed (``$server_port``, ``$server_name``, ``$proxy_host``,
``$https``); a header using any other variable is reported and left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.nginx.context import Recorder, Scope
from gateway.nginx.notes import APPROXIMATED, INFO, NOT_NEEDED, UNSUPPORTED
from gateway.nginx.parser import Directive
from gateway.nginx.values import parse_time_s, translate_variables

__all__ = ["ProxyHeaders", "proxy_headers", "response_headers"]

_KEEP_HOST = frozenset({"$http_host", "${http_host}", "$host", "${host}"})
_FORWARDING_DEFAULTS = {
    "x-real-ip": {"$remote_addr"},
    "x-forwarded-for": {"$proxy_add_x_forwarded_for", "$remote_addr"},
    "x-forwarded-proto": {"$scheme"},
    "x-forwarded-host": {"$host", "$http_host", "$server_name"},
}
_PRESET = {
    "x-frame-options": "sameorigin",
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
}
_BACKEND_IDENTITY = frozenset({"server", "x-powered-by"})
_WEBSOCKET_IDIOM = "the WebSocket idiom (with Upgrade and Connection): websocket = true"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding"})


@dataclass
class ProxyHeaders:
    """What a location's ``proxy_set_header`` lines come to."""

    request: dict[str, Any] = field(default_factory=dict)
    host_header: str | None = None
    # The Host line that set host_header; None when it is nginx's default ($proxy_host).
    host_directive: Directive | None = None
    websocket: bool = False


def proxy_headers(
    scope: Scope,
    recorder: Recorder,
    *,
    tls: bool,
    port: int,
    proxy_host: str,
    server_name: str,
    maps: Mapping[str, Directive],
) -> ProxyHeaders:
    """Translate the ``proxy_set_header`` lines in effect in ``scope``."""
    result = ProxyHeaders(host_header=proxy_host)
    literals = _literals(tls=tls, port=port, server_name=server_name, proxy_host=proxy_host)
    request_set: dict[str, str] = {}
    request_remove: list[str] = []
    upgrade = connection = False
    idiom: list[Directive] = []
    for directive in scope.group("proxy_set_header"):
        if len(directive.args) != 2:
            recorder.note(directive, UNSUPPORTED, "expects a header name and a value")
            continue
        name, value = directive.args
        lower = name.lower()
        if lower == "host":
            _host(directive, value, literals, result, recorder)
        elif lower == "upgrade" and value in ("$http_upgrade", "${http_upgrade}"):
            upgrade = True
            idiom.append(directive)
        elif lower == "connection" and _is_upgrade(value, maps, recorder):
            connection = True
            idiom.append(directive)
        elif lower == "connection" and value.lower() in ("", "keep-alive", "close"):
            recorder.note(
                directive, NOT_NEEDED, "the gateway manages backend connections (keep-alive)"
            )
        elif lower in _HOP_BY_HOP or lower == "upgrade":
            recorder.note(directive, UNSUPPORTED, "hop-by-hop headers are the gateway's own")
        elif value in _FORWARDING_DEFAULTS.get(lower, ()) or (
            lower == "x-forwarded-proto" and value == ("https" if tls else "http")
        ):
            recorder.note(directive, NOT_NEEDED, "the gateway sends it (forwarding.x_forwarded)")
        elif value == "":
            request_remove.append(name)
        else:
            template, unknown = translate_variables(value, literals)
            if unknown:
                recorder.note(
                    directive,
                    UNSUPPORTED,
                    f"{', '.join(unknown)}: no such variable in the gateway; header not set",
                )
                continue
            request_set[name] = template
    result.websocket = upgrade and connection
    missing = "Connection upgrade" if upgrade else "Upgrade $http_upgrade"
    for directive in idiom:
        if result.websocket:
            recorder.note(directive, INFO, _WEBSOCKET_IDIOM)
        else:
            recorder.note(
                directive,
                APPROXIMATED,
                f"without `proxy_set_header {missing}` nginx does not pass WebSocket "
                "upgrades: websocket = false",
            )
    if request_set:
        result.request["request_set"] = request_set
    if request_remove:
        result.request["request_remove"] = request_remove
    return result


def _literals(*, tls: bool, port: int, server_name: str, proxy_host: str) -> dict[str, str]:
    literals = {
        "server_port": str(port),
        "https": "on" if tls else "",
        "proxy_host": proxy_host,
        "proxy_port": proxy_host.rpartition(":")[2] if ":" in proxy_host else "",
    }
    if server_name:
        literals["server_name"] = server_name
    if not literals["proxy_port"]:
        del literals["proxy_port"]
    return literals


def _host(
    directive: Directive,
    value: str,
    literals: Mapping[str, str],
    result: ProxyHeaders,
    recorder: Recorder,
) -> None:
    result.host_directive = directive
    if value in _KEEP_HOST:
        result.host_header = None
        if value in ("$host", "${host}"):
            reason = "the gateway passes the client's Host as sent (with its port, if any)"
            recorder.note(directive, APPROXIMATED, reason)
        else:
            recorder.note(directive, NOT_NEEDED, "the gateway keeps the client's Host")
        return
    template, unknown = translate_variables(value, literals)
    if unknown or "$" in template:
        recorder.note(
            directive,
            UNSUPPORTED,
            "host_header is fixed text: only $http_host/$host (keep), $proxy_host, "
            "$server_name or a name",
        )
        result.host_header = None
        return
    result.host_header = template


def _is_upgrade(value: str, maps: Mapping[str, Directive], recorder: Recorder) -> bool:
    if value.lower() == "upgrade":
        return True
    name = value.removeprefix("$").strip("{}")
    block = maps.get(name)
    if block is None or block.args[:1] not in (("$http_upgrade",), ("${http_upgrade}",)):
        return False
    recorder.use_all(block)
    return True


def response_headers(scope: Scope, recorder: Recorder, *, tls: bool, port: int) -> dict[str, Any]:
    """The response part of ``[headers]``: add_header, expires, proxy_hide_header."""
    section: dict[str, Any] = {}
    response_set: dict[str, str] = {}
    response_add: dict[str, str] = {}
    literals = _literals(tls=tls, port=port, server_name="", proxy_host="")
    for directive in scope.group("add_header"):
        args = directive.args
        if len(args) not in (2, 3) or (len(args) == 3 and args[2] != "always"):
            recorder.note(directive, UNSUPPORTED, "expects a name, a value and maybe `always`")
            continue
        name, value = args[0], args[1]
        lower = name.lower()
        if _PRESET.get(lower) == value.lower():
            recorder.note(directive, NOT_NEEDED, "the gateway sends it (headers.security)")
            continue
        if lower == "strict-transport-security" and value.startswith("max-age="):
            seconds = value.removeprefix("max-age=")
            if seconds.isdigit():
                section["hsts_max_age_s"] = int(seconds)
                continue
        template, unknown = translate_variables(value, literals)
        if unknown:
            recorder.note(
                directive,
                UNSUPPORTED,
                f"{', '.join(unknown)}: no such variable in the gateway; header not set",
            )
        elif name in response_set:
            response_add[name] = template
        else:
            response_set[name] = template
    expires = scope.get("expires")
    if expires is not None:
        cache_control = _cache_control(expires.args)
        if cache_control is None:
            recorder.note(expires, UNSUPPORTED, "only `expires TIME`, `epoch`, `max` or `off`")
        elif cache_control:
            response_set.setdefault("Cache-Control", cache_control)
            recorder.note(
                expires, APPROXIMATED, f"Cache-Control: {cache_control} (no Expires header)"
            )
    hidden = [d for d in scope.group("proxy_hide_header") if len(d.args) == 1]
    identity = [d for d in hidden if d.args[0].lower() in _BACKEND_IDENTITY]
    remove = [d.args[0] for d in hidden if d not in identity]
    if identity:
        section["hide_backend"] = True
    if len({d.args[0].lower() for d in identity}) == 1:
        recorder.note(identity[0], APPROXIMATED, "hide_backend drops both Server and X-Powered-By")
    if response_set:
        section["response_set"] = response_set
    if response_add:
        section["response_add"] = response_add
    if remove:
        section["response_remove"] = remove
    return section


def _cache_control(args: tuple[str, ...]) -> str | None:
    if len(args) != 1:
        return None
    value = args[0]
    if value == "off":
        return ""
    if value == "epoch" or value.startswith("-"):
        return "no-cache"
    if value == "max":
        return "max-age=315360000"
    seconds = parse_time_s(value)
    return None if seconds is None else f"max-age={int(seconds)}"
