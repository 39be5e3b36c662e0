"""Parsed nginx configuration -> the gateway's settings (a plain dict) and notes.

Pure: no file is read or checked here.  The steps:

1. The main level: ``http { }`` (or, for a file like ``sites-enabled/default``, the
   top level itself) holds the servers, upstreams, maps and rate-limit zones.
2. `servers.choose_listener` picks the listener and the servers it serves.
3. Each served server's locations become routes (`routes.RouteMaker`); the default
   server's routes take any host (as nginx's default server catches every Host), the
   others' take their ``server_name``\\ s.
4. Per-route sections (headers, timeouts, limits, ip, rate_limit) that are the same on
   every route move to the global section; where routes differ each keeps its own (a
   route's section replaces the global one, so it is complete on its own).
5. A sweep over every directive reports each one nobody translated: nothing is dropped
   silently.

Things left at the gateway's defaults on purpose: ``headers.security`` (the gateway's
hardening headers), ``forwarding.x_forwarded`` (nginx sends X-Forwarded-* only when told),
and nginx's implicit defaults that are not written in the file (``client_max_body_size
1m``, ``proxy_connect_timeout 60s``, ``proxy_read_timeout 60s`` also idling WebSockets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.nginx.catalog import HANDLED, generic_note
from gateway.nginx.context import Recorder, Scope
from gateway.nginx.listen import certificate_entries, listen_section
from gateway.nginx.notes import APPROXIMATED, DIFFERS, INFO, NOT_NEEDED, UNSUPPORTED, Note
from gateway.nginx.parser import RAW_BLOCKS, Directive
from gateway.nginx.routes import RouteDraft, RouteMaker
from gateway.nginx.sections import read_zones
from gateway.nginx.servers import Listener, Server, choose_listener, read_servers
from gateway.nginx.upstreams import Pools
from gateway.routing import normalise_host_pattern

__all__ = ["SECTIONS", "Translation", "translate"]

SECTIONS = ("headers", "timeouts", "limits", "ip", "rate_limit")
MAIN_ONLY = frozenset(
    {
        "user",
        "worker_processes",
        "worker_rlimit_nofile",
        "worker_cpu_affinity",
        "worker_priority",
        "worker_shutdown_timeout",
        "pid",
        "events",
        "load_module",
        "env",
        "daemon",
        "master_process",
        "pcre_jit",
        "thread_pool",
        "timer_resolution",
        "lock_file",
        "stream",
        "mail",
    }
)
LOG_LEVELS = {
    "debug": "debug",
    "info": "info",
    "notice": "info",
    "warn": "warning",
    "error": "error",
    "crit": "critical",
    "alert": "critical",
    "emerg": "critical",
}
UPGRADE_MAP = "the WebSocket Upgrade/Connection idiom: the gateway bridges upgrades itself"


@dataclass
class Translation:
    """The settings (as ``load_settings`` reads them from TOML), the notes, route origins."""

    settings: dict[str, Any]
    notes: list[Note]
    sources: list[str] = field(default_factory=list)


def translate(directives: Sequence[Directive], *, conf_dir: str) -> Translation:
    """Translate parsed ``directives``; ``conf_dir`` resolves relative certificate paths."""
    return _Translator(conf_dir).run(directives)


class _Translator:
    def __init__(self, conf_dir: str) -> None:
        self.conf_dir = conf_dir
        self.recorder = Recorder()
        self.log: dict[str, Any] = {}

    def run(self, top: Sequence[Directive]) -> Translation:
        recorder = self.recorder
        http_level: list[Directive] = []
        for directive in top:
            if directive.name == "http" and directive.block is not None:
                recorder.use(directive)
                http_level += directive.block
            elif directive.name == "error_log":
                self._error_log(directive)
            elif directive.name not in MAIN_ONLY:
                http_level.append(directive)
        http = Scope(http_level, None, recorder, "http")
        for directive in http.here("error_log"):
            self._error_log(directive)
        settings: dict[str, Any] = {}
        sources: list[str] = []
        listener = choose_listener(read_servers(http, recorder), recorder)
        if listener is None:
            where = top[0] if top else None
            if where is not None:
                recorder.note(where, UNSUPPORTED, "no server the gateway can serve")
        else:
            sources = self._serve(http, listener, settings)
            if "routes" in settings:
                self._differences(listener.default.directive, settings)
        if any(d.name == "access_log" and d.args[:1] != ("off",) for d in _all(top)):
            self.log["access_log"] = True
        if self.log:
            settings["log"] = self.log
        for directive in top:
            self._sweep(directive)
        files = [d.file for d in _all(top)]
        return Translation(settings, recorder.sorted_notes(files), sources)

    # -- the listener and its routes ------------------------------------------------

    def _serve(self, http: Scope, listener: Listener, settings: dict[str, Any]) -> list[str]:
        recorder = self.recorder
        settings["listen"] = listen_section(listener, recorder, self.conf_dir)
        certificates = certificate_entries(listener, recorder, self.conf_dir)
        if certificates:
            settings["certificates"] = certificates
        maps = {
            d.args[1].removeprefix("$").strip("{}"): d
            for d in http.here("map")
            if len(d.args) == 2 and d.block is not None
        }
        for block in maps.values():
            if block.args[0] in ("$http_upgrade", "${http_upgrade}"):
                recorder.note(block, NOT_NEEDED, UPGRADE_MAP, whole_block=True)
        blocks = {
            d.args[0]: d for d in http.here("upstream") if len(d.args) == 1 and d.block is not None
        }
        pools = Pools(blocks, recorder)
        zones = read_zones(http, recorder)
        drafts: list[RouteDraft] = []
        for server in listener.servers:
            hosts = self._hosts(server, listener)
            if hosts is None:
                continue
            names = [name for name in server.names if name and name != "_"]
            maker = RouteMaker(
                recorder, pools, maps, zones, listener.tls, listener.port, self.conf_dir, names
            )
            server_drafts = maker.server_routes(server.scope, hosts)
            if hosts and server_drafts and not any(d.route["prefix"] == "/" for d in server_drafts):
                recorder.note(
                    server.directive,
                    APPROXIMATED,
                    f"no location / here: requests for {', '.join(hosts)} outside these "
                    "locations go to the default server's routes (nginx answers 404)",
                )
            drafts += server_drafts
        drafts = self._unique(drafts)
        if pools.pools:
            settings["upstreams"] = pools.pools
        if not drafts:
            recorder.note(
                listener.default.directive,
                UNSUPPORTED,
                "no location could be translated into a route",
            )
            return []
        settings["routes"] = [draft.route for draft in drafts]
        self._hoist(drafts, settings)
        forwarding = self._forwarding(http, listener, drafts)
        if forwarding:
            settings["forwarding"] = forwarding
        return [draft.source for draft in drafts]

    def _hosts(self, server: Server, listener: Listener) -> list[str] | None:
        recorder = self.recorder
        name_directives = server.scope.here("server_name")
        if server is listener.default:
            if any(n not in ("", "_") for n in server.names) and name_directives:
                recorder.note(
                    name_directives[0],
                    INFO,
                    "the default server answers every host (as in nginx): its routes have no hosts",
                )
            return []
        hosts: list[str] = []
        for directive in name_directives:
            for name in directive.args:
                hosts += self._host_patterns(directive, name)
        if not hosts:
            recorder.note(
                server.directive,
                UNSUPPORTED,
                "no server_name the gateway can match (and not the default server): left out",
                whole_block=True,
            )
            return None
        return list(dict.fromkeys(hosts))

    def _host_patterns(self, directive: Directive, name: str) -> list[str]:
        if name in ("", "_"):
            return []
        if name.startswith("~") or "$" in name:
            self.recorder.note(directive, UNSUPPORTED, f"{name}: regex server names")
            return []
        patterns = [name[1:], "*" + name] if name.startswith(".") else [name]
        try:
            return [normalise_host_pattern(pattern) for pattern in patterns]
        except ValueError as exc:
            self.recorder.note(directive, UNSUPPORTED, str(exc))
            return []

    def _unique(self, drafts: list[RouteDraft]) -> list[RouteDraft]:
        kept: dict[tuple[str, tuple[str, ...]], RouteDraft] = {}
        for draft in drafts:
            key = (draft.route["prefix"], tuple(sorted(draft.route.get("hosts", []))))
            other = kept.get(key)
            if other is None:
                kept[key] = draft
                continue
            loser, winner = (other, draft) if other.exact and not draft.exact else (draft, other)
            kept[key] = winner
            self.recorder.note(
                loser.directive,
                UNSUPPORTED,
                f"same route as {winner.source} (prefix {key[0]}): left out",
            )
        return list(kept.values())

    def _hoist(self, drafts: list[RouteDraft], settings: dict[str, Any]) -> None:
        for name in SECTIONS:
            values = [draft.sections.get(name, {}) for draft in drafts]
            if all(value == values[0] for value in values):
                if values[0]:
                    settings[name] = values[0]
                continue
            for draft, value in zip(drafts, values, strict=True):
                if value:
                    draft.route[name] = value

    def _forwarding(
        self, http: Scope, listener: Listener, drafts: list[RouteDraft]
    ) -> dict[str, Any]:
        recorder = self.recorder
        forwarding: dict[str, Any] = {}
        rewrite = [d.rewrite_location for d in drafts if "upstream" in d.route]
        if rewrite and all(value is False for value in rewrite):
            forwarding["rewrite_location"] = False
        elif False in rewrite:
            for draft in drafts:
                if draft.rewrite_location is False:
                    recorder.note(
                        draft.directive,
                        APPROXIMATED,
                        "proxy_redirect off is global in the gateway "
                        "(forwarding.rewrite_location): other routes rewrite, so it stays on",
                    )
        scopes = [http, *(server.scope for server in listener.servers)]
        trusted: list[str] = []
        for scope in scopes:
            for directive in scope.here("set_real_ip_from"):
                recorder.use(directive)
                trusted += directive.args[:1]
            for directive in scope.here("real_ip_header"):
                header = directive.args[0].lower() if directive.args else ""
                if header == "x-forwarded-for":
                    recorder.use(directive)
                else:
                    recorder.note(
                        directive,
                        APPROXIMATED,
                        "the gateway reads the client address from X-Forwarded-For "
                        "(or Forwarded) sent by trusted proxies",
                    )
            for directive in scope.here("real_ip_recursive"):
                recorder.note(
                    directive, NOT_NEEDED, "the gateway skips every trusted proxy in the chain"
                )
        if trusted:
            forwarding["trusted_proxies"] = list(dict.fromkeys(trusted))
        return forwarding

    def _error_log(self, directive: Directive) -> None:
        level = directive.args[1] if len(directive.args) == 2 else None
        if level in LOG_LEVELS:
            self.log["level"] = LOG_LEVELS[level]
        reason = "the gateway logs to stderr" + (
            f" (log.level = {LOG_LEVELS[level]!r})" if level in LOG_LEVELS else ""
        )
        self.recorder.note(directive, APPROXIMATED, reason)

    # -- what the gateway adds or drops by default -------------------------------------

    def _differences(self, server: Directive, settings: dict[str, Any]) -> None:
        """Note each default of the gateway that this nginx configuration did not have."""

        def configured(section: str, key: str) -> bool:
            sections = [settings.get(section), *(r.get(section) for r in settings["routes"])]
            return any(isinstance(s, dict) and key in s for s in sections)

        def note(reason: str) -> None:
            self.recorder.note(server, DIFFERS, reason)

        tls = settings.get("listen", {}).get("tls", True)
        proxied = any("upstream" in route for route in settings["routes"])
        if proxied:
            note(
                "WebSocket handshakes with an Origin of another site get 403 "
                '(origin.allow = ["same-origin"]; ["*"] accepts any, as nginx did)'
            )
            note(
                "WebSocket messages over 1 MiB close the session with 1009, and both legs are "
                "pinged every 20 s (websocket.max_message_bytes, websocket.ping_interval_s)"
            )
            note(
                "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and X-Real-IP are sent "
                "to the backend even where proxy_set_header did not (forwarding.x_forwarded)"
            )
        preset = "X-Frame-Options SAMEORIGIN, X-Content-Type-Options nosniff, Referrer-Policy"
        if tls:
            preset = "Strict-Transport-Security (max-age one year), " + preset
        note(f"responses get {preset} (headers.security = false leaves them out)")
        note("X-Request-ID is sent to the backend and the client (request_id.enabled = false)")
        note(
            "a path with a . or .. segment gets 400; nginx resolves them "
            "(limits.reject_dot_segments = false forwards them as they are)"
        )
        if not configured("limits", "max_body_bytes"):
            note(
                "request bodies up to 1 GiB pass, not nginx's implicit client_max_body_size "
                "1m (limits.max_body_bytes)"
            )
        if proxied and not configured("timeouts", "websocket_idle_s"):
            note(
                "idle WebSocket sessions stay open for 86400 s, where nginx's implicit "
                "proxy_read_timeout 60s closes them (timeouts.websocket_idle_s)"
            )
        note(
            "an admin listener on 127.0.0.1:9901 serves /healthz, /readyz, /metrics and "
            "/status (admin.port, admin.enabled = false)"
        )

    # -- nothing dropped silently ------------------------------------------------------

    def _sweep(self, directive: Directive) -> None:
        recorder = self.recorder
        if not recorder.is_used(directive):
            if directive.name in HANDLED:
                kind, reason = NOT_NEEDED, "has no effect in the translated configuration"
            else:
                kind, reason = generic_note(directive.name, directive.args)
            recorder.note(directive, kind, reason, whole_block=True)
            return
        if directive.block is not None and directive.name not in RAW_BLOCKS:
            for inner in directive.block:
                self._sweep(inner)


def _all(directives: Sequence[Directive]) -> list[Directive]:
    return [inner for directive in directives for inner in directive.walk()]
