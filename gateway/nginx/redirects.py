"""http->https redirects in nginx -> ``listen.redirect_port`` (and ``public_port``).

Recognised: a plain server whose only job is ``return 301 https://$host$request_uri``
(also in ``location /``, in certbot's ``if ($host = ...)`` blocks with the final
``return 404``, or as ``rewrite ^ https://... permanent``), and ``if ($scheme !=
"https") { return 301 https://... }`` in a server listening on both ports.  The
gateway's redirect port answers 308 for every host and keeps host, path and query;
what differs from the nginx line is noted.  An ACME challenge location on the plain
port is reported: the redirect port serves nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.nginx.context import Recorder
from gateway.nginx.notes import APPROXIMATED, INFO, UNSUPPORTED
from gateway.nginx.parser import Directive

if TYPE_CHECKING:
    from gateway.nginx.servers import Listen, Listener, Server

__all__ = ["REDIRECT_CODES", "https_redirect", "plain_redirect", "scheme_redirect"]

REDIRECT_CODES = frozenset({"301", "302", "303", "307", "308"})
_HTTPS_URL_RE = re.compile(
    r"https://(?P<host>\$\{?[A-Za-z_]+\}?|[^/:$]+|\[[^\]]+\])(?::(?P<port>\d+))?(?P<rest>.*)"
)
_KEEPS_PATH = frozenset({"$request_uri", "${request_uri}", "$uri", "$uri$is_args$args"})
_REQUEST_HOSTS = frozenset({"$host", "${host}", "$http_host", "$server_name"})


@dataclass(frozen=True, slots=True)
class _Redirect:
    directive: Directive
    port: int | None
    host: str
    rest: str
    status: str


def https_redirect(directive: Directive) -> _Redirect | None:
    """``return 301 https://...`` or ``rewrite ^ https://... permanent``, parsed."""
    if directive.name == "return" and len(directive.args) == 2:
        status, url = directive.args
        if status not in REDIRECT_CODES:
            return None
    elif directive.name == "rewrite" and len(directive.args) == 3:
        pattern, url, flag = directive.args
        if pattern not in ("^", "^(.*)$", "^(.*)", "^/(.*)$", "^/(.*)") or flag not in (
            "permanent",
            "redirect",
        ):
            return None
        status = "301" if flag == "permanent" else "302"
        url = url.removesuffix("?")
        url = (
            url.replace("$1", "$request_uri")
            if "/$1" not in url
            else url.replace("/$1", "$request_uri")
        )
    else:
        return None
    match = _HTTPS_URL_RE.fullmatch(url)
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    return _Redirect(directive, port, match["host"], match["rest"], status)


def _condition(directive: Directive) -> list[str]:
    return " ".join(directive.args).replace("(", " ").replace(")", " ").split()


def _redirects_in(block: tuple[Directive, ...] | None) -> list[Directive]:
    return [d for d in block or () if d.name in ("return", "rewrite")]


def plain_redirect(server: Server, listener: Listener, recorder: Recorder) -> bool:
    """If ``server`` only redirects to https: make it the redirect port; True if so."""
    found: list[_Redirect] = []
    extra: list[tuple[Directive, str]] = []
    for directive in server.scope.directives:
        if directive.name in ("listen", "server_name"):
            continue
        if directive.name in ("return", "rewrite"):
            redirect = https_redirect(directive)
            if redirect is not None:
                found.append(redirect)
            elif directive.name == "return" and directive.args[:1] in (("404",), ("444",)):
                extra.append((directive, "the gateway's redirect port redirects every host"))
            else:
                return False
        elif directive.name == "if" and _condition(directive)[:1] in (["$host"], ["$scheme"]):
            inner = _redirects_in(directive.block)
            redirects = [r for r in map(https_redirect, inner) if r is not None]
            if not redirects or len(redirects) != len(directive.block or ()):
                return False
            found += redirects
            extra.append((directive, "the condition is dropped: every host is redirected"))
        elif directive.name == "location" and directive.block is not None:
            path = directive.args[-1] if directive.args else ""
            if path.startswith("/.well-known/acme-challenge"):
                extra.append(
                    (
                        directive,
                        "ACME challenges on the plain port are not served: the gateway's "
                        "redirect port only redirects (get certificates with a DNS challenge "
                        "or certbot --standalone)",
                    )
                )
                continue
            redirects = [r for r in map(https_redirect, _redirects_in(directive.block)) if r]
            if path != "/" or not redirects or len(redirects) != len(directive.block):
                return False
            found += redirects
            recorder.use(directive)
        elif directive.name in ("proxy_pass", "root", "alias", "try_files", "fastcgi_pass"):
            return False
    if not found:
        return False
    port = next(lst.port for lst in server.listens if not lst.ssl)
    _use_redirect(server, found, port, listener, recorder)
    for directive, reason in extra:
        kind = INFO if directive.name in ("return", "if") else UNSUPPORTED
        recorder.note(directive, kind, reason, whole_block=True)
    return True


def scheme_redirect(server: Server, listen: Listen, listener: Listener, recorder: Recorder) -> bool:
    """``if ($scheme != "https") { return 301 https://... }`` in a server on both ports."""
    for directive in server.scope.here("if"):
        words = _condition(directive)
        if words not in (["$scheme", "!=", "https"], ["$scheme", "=", "http"]):
            continue
        inner = _redirects_in(directive.block)
        redirects = [r for r in map(https_redirect, inner) if r is not None]
        if redirects and len(redirects) == len(directive.block or ()):
            recorder.use_all(directive)
            _use_redirect(server, redirects, listen.port, listener, recorder)
            return True
    return False


def _use_redirect(
    server: Server, found: list[_Redirect], port: int, listener: Listener, recorder: Recorder
) -> None:
    recorder.use(server.directive, *server.scope.here("listen", "server_name"))
    if listener.redirect_port is not None and listener.redirect_port != port:
        recorder.note(
            found[0].directive,
            UNSUPPORTED,
            f"a second redirect port ({port}) left out: the gateway has one "
            f"(redirect_port = {listener.redirect_port})",
        )
        return
    listener.redirect_port = port
    for redirect in found:
        public = redirect.port or 443
        listener.public_port = None if public == listener.port else public
        differences = []
        if redirect.status != "308":
            differences.append(f"it answers 308 (nginx: {redirect.status})")
        if redirect.host not in _REQUEST_HOSTS:
            differences.append(f"it keeps the request's host (nginx: {redirect.host})")
        if redirect.rest not in _KEEPS_PATH:
            differences.append(f"it keeps the request's path (nginx: {redirect.rest or '/'})")
        reason = f"redirect to https: listen.redirect_port = {port}"
        if differences:
            recorder.note(redirect.directive, APPROXIMATED, reason + "; " + "; ".join(differences))
        else:
            recorder.note(redirect.directive, INFO, reason)
