"""The per-route sections from nginx's inherited directives: timeouts, limits, ip, rate_limit.

``proxy_connect/read/send_timeout`` and ``client_body_timeout`` -> ``timeouts`` (nginx
time units; ``proxy_read_timeout`` also idles out WebSocket sessions, as in nginx);
``client_max_body_size`` -> ``limits.max_body_bytes`` (``0``: no limit); ``allow``/
``deny`` -> ``ip``; ``limit_req``/``limit_conn`` with zones keyed by the client address
-> ``rate_limit``; ``add_header``/``expires``/``proxy_hide_header`` -> the response
part of ``headers``.
"""

from __future__ import annotations

from typing import Any

from gateway.nginx.access import ip_rules
from gateway.nginx.context import Recorder, Scope
from gateway.nginx.headers import response_headers
from gateway.nginx.notes import APPROXIMATED, UNSUPPORTED
from gateway.nginx.parser import Directive
from gateway.nginx.values import parse_size_bytes, parse_time_s

__all__ = ["Zones", "read_zones", "route_sections"]

# Rate-limit zone name -> (rate such as "10r/s", "" for limit_conn zones; the directive).
Zones = dict[str, tuple[str, Directive]]

TIMEOUTS = (
    ("proxy_connect_timeout", "connect_s"),
    ("proxy_read_timeout", "read_s"),
    ("proxy_send_timeout", "write_s"),
    ("client_body_timeout", "body_s"),
)
_CLIENT_KEYS = frozenset({"$binary_remote_addr", "$remote_addr"})


def read_zones(http: Scope, recorder: Recorder) -> Zones:
    """The ``limit_req_zone``/``limit_conn_zone`` zones the gateway can express."""
    zones: Zones = {}
    for directive in http.here("limit_req_zone", "limit_conn_zone"):
        params = dict(arg.partition("=")[::2] for arg in directive.args[1:])
        name = params.get("zone", "").partition(":")[0]
        rate = params.get("rate", "")
        valid_rate = directive.name == "limit_conn_zone" or (
            rate.endswith(("r/s", "r/m")) and rate[:-3].isdigit() and rate[:-3] != "0"
        )
        if directive.args[:1] and directive.args[0] in _CLIENT_KEYS and name and valid_rate:
            zones[name] = (rate, directive)
        else:
            recorder.note(
                directive,
                UNSUPPORTED,
                "only zones keyed by the client address ($binary_remote_addr) with a "
                "rate in r/s or r/m",
            )
    return zones


def route_sections(
    scope: Scope, recorder: Recorder, *, zones: Zones, tls: bool, port: int
) -> dict[str, dict[str, Any]]:
    """``headers`` (response part), ``timeouts``, ``limits``, ``ip``, ``rate_limit``."""
    timeouts: dict[str, Any] = {}
    for name, key in TIMEOUTS:
        directive = scope.get(name)
        if directive is None:
            continue
        seconds = parse_time_s(directive.args[0]) if len(directive.args) == 1 else None
        if not seconds:
            recorder.note(directive, UNSUPPORTED, "not a positive nginx time")
            continue
        timeouts[key] = seconds
        if key == "read_s":
            # For a WebSocket nginx's read timeout is the idle timeout of the session.
            timeouts["websocket_idle_s"] = seconds
    limits: dict[str, Any] = {}
    body = scope.get("client_max_body_size")
    if body is not None:
        size = parse_size_bytes(body.args[0]) if len(body.args) == 1 else None
        if size is None:
            recorder.note(body, UNSUPPORTED, "not an nginx size")
        else:
            limits["max_body_bytes"] = size
    return {
        "headers": response_headers(scope, recorder, tls=tls, port=port),
        "timeouts": timeouts,
        "limits": limits,
        "ip": ip_rules(scope.group("allow", "deny"), recorder),
        "rate_limit": _rate_limit(scope, recorder, zones),
    }


def _rate_limit(scope: Scope, recorder: Recorder, zones: Zones) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for index, directive in enumerate(scope.group("limit_req")):
        params = dict(arg.partition("=")[::2] for arg in directive.args)
        zone = zones.get(params.get("zone", ""))
        if index > 0 or zone is None:
            reason = "only one limit_req per route" if index else "its zone is not translated"
            recorder.note(directive, UNSUPPORTED, reason)
            continue
        rate, zone_directive = zone
        recorder.use(zone_directive)
        number, _, unit = rate.partition("r/")
        section["rate_per_s"] = float(number) / (60.0 if unit == "m" else 1.0)
        burst = params.get("burst", "0")
        section["burst"] = max(1, int(burst)) if burst.isdigit() else 1
        differences = ["the gateway answers 429 (nginx: 503)"]
        if "nodelay" not in params:
            differences.append("it does not delay excess requests, it refuses them")
        recorder.note(directive, APPROXIMATED, "; ".join(differences))
    for index, directive in enumerate(scope.group("limit_conn")):
        zone = zones.get(directive.args[0] if directive.args else "")
        count = directive.args[1] if len(directive.args) == 2 else ""
        if index > 0 or zone is None or not count.isdigit() or count == "0":
            recorder.note(directive, UNSUPPORTED, "only one limit_conn per client address")
            continue
        recorder.use(zone[1])
        section["max_concurrent_per_ip"] = int(count)
        recorder.note(
            directive, APPROXIMATED, "counted per route and per process; 429 (nginx: 503)"
        )
    return section
