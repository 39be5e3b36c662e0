"""nginx ``upstream`` blocks -> the gateway's ``[upstreams.NAME]`` pools.

::

    upstream app {                        [upstreams.app]
        least_conn;                       targets = [{ url = "http://10.0.0.1:8080", weight = 3 },
        server 10.0.0.1:8080 weight=3;               { url = "unix:/run/app.sock" }]
        server unix:/run/app.sock;        balance = "least_conn"
        keepalive 64;                     keepalive = 64
    }

An nginx upstream has no scheme and no path: those come from the ``proxy_pass`` that
names it.  A pool is made per (name, scheme, base path) in use; the first one gets the
upstream's name, others ``NAME_2``, ... .  ``max_fails``/``fail_timeout`` are per pool
here: when servers differ, the most common value is taken and the difference noted.
Servers marked ``down`` are left out; ``backup`` servers too (the gateway has no backup
targets), unless there is nothing else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.nginx.context import Recorder
from gateway.nginx.notes import APPROXIMATED, INFO, NOT_NEEDED, UNSUPPORTED
from gateway.nginx.parser import Directive
from gateway.nginx.values import parse_time_s

__all__ = ["Pools"]

NGINX_MAX_FAILS = 1
NGINX_FAIL_TIMEOUT_S = 10.0
_BACKEND_KEEPALIVE = "the gateway's pool manages idle backend connections itself"
_CLIENT_ADDRESS_KEYS = frozenset({"$remote_addr", "$binary_remote_addr"})


@dataclass
class _Server:
    directive: Directive
    address: str
    weight: int = 1
    max_fails: int | None = None
    fail_timeout_s: float | None = None
    backup: bool = False
    down: bool = False


@dataclass
class _Group:
    servers: list[_Server] = field(default_factory=list)
    balance: str = "round_robin"
    keepalive: int | None = None
    keepalive_expiry_s: float | None = None
    usable: bool = True


class Pools:
    """The pools the translated routes use, made from the configuration's upstream blocks."""

    def __init__(self, blocks: dict[str, Directive], recorder: Recorder) -> None:
        self.blocks = blocks
        self.recorder = recorder
        self.pools: dict[str, dict[str, Any]] = {}
        self._groups: dict[str, _Group] = {}
        self._names: dict[tuple[str, str, str, tuple[tuple[str, Any], ...]], str] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.blocks

    def reference(
        self,
        name: str,
        scheme: str,
        base_path: str,
        used_by: Directive,
        tls: dict[str, Any] | None = None,
    ) -> str | None:
        """The pool for ``proxy_pass scheme://name/base_path``; None if it has no targets."""
        tls = tls or {}
        key = (name, scheme, base_path, tuple(sorted(tls.items())))
        if key in self._names:
            return self._names[key]
        group = self._group(name)
        if not group.usable:
            return None
        pool_name = self._pool_name(name)
        if pool_name != name:
            self.recorder.note(
                used_by,
                INFO,
                f"upstream {name} is used with other settings (scheme, path, TLS) here: "
                f"pool {pool_name}",
            )
        self._names[key] = pool_name
        self.pools[pool_name] = self._pool(group, scheme, base_path, self.blocks[name]) | tls
        return pool_name

    def url_pool(
        self, scheme: str, authority: str, base_path: str, tls: dict[str, Any], used_by: Directive
    ) -> str:
        """A one-target pool for a backend URL that needs pool settings (TLS verification)."""
        key = ("url:" + authority, scheme, base_path, tuple(sorted(tls.items())))
        if key in self._names:
            return self._names[key]
        host = authority.rpartition("@")[2].split(":")[0].strip("[]") or "backend"
        pool_name = self._pool_name("".join(c if c.isalnum() or c in "-_" else "_" for c in host))
        self._names[key] = pool_name
        url = f"{scheme}://{authority}{base_path}"
        self.pools[pool_name] = {"targets": [{"url": url}], "balance": "round_robin", **tls}
        self.recorder.note(used_by, INFO, f"a pool for its TLS settings: {pool_name}")
        return pool_name

    def unix_socket(self, socket_path: str, base_path: str, used_by: Directive) -> str:
        """A pool for ``proxy_pass http://unix:/path.sock:/base`` (routes take URLs or pools)."""
        key = ("unix:" + socket_path, "http", base_path, ())
        if key in self._names:
            return self._names[key]
        stem = socket_path.rstrip("/").rsplit("/", 1)[-1].partition(".")[0] or "unix"
        pool_name = self._pool_name("".join(c if c.isalnum() or c in "-_" else "_" for c in stem))
        url = f"unix:{socket_path}" + (f":{base_path}" if base_path else "")
        self.recorder.note(
            used_by, INFO, f"a Unix socket backend: pool {pool_name} with target {url}"
        )
        self._names[key] = pool_name
        self.pools[pool_name] = {"targets": [{"url": url}], "balance": "round_robin"}
        return pool_name

    def _pool_name(self, name: str) -> str:
        if name not in self.pools:
            return name
        number = 2
        while f"{name}_{number}" in self.pools:
            number += 1
        return f"{name}_{number}"

    def _group(self, name: str) -> _Group:
        if name not in self._groups:
            self._groups[name] = self._read(self.blocks[name])
        return self._groups[name]

    def _read(self, block: Directive) -> _Group:
        recorder = self.recorder
        recorder.use(block)
        group = _Group()
        for directive in block.block or ():
            name, args = directive.name, directive.args
            if name == "server" and args:
                server = self._server(directive)
                if server is not None:
                    group.servers.append(server)
            elif name == "least_conn":
                group.balance = "least_conn"
                recorder.use(directive)
            elif name == "ip_hash":
                group.balance = "ip_hash"
                recorder.use(directive)
            elif name == "hash" and args[:1] and args[0] in _CLIENT_ADDRESS_KEYS:
                group.balance = "ip_hash"
                recorder.note(directive, APPROXIMATED, "balanced by client address (ip_hash)")
            elif name == "hash":
                recorder.note(directive, UNSUPPORTED, "only client-address hashing (ip_hash)")
            elif name == "random":
                group.balance = "least_conn" if "least_conn" in args else "round_robin"
                recorder.note(directive, APPROXIMATED, f"balanced by {group.balance}")
            elif name == "keepalive" and len(args) == 1 and args[0].isdigit():
                group.keepalive = int(args[0])
                recorder.use(directive)
            elif name == "keepalive_timeout" and parse_time_s(" ".join(args)):
                group.keepalive_expiry_s = parse_time_s(" ".join(args))
                recorder.use(directive)
            elif name in ("keepalive_requests", "keepalive_time"):
                recorder.note(directive, NOT_NEEDED, _BACKEND_KEEPALIVE)
            elif name == "zone":
                recorder.note(directive, NOT_NEEDED, "shared memory between nginx workers")
            else:
                recorder.note(directive, UNSUPPORTED, "not supported in the gateway's pools")
        primaries = [s for s in group.servers if not s.down and not s.backup]
        if not primaries:
            backups = [s for s in group.servers if not s.down]
            if backups:
                for server in backups:
                    server.backup = False
                    recorder.note(
                        server.directive, APPROXIMATED, "only backup servers: used as targets"
                    )
            else:
                group.usable = False
                recorder.note(block, UNSUPPORTED, "no usable server in this upstream")
        return group

    def _server(self, directive: Directive) -> _Server | None:
        recorder = self.recorder
        recorder.use(directive)
        server = _Server(directive, directive.args[0])
        for param in directive.args[1:]:
            key, _, value = param.partition("=")
            if key == "weight" and value.isdigit() and int(value) > 0:
                server.weight = int(value)
            elif key == "max_fails" and value.isdigit():
                server.max_fails = int(value)
            elif key == "fail_timeout" and parse_time_s(value) is not None:
                server.fail_timeout_s = parse_time_s(value)
            elif key == "backup":
                server.backup = True
                recorder.note(
                    directive, UNSUPPORTED, "backup: the gateway has no backup targets; left out"
                )
            elif key == "down":
                server.down = True
                recorder.note(directive, INFO, "down: left out, as nginx does")
            elif key == "resolve":
                recorder.note(directive, NOT_NEEDED, "resolve: names are resolved per connection")
            else:
                recorder.note(directive, UNSUPPORTED, f"{param}: not supported; ignored")
        return server

    def _pool(self, group: _Group, scheme: str, base_path: str, block: Directive) -> dict[str, Any]:
        servers = [s for s in group.servers if not s.down and not s.backup]
        targets = []
        for server in servers:
            target: dict[str, Any] = {"url": _url(server.address, scheme, base_path)}
            if server.weight != 1:
                target["weight"] = server.weight
            targets.append(target)
        pool: dict[str, Any] = {"targets": targets, "balance": group.balance}
        for key, attribute, default in (
            ("max_fails", "max_fails", NGINX_MAX_FAILS),
            ("fail_timeout_s", "fail_timeout_s", NGINX_FAIL_TIMEOUT_S),
        ):
            given = [getattr(s, attribute) for s in servers]
            if all(value is None for value in given):
                continue
            values = [default if value is None else value for value in given]
            common = Counter(values).most_common(1)[0][0]
            pool[key] = float(common) if key == "fail_timeout_s" else common
            if len(set(values)) > 1:
                self.recorder.note(
                    block,
                    APPROXIMATED,
                    f"{attribute.removesuffix('_s').replace('_', ' ')} differs between servers: "
                    f"the pool uses the most common value, {common}",
                )
        if group.keepalive is not None:
            pool["keepalive"] = group.keepalive
        if group.keepalive_expiry_s is not None:
            pool["keepalive_expiry_s"] = group.keepalive_expiry_s
        return pool


def _url(address: str, scheme: str, base_path: str) -> str:
    if address.startswith("unix:"):
        return address + (f":{base_path}" if base_path else "")
    host = address
    has_port = (
        address.rsplit("]", 1)[-1].count(":") == 1 if address.startswith("[") else (":" in address)
    )
    if not has_port and scheme == "https":
        host += ":80"  # nginx's default port for upstream servers, whatever the scheme
    return f"{scheme}://{host}{base_path}"
