"""Pure header and URL rules of a reverse proxy (no I/O).

Headers are ASGI-style lists of ``(name, value)`` byte pairs with lower-case names,
as uvicorn delivers them and as httpx and ASGI ``send`` accept them.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from gateway.refusals import refused

__all__ = [
    "CLIENT_TRUST_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "PROTECTED_REQUEST_HEADERS",
    "ForwardingOptions",
    "Headers",
    "client_chain",
    "request_headers",
    "response_headers",
    "rewrite_location",
    "strip_hop_by_hop",
    "strip_root_path",
]

Headers = list[tuple[bytes, bytes]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 7.6.1, plus the non-standard Proxy-Connection that old clients send.
HOP_BY_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Headers a client may send that only a trusted proxy may set.
FORWARDING_HEADERS = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)
# The gateway answers ``Expect: 100-continue`` itself (uvicorn sends the 100).
REQUEST_ONLY_DROPPED = frozenset({b"expect"})
# Headers some frameworks and CDNs treat as the client's address, scheme or URL: taken from
# a peer that is not a trusted proxy, a client could claim any of them.
CLIENT_TRUST_HEADERS = frozenset(
    {
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-uri",
        b"x-original-forwarded-for",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-host",
    }
)
# What a client can never have removed by naming it in Connection: what identifies or
# frames the request, and what the gateway itself vouches for (RFC 9110 7.6.1 lets a
# proxy refuse such nominations). ``ForwardingOptions.protected`` adds more.
PROTECTED_REQUEST_HEADERS = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"via",
        b"x-request-id",
        *FORWARDING_HEADERS,
    }
)


@dataclass(frozen=True, slots=True)
class ForwardingOptions:
    """How the proxy presents a request to the backend."""

    trusted_proxies: Sequence[IPNetwork] = field(default_factory=tuple)
    x_forwarded: bool = True
    forwarded: bool = False
    via: bool = False
    # None keeps the client's Host; a value replaces it (nginx: proxy_set_header Host).
    host: str | None = None
    # Header names a client cannot have removed through Connection, besides
    # PROTECTED_REQUEST_HEADERS (lower case: the request id header, operator-set headers).
    protected: frozenset[bytes] = frozenset()
    # Dropped from peers that are not trusted proxies (lower case).
    strip_untrusted: frozenset[bytes] = CLIENT_TRUST_HEADERS
    # Names with "_" are dropped (nginx underscores_in_headers off): WSGI/CGI backends
    # read X_Forwarded_For as HTTP_X_FORWARDED_FOR, beside the gateway's X-Forwarded-For.
    keep_underscores: bool = False

    def __post_init__(self) -> None:
        # Any set of names will do for a caller; the rules keep them as frozensets.
        object.__setattr__(self, "protected", frozenset(self.protected))
        object.__setattr__(self, "strip_untrusted", frozenset(self.strip_untrusted))


def strip_hop_by_hop(
    headers: Iterable[tuple[bytes, bytes]],
    drop: frozenset[bytes] = frozenset(),
    protected: frozenset[bytes] = frozenset(),
) -> Headers:
    """Remove hop-by-hop headers, ``drop``, and those named in Connection but ``protected``."""
    headers = headers if isinstance(headers, list) else list(headers)
    removed = _union(HOP_BY_HOP_HEADERS, drop)
    nominated = [value for name, value in headers if name == b"connection"]
    if nominated:
        named = {token.strip().lower() for value in nominated for token in value.split(b",")}
        removed = removed | (named - protected)
    return [header for header in headers if header[0] not in removed]


@functools.lru_cache(maxsize=256)
def _union(*sets: frozenset[bytes]) -> frozenset[bytes]:
    """The union of ``sets``, made once per combination (they are constants and settings)."""
    return frozenset().union(*sets)


def _is_trusted(address: str | None, trusted: Sequence[IPNetwork]) -> bool:
    if address is None or not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_chain(
    peer: str | None, x_forwarded_for: Sequence[bytes], trusted: Sequence[IPNetwork]
) -> tuple[list[str], str | None]:
    """Return the X-Forwarded-For chain to send and the real client address.

    From an untrusted peer the incoming chain is discarded (it could be forged);
    from a trusted proxy it is extended.  The real client is the right-most address
    that is not a trusted proxy (nginx ``real_ip_recursive on``).
    """
    if not _is_trusted(peer, trusted):
        return ([peer] if peer else []), peer
    chain = [
        part.strip().decode("latin-1")
        for value in x_forwarded_for
        for part in value.split(b",")
        if part.strip()
    ]
    if peer:
        chain.append(peer)
    real = peer
    for address in reversed(chain):
        real = address
        if not _is_trusted(address, trusted):
            break
    return chain, real


def _forwarded_node(address: str) -> str:
    if ":" in address:  # RFC 7239 6: IPv6 is quoted and bracketed
        return f'"[{address}]"'
    return address


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    peer: str | None,
    scheme: str,
    upstream_host: bytes,
    options: ForwardingOptions,
) -> Headers:
    """Headers to send to the backend for a client request.

    ``peer`` is the address of the connection, ``scheme`` what the client used
    (``http``/``https``), ``upstream_host`` the backend's host[:port] for a request
    without Host or when the route overrides it.
    """
    trusted = _is_trusted(peer, options.trusted_proxies)
    if trusted:
        drop = _union(REQUEST_ONLY_DROPPED, FORWARDING_HEADERS)
    else:
        drop = _union(REQUEST_ONLY_DROPPED, FORWARDING_HEADERS, options.strip_untrusted)
    incoming = headers if isinstance(headers, list) else list(headers)
    out = strip_hop_by_hop(incoming, drop, _union(PROTECTED_REQUEST_HEADERS, options.protected))
    if not options.keep_underscores and b"_" in b"".join([name for name, _ in out]):
        out = [(name, value) for name, value in out if b"_" not in name]
        refused("underscore_header", peer, "dropped a header name with '_' from %s", peer)
    old = {name: value for name, value in incoming if name in FORWARDING_HEADERS}
    xff = [value for name, value in incoming if name == b"x-forwarded-for"] if old else []
    chain, real_ip = client_chain(peer, xff, options.trusted_proxies)

    host = None
    for name, value in out:
        if name == b"host":
            host = value
            break
    if options.host is not None or host is None:
        host = options.host.encode("latin-1") if options.host is not None else upstream_host
        out = [(name, value) for name, value in out if name != b"host"]
        out.insert(0, (b"host", host))

    proto = scheme.encode("latin-1")
    public_host = host
    if trusted:
        proto = old.get(b"x-forwarded-proto", proto)
        public_host = old.get(b"x-forwarded-host", public_host)

    if options.x_forwarded:
        if chain:
            out.append((b"x-forwarded-for", ", ".join(chain).encode("latin-1")))
        if real_ip:
            out.append((b"x-real-ip", real_ip.encode("latin-1")))
        out.append((b"x-forwarded-proto", proto))
        out.append((b"x-forwarded-host", public_host))
    if options.forwarded:
        element = f'proto={proto.decode("latin-1")};host="{public_host.decode("latin-1")}"'
        if peer:
            element = f"for={_forwarded_node(peer)};{element}"
        if trusted and b"forwarded" in old:
            out.append((b"forwarded", old[b"forwarded"] + b", " + element.encode("latin-1")))
        else:
            out.append((b"forwarded", element.encode("latin-1")))
    if options.via:
        via = [value for name, value in incoming if name == b"via"]
        out = [(name, value) for name, value in out if name != b"via"]
        out.append((b"via", b", ".join([*via, b"1.1 gateway"])))
    return out


def response_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    upstream_base: str | None = None,
    public_base: str | None = None,
    via: bool = False,
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """Headers to send to the client for a backend response, without ``drop``.

    Location and Refresh that point at ``upstream_base`` are rewritten to
    ``public_base`` (nginx ``proxy_redirect default``).
    """
    # Clients of httpx see names as the backend spelled them; ASGI wants lower case.
    out = strip_hop_by_hop([(name.lower(), value) for name, value in headers], drop)
    if upstream_base is not None and public_base is not None:
        out = [
            (name, rewrite_location(value, upstream_base, public_base))
            if name in (b"location", b"content-location", b"refresh")
            else (name, value)
            for name, value in out
        ]
    if via:
        out.append((b"via", b"1.1 gateway"))
    return out


def rewrite_location(value: bytes, upstream_base: str, public_base: str) -> bytes:
    """Rewrite a Location (or Refresh ``N; url=...``) value from backend to public URL.

    ``upstream_base`` is ``scheme://host[:port][/path]`` of the backend and
    ``public_base`` the URL prefix clients use for the same place.  Anything that
    does not point at the backend is returned unchanged.
    """
    text = value.decode("latin-1")
    prefix, sep, url = _split_refresh(text)
    base = upstream_base.rstrip("/")
    candidates = [base]
    scheme, _, rest = base.partition("://")
    # http://backend:80/x and http://backend/x are the same place.
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    host, slash, path = rest.partition("/")
    if default and host.endswith(default):
        candidates.append(f"{scheme}://{host.removesuffix(default)}{slash}{path}")
    elif default:
        candidates.append(f"{scheme}://{host}{default}{slash}{path}")
    for candidate in candidates:
        if url == candidate or url.startswith((candidate + "/", candidate + "?")):
            url = public_base.rstrip("/") + url[len(candidate) :]
            if not url.startswith(("http://", "https://")) and not url.startswith("/"):
                url = "/" + url
            return (prefix + sep + url).encode("latin-1")
    return value


def _split_refresh(text: str) -> tuple[str, str, str]:
    """Split ``5; url=http://x/`` into ``5; ``, ``url=``, ``http://x/``; a URL has no prefix."""
    lower = text.lower()
    index = lower.find("url=")
    if index == -1 or ";" not in text[:index]:
        return "", "", text
    return text[:index], text[index : index + 4], text[index + 4 :]


def strip_root_path(raw_path: bytes, root_path: str) -> bytes:
    """Remove the mount prefix ``root_path`` (decoded) from ``raw_path`` (encoded).

    The prefix is matched segment by segment on the decoded form, so ``/api%2Dv1/x``
    under root path ``/api-v1`` becomes ``/x``; the rest keeps its exact encoding.
    A path that does not start with the prefix is returned unchanged.
    """
    if not root_path or root_path == "/":
        return raw_path or b"/"
    want = root_path.rstrip("/").encode("utf-8")
    if raw_path.startswith(want) and (len(raw_path) == len(want) or raw_path[len(want)] == 0x2F):
        rest = raw_path[len(want) :]
        return rest or b"/"
    # Slow path: the prefix is percent-encoded in the raw path.
    position = 0
    decoded = b""
    while decoded != want:
        if position >= len(raw_path) or len(decoded) > len(want):
            return raw_path
        end = raw_path.find(b"/", position + 1)
        end = len(raw_path) if end == -1 else end
        decoded += unquote_to_bytes(raw_path[position:end])
        position = end
        if not want.startswith(decoded):
            return raw_path
    return raw_path[position:] or b"/"
