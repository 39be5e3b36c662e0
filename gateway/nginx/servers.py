"""``server`` blocks -> the gateway's one listener: which servers it serves, the redirect port.

nginx can listen on many ports; the gateway has one TLS listener and an optional plain
redirect port.  The choice, in nginx's own terms:

- The listener is the port of the default TLS server (the one with ``default_server`` on
  an ``ssl`` listen, else the first TLS server); every TLS server on that port is merged
  into it.  TLS servers on other ports are reported and left out.
- A plain server that only redirects to https (``return 301 https://$host$request_uri``,
  the certbot ``if ($host = ...)`` form, ``rewrite ^ https://...``) becomes
  ``listen.redirect_port``, as does ``if ($scheme != "https")`` in a server that listens
  on both.  Other plain servers are reported and left out.
- Without any TLS server the configuration serves plain HTTP: ``tls = false`` on the
  default server's port (``listen 80`` in Debian's default).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.nginx.context import Recorder, Scope
from gateway.nginx.notes import APPROXIMATED, INFO, NOT_NEEDED, UNSUPPORTED
from gateway.nginx.parser import Directive
from gateway.nginx.redirects import plain_redirect, scheme_redirect

__all__ = ["Listen", "Listener", "Server", "choose_listener", "parse_listen", "read_servers"]

_LISTEN_NOT_NEEDED = (
    "reuseport",
    "deferred",
    "bind",
    "ipv6only",
    "backlog",
    "rcvbuf",
    "sndbuf",
    "so_keepalive",
    "fastopen",
    "accept_filter",
    "setfib",
    "max_conns",
)


@dataclass(frozen=True, slots=True)
class Listen:
    """One ``listen`` directive, parsed."""

    directive: Directive
    host: str
    port: int
    ssl: bool
    default: bool
    params: tuple[str, ...]


@dataclass
class Server:
    """A ``server`` block with its listens and names."""

    directive: Directive
    scope: Scope
    listens: list[Listen]
    names: list[str]
    ssl_on: Directive | None = None

    @property
    def tls(self) -> bool:
        """True if the server has an ``ssl`` listen (or the old ``ssl on``)."""
        return any(listen.ssl for listen in self.listens)


@dataclass
class Listener:
    """The outcome: the gateway's listener and the servers it serves."""

    host: str
    port: int
    tls: bool
    default: Server
    servers: list[Server]
    redirect_port: int | None = None
    public_port: int | None = None
    listen_directive: Directive | None = None


