"""``location`` blocks -> route drafts: upstream or root, prefix handling, per-route sections.

nginx's rules, as translated:

- ``location /p`` and ``location ^~ /p`` are prefix routes (the gateway matches on
  segment boundaries: ``/p`` and ``/p/...``, where nginx also matches ``/px``);
  ``location = /p`` becomes a prefix route too (noted); regex and named locations are
  reported and left out.  Nested locations become routes of their own.
- ``proxy_pass`` without a URI part passes the path unchanged; with one (even ``/``)
  the location's prefix is replaced by it: ``strip_prefix = true`` and the URI as the
  upstream's base path.
- ``root`` serves the directory with the location's path appended (the gateway's static
  route without ``strip_prefix``); ``alias`` replaces the location's prefix
  (``strip_prefix = true``).
- A route bridges WebSocket only with nginx's idiom (``proxy_set_header Upgrade
  $http_upgrade`` and ``Connection`` "upgrade" or a map of ``$http_upgrade``), as nginx
  only passes upgrades then.
- An https backend's certificate is checked by the gateway (nginx only checks with
  ``proxy_ssl_verify on``): noted; ``proxy_ssl_verify off`` becomes a pool with
  ``verify = false``, ``proxy_ssl_trusted_certificate`` its ``ca_bundle``.
- nginx sends ``Host: <proxy_pass host>`` unless told otherwise: ``host_header`` says so
  (``proxy_set_header Host $http_host`` or ``$host`` keep the client's Host instead).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from gateway.nginx.context import Recorder, Scope
from gateway.nginx.headers import proxy_headers
from gateway.nginx.notes import APPROXIMATED, INFO, NOT_NEEDED, UNSUPPORTED
from gateway.nginx.parser import Directive
from gateway.nginx.sections import Zones, route_sections
from gateway.nginx.upstreams import Pools

__all__ = ["RouteDraft", "RouteMaker"]

_OTHER_HANDLERS = ("fastcgi_pass", "uwsgi_pass", "scgi_pass", "grpc_pass", "memcached_pass")
_STATIC_TRY_FILES = (("$uri", "$uri/", "=404"), ("$uri", "=404"), ("$uri/", "$uri", "=404"))


@dataclass
class RouteDraft:
    """One route as it will be written, its per-route sections, and where it came from."""

    route: dict[str, Any]
    sections: dict[str, dict[str, Any]]
    directive: Directive
    exact: bool = False
    rewrite_location: bool | None = None
    source: str = ""


@dataclass
class RouteMaker:
    """Makes the route drafts of one server's locations."""

    recorder: Recorder
    pools: Pools
    maps: dict[str, Directive]
    zones: Zones
    tls: bool
    port: int
    conf_dir: str
    server_names: list[str] = field(default_factory=list)

    def server_routes(self, server: Scope, hosts: list[str]) -> list[RouteDraft]:
        """The drafts of ``server``'s locations (or of the server itself when it has none)."""
        locations = server.here("location")
        if not locations and server.owner is not None:
            draft = self._content(server, "/", server.owner, hosts)
            return [draft] if draft is not None else []
        for directive in server.here("return"):
            self.recorder.note(
                directive,
                UNSUPPORTED,
                "a server-level return answers every request; only http->https redirects "
                "are translated (listen.redirect_port)",
            )
        drafts: list[RouteDraft] = []
        for location in locations:
            drafts += self._location(location, server, hosts)
        return drafts

    def _location(self, location: Directive, parent: Scope, hosts: list[str]) -> list[RouteDraft]:
        recorder = self.recorder
        modifier, path = _location_match(location.args)
        if modifier in ("~", "~*"):
            recorder.note(
                location,
                UNSUPPORTED,
                "regex locations are not supported (routes match path prefixes)",
                whole_block=True,
            )
            return []
        if modifier == "@":
            recorder.note(
                location,
                UNSUPPORTED,
                "named locations serve internal redirects (try_files, error_page) only",
                whole_block=True,
            )
            return []
        if modifier is None or not path.startswith("/"):
            recorder.note(location, UNSUPPORTED, "not a path prefix", whole_block=True)
            return []
        if location.block is None:
            return []
        if modifier == "=" and any(
            _location_match(other.args)[0] in ("", "^~")
            and _prefix(_location_match(other.args)[1]) == _prefix(path)
            for other in parent.here("location")
        ):
            recorder.note(
                location,
                UNSUPPORTED,
                f"an exact location beside the prefix location {_prefix(path)}: its requests "
                "go to the prefix location's route",
                whole_block=True,
            )
            return []
        recorder.use(location)
        scope = Scope(location.block, parent, recorder, "location", owner=location)
        internal = scope.here("internal")
        if internal:
            recorder.note(
                location,
                UNSUPPORTED,
                "internal location (only for internal redirects): no route",
                whole_block=True,
            )
            return []
        drafts = []
        draft = self._content(scope, path, location, hosts)
        if draft is not None:
            draft.exact = modifier == "="
            if modifier == "=":
                recorder.note(
                    location,
                    APPROXIMATED,
                    f"exact match: the route also takes the paths below {path.rstrip('/')}/",
                )
            elif not path.endswith("/") and path != "/":
                recorder.note(
                    location,
                    APPROXIMATED,
                    f"the route takes {path} and {path}/...; nginx's location also takes "
                    f"{path}x...",
                )
            drafts.append(draft)
        for inner in scope.here("location"):
            drafts += self._location(inner, scope, hosts)
        return drafts

    def _content(
        self, scope: Scope, path: str, where: Directive, hosts: list[str]
    ) -> RouteDraft | None:
        recorder = self.recorder
        if scope.here(*_OTHER_HANDLERS):
            return None  # reported by the final sweep
        for directive in scope.here("return"):
            recorder.note(
                directive,
                UNSUPPORTED,
                "only http->https redirects are translated (listen.redirect_port)",
            )
            return None
        proxy_pass = scope.here("proxy_pass")
        if proxy_pass:
            draft = self._proxy(scope, path, proxy_pass[0], hosts)
        else:
            draft = self._static(scope, path, where, hosts)
        if draft is None:
            return None
        draft.source = f"{where.file}:{where.line}: " + (
            where.text() if where.name == "location" else f"server (path {path})"
        )
        self._sections(scope, draft)
        return draft

    # -- proxy_pass ---------------------------------------------------------------

    def _proxy(
        self, scope: Scope, path: str, proxy_pass: Directive, hosts: list[str]
    ) -> RouteDraft | None:
        recorder = self.recorder
        recorder.use(proxy_pass)
        url = proxy_pass.args[0] if len(proxy_pass.args) == 1 else ""
        scheme, _, rest = url.partition("://")
        if "$" in url:
            recorder.note(proxy_pass, UNSUPPORTED, "variables in proxy_pass are not supported")
            return None
        if scheme not in ("http", "https") or not rest:
            recorder.note(proxy_pass, UNSUPPORTED, "only http:// and https:// backends")
            return None
        if rest.startswith("unix:"):
            socket_path, colon, uri = rest[len("unix:") :].partition(":")
            authority, has_uri = "localhost", bool(colon)
        else:
            authority, slash, tail = rest.partition("/")
            uri, has_uri = slash + tail, bool(slash)
        strip = has_uri and path != "/"
        base = uri.rstrip("/") if has_uri else ""
        if has_uri and path != "/" and path.endswith("/") != uri.endswith("/"):
            recorder.note(
                proxy_pass,
                APPROXIMATED,
                f"nginx joins the rest of the path to {uri!r} as is ({path}x -> {uri}x); "
                f"the gateway joins on a slash ({uri.rstrip('/')}/x)",
            )
        elif has_uri and path == "/" and uri and not uri.endswith("/"):
            recorder.note(
                proxy_pass,
                APPROXIMATED,
                f"nginx joins the path to {uri!r} as is (/x -> {uri}x); the gateway forwards "
                f"{uri}/x",
            )
        tls = self._backend_tls(scope, scheme, proxy_pass)
        if rest.startswith("unix:"):
            upstream: str | None = self.pools.unix_socket(socket_path, base, proxy_pass)
            proxy_host = "localhost"
        elif authority in self.pools:
            upstream = self.pools.reference(authority, scheme, base, proxy_pass, tls)
            proxy_host = authority
        elif tls:
            upstream = self.pools.url_pool(scheme, authority, base, tls, proxy_pass)
            proxy_host = _proxy_host(scheme, authority)
        else:
            upstream = f"{scheme}://{authority}{base}"
            proxy_host = _proxy_host(scheme, authority)
        if upstream is None:
            return None
        headers = proxy_headers(
            scope,
            recorder,
            tls=self.tls,
            port=self.port,
            proxy_host=proxy_host,
            server_name=self.server_names[0] if self.server_names else "",
            maps=self.maps,
        )
        route: dict[str, Any] = {"prefix": _prefix(path)}
        if hosts:
            route["hosts"] = hosts
        route["upstream"] = upstream
        route["strip_prefix"] = strip
        if headers.host_header is not None:
            route["host_header"] = headers.host_header
        if headers.host_header is not None and headers.host_directive is None:
            recorder.note(
                proxy_pass,
                INFO,
                f"nginx sends Host: {headers.host_header} here (the proxy_pass host): "
                "host_header keeps that (remove it to pass the client's Host)",
            )
        route["websocket"] = headers.websocket
        if headers.websocket:
            version = scope.peek("proxy_http_version")
            if version is None or version.args[:1] != ("1.1",):
                recorder.note(
                    proxy_pass,
                    INFO,
                    "nginx needs proxy_http_version 1.1 to pass upgrades; the route bridges "
                    "WebSocket",
                )
        else:
            recorder.note(
                proxy_pass,
                INFO,
                "without the Upgrade/Connection idiom nginx passes no WebSocket here: "
                "websocket = false",
            )
        draft = RouteDraft(route, {"headers": headers.request}, proxy_pass)
        redirect = scope.get("proxy_redirect")
        if redirect is not None:
            if redirect.args == ("off",):
                draft.rewrite_location = False
            elif redirect.args != ("default",):
                recorder.note(
                    redirect,
                    APPROXIMATED,
                    "the gateway rewrites Location/Refresh pointing at the backend to the "
                    "public URL (forwarding.rewrite_location)",
                )
        return draft

    def _backend_tls(self, scope: Scope, scheme: str, proxy_pass: Directive) -> dict[str, Any]:
        """Pool settings for an https backend: ``verify``, ``ca_bundle``."""
        if scheme != "https":
            return {}
        recorder = self.recorder
        verify = scope.get("proxy_ssl_verify")
        trusted = scope.get("proxy_ssl_trusted_certificate")
        if verify is not None and verify.args == ("off",):
            recorder.note(verify, INFO, "the backend's certificate is not checked: verify = false")
            return {"verify": False}
        if verify is None:
            recorder.note(
                proxy_pass,
                APPROXIMATED,
                "the gateway checks the https backend's certificate (nginx does not without "
                "proxy_ssl_verify on)",
            )
        if trusted is None or len(trusted.args) != 1:
            return {}
        bundle = trusted.args[0]
        if not PurePosixPath(bundle).is_absolute():
            bundle = posixpath.normpath(PurePosixPath(self.conf_dir) / bundle)
        return {"ca_bundle": bundle}

    # -- root / alias ---------------------------------------------------------------

    def _static(
        self, scope: Scope, path: str, where: Directive, hosts: list[str]
    ) -> RouteDraft | None:
        recorder = self.recorder
        alias = scope.here("alias")
        root = None if alias else scope.get("root")
        directive = alias[0] if alias else root
        if directive is None:
            if where.name == "location" and not scope.here("location"):
                recorder.note(
                    where,
                    UNSUPPORTED,
                    "no proxy_pass, root or alias: nginx would serve its default root (html)",
                )
            return None
        recorder.use(directive)
        folder = directive.args[0] if len(directive.args) == 1 else ""
        if not folder or "$" in folder:
            recorder.note(directive, UNSUPPORTED, "a folder with variables is not supported")
            return None
        if not PurePosixPath(folder).is_absolute():
            folder = posixpath.normpath(PurePosixPath(self.conf_dir) / folder)
            recorder.note(
                directive,
                APPROXIMATED,
                f"relative folder taken from the configuration's folder: {folder} "
                "(nginx: from its prefix)",
            )
        if folder != "/":
            folder = folder.rstrip("/")
        route: dict[str, Any] = {"prefix": _prefix(path)}
        if hosts:
            route["hosts"] = hosts
        route["root"] = folder
        index = scope.get("index")
        if index is not None and list(index.args) != ["index.html"]:
            route["index"] = list(index.args)
        route["strip_prefix"] = bool(alias) and path != "/"
        try_files = scope.get("try_files")
        if try_files is not None:
            if try_files.args in _STATIC_TRY_FILES:
                recorder.note(
                    try_files,
                    NOT_NEEDED,
                    "the gateway serves the file, else the folder's index file, else 404",
                )
            else:
                recorder.note(
                    try_files,
                    UNSUPPORTED,
                    "only `try_files $uri $uri/ =404` (the gateway's own behaviour)",
                )
        return RouteDraft(route, {"headers": {}}, where)

    # -- sections ----------------------------------------------------------------------

    def _sections(self, scope: Scope, draft: RouteDraft) -> None:
        sections = route_sections(
            scope, self.recorder, zones=self.zones, tls=self.tls, port=self.port
        )
        draft.sections["headers"].update(sections.pop("headers"))
        draft.sections.update(sections)


def _location_match(args: tuple[str, ...]) -> tuple[str | None, str]:
    """``(modifier, path)``: modifier ``""`` (prefix), ``=``, ``^~``, ``~``, ``~*``, ``@``."""
    if len(args) == 2 and args[0] in ("=", "^~", "~", "~*"):
        return args[0], args[1]
    if len(args) != 1:
        return None, ""
    text = args[0]
    if text.startswith("@"):
        return "@", text
    for modifier in ("^~", "~*", "=", "~"):
        if text.startswith(modifier) and len(text) > len(modifier):
            return modifier, text[len(modifier) :]
    return "", text


def _prefix(path: str) -> str:
    return path if path == "/" else path.rstrip("/") or "/"


def _proxy_host(scheme: str, authority: str) -> str:
    default = ":443" if scheme == "https" else ":80"
    return authority.removesuffix(default)