def parse_listen(directive: Directive, ssl_on: bool) -> Listen | None:
    """A ``listen`` directive as address, port and flags; None for ``unix:`` or a bad one."""
    if not directive.args:
        return None
    address, *params = directive.args
    host, port = "0.0.0.0", 80
    if address.startswith("unix:"):
        return None
    if address.startswith("["):
        end = address.find("]")
        if end == -1:
            return None
        host = address[1:end]
        rest = address[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif address.isdigit():
        port = int(address)
    elif ":" in address:
        name, _, number = address.rpartition(":")
        if not number.isdigit():
            return None
        host, port = ("0.0.0.0" if name == "*" else name), int(number)
    else:
        host = "0.0.0.0" if address == "*" else address
    if not 0 < port < 65536:
        return None
    ssl = ssl_on or "ssl" in params
    default = "default_server" in params or "default" in params
    return Listen(directive, host, port, ssl, default, tuple(params))


def read_servers(http: Scope, recorder: Recorder) -> list[Server]:
    """Every ``server`` block at the http level, with its listens parsed."""
    servers = []
    for directive in http.here("server"):
        if directive.block is None:
            continue
        recorder.use(directive)
        scope = Scope(directive.block, http, recorder, "server", owner=directive)
        ssl_directive = scope.get("ssl")
        ssl_on = ssl_directive is not None and ssl_directive.args[:1] == ("on",)
        if ssl_directive is not None:
            reason = (
                "the old form of `listen ... ssl`: translated so"
                if ssl_on
                else "plain HTTP (the default)"
            )
            recorder.note(ssl_directive, NOT_NEEDED, reason)
        listens = []
        for listen_directive in scope.here("listen"):
            listen = parse_listen(listen_directive, ssl_on)
            if listen is None:
                recorder.note(
                    listen_directive, UNSUPPORTED, "not a TCP address the gateway can listen on"
                )
                continue
            listens.append(listen)
        if not scope.here("listen"):
            # nginx's default: *:80 (the server has no listen directive).
            listens.append(Listen(directive, "0.0.0.0", 80, ssl_on, False, ()))
        elif not listens:
            recorder.note(
                directive, UNSUPPORTED, "no listen the gateway can use: left out", whole_block=True
            )
            continue
        names = [name for d in scope.here("server_name") for name in d.args] or [""]
        servers.append(Server(directive, scope, listens, names, ssl_directive))
    return servers


def choose_listener(servers: list[Server], recorder: Recorder) -> Listener | None:
    """The gateway's listener for ``servers``; the servers left out are noted."""
    if not servers:
        return None
    tls_servers = [server for server in servers if server.tls]
    candidates = tls_servers or servers
    tls = bool(tls_servers)
    default = next(
        (s for s in candidates if any(lst.default and lst.ssl == tls for lst in s.listens)),
        candidates[0],
    )
    wanted = [lst for lst in default.listens if lst.ssl == tls]
    # The default_server listen, else the first; IPv4 before [::] (often ipv6only).
    wanted.sort(key=lambda lst: (not lst.default, ":" in lst.host))
    main = wanted[0]
    listener = Listener(main.host, main.port, tls, default, [], listen_directive=main.directive)
    for server in servers:
        on_port = [
            lst for lst in server.listens if lst.ssl == listener.tls and lst.port == listener.port
        ]
        if on_port:
            listener.servers.append(server)
            _note_listens(server, listener, recorder)
        elif listener.tls and not server.tls and plain_redirect(server, listener, recorder):
            continue
        else:
            kind = "TLS" if server.tls else "plain HTTP"
            ports = ", ".join(str(lst.port) for lst in server.listens)
            recorder.note(
                server.directive,
                UNSUPPORTED,
                f"{kind} server on port {ports} ({_names(server)}) left out: the gateway has "
                f"one {'TLS ' if listener.tls else ''}listener (port {listener.port})"
                + (" and a redirect port" if listener.tls else ""),
                whole_block=True,
            )
    if not listener.tls and listener.listen_directive is not None:
        recorder.note(
            listener.listen_directive,
            INFO,
            f"no TLS server: the gateway serves plain HTTP on port {listener.port} "
            "(listen.tls = false), as nginx did",
        )
    # Mark the chosen servers' names used (hosts are worked out by the translator).
    for server in listener.servers:
        recorder.use(*server.scope.here("server_name"))
    return listener


def _names(server: Server) -> str:
    names = [name for name in server.names if name]
    return "server_name " + " ".join(names) if names else "no server_name"


def _note_listens(server: Server, listener: Listener, recorder: Recorder) -> None:
    for listen in server.listens:
        directive = listen.directive
        if directive is server.directive:
            continue  # the implicit listen *:80
        recorder.use(directive)
        if listen.ssl != listener.tls:
            if not scheme_redirect(server, listen, listener, recorder):
                recorder.note(
                    directive,
                    UNSUPPORTED,
                    f"plain HTTP on port {listen.port} is not served: the gateway's listener "
                    f"is TLS (set listen.redirect_port = {listen.port} to redirect it to https)",
                )
        elif listen.port != listener.port:
            recorder.note(
                directive,
                UNSUPPORTED,
                f"port {listen.port} left out: the gateway listens on one port ({listener.port})",
            )
        elif listen.host != listener.host:
            hint = (
                ' (listen.host = "::" accepts IPv4 too on Linux)'
                if listen.host == "::" and listener.host == "0.0.0.0"
                else ""
            )
            recorder.note(
                directive,
                APPROXIMATED,
                f"the gateway listens on one address: {listener.host}, not {listen.host}{hint}",
            )
        for param in listen.params:
            _note_listen_param(directive, param, listen, listener, recorder)


def _note_listen_param(
    directive: Directive, param: str, listen: Listen, listener: Listener, recorder: Recorder
) -> None:
    name = param.partition("=")[0]
    if name == "ssl":
        return
    if name in ("default_server", "default"):
        if directive is listener.listen_directive:
            recorder.note(directive, INFO, "default_server: its routes take any host")
        else:
            recorder.note(directive, NOT_NEEDED, f"{name}: the gateway has one listener")
    elif name == "http2":
        recorder.note(directive, APPROXIMATED, "http2: the gateway speaks HTTP/1.1 to clients")
    elif name in _LISTEN_NOT_NEEDED:
        recorder.note(directive, NOT_NEEDED, f"{name}: socket tuning of nginx")
    else:
        recorder.note(directive, UNSUPPORTED, f"{param}: not supported by the gateway's listener")
