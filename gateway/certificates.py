"""Certificates per host name on one TLS listener, chosen by the client's SNI.

Like nginx's several ``server`` blocks on 443: each ``[[certificates]]`` entry (or a
certificate obtained by ACME) has its own server SSL context with the same TLS profile;
the listener's default context picks one in its SNI callback - an exact name beats a
wildcard (``*.example.com``: any subdomain, the longest suffix first), which beats the
default certificate. A name that matches nothing gets the default certificate, or with
``reject_unknown`` a handshake alert (unrecognized_name).

Certificates are reloaded when their files change (``reload_changed``), so renewed ones
are served to new handshakes without a restart; open connections keep theirs.

The listener reads the ClientHello in a connection's first bytes (MSG_PEEK, before the
handshake; ``read_hello``) when it needs to: to answer an unknown name with a proper
unrecognized_name alert (the SNI callback refuses too, but asyncio closes without
sending its alert), and for ACME's tls-alpn-01 challenge (RFC 8737), whose handshake
offers the ALPN protocol ``acme-tls/1`` and gets the challenge certificate the ACME
client left in its storage (``challenge_context``).
"""

from __future__ import annotations

import datetime
import ssl
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from gateway.logs import get_logger
from gateway.tls import HTTP1_ALPN, CertificatePair, TLSProfile, harden

__all__ = [
    "ACME_TLS_ALPN",
    "CertificateStore",
    "ClientHello",
    "InstalledCertificate",
    "choose",
    "days_left",
    "iso_time",
    "not_after",
    "offers_acme_alpn",
    "read_hello",
]

logger = get_logger("gateway.certificates")

ACME_TLS_ALPN = b"acme-tls/1"
T = TypeVar("T")


def choose(name: str | None, exact: Mapping[str, T], wildcard: Mapping[str, T]) -> T | None:
    """The entry for the SNI ``name``: exact, then the longest wildcard suffix, else None.

    ``exact`` is keyed by lower-case names, ``wildcard`` by the suffix after ``*.``.
    """
    if not name:
        return None
    name = name.lower().rstrip(".")
    found = exact.get(name)
    if found is not None:
        return found
    dot = name.find(".")
    while dot != -1:
        if dot > 0:
            found = wildcard.get(name[dot + 1 :])
            if found is not None:
                return found
        dot = name.find(".", dot + 1)
    return None


@dataclass(frozen=True)
class ClientHello:
    """What the gateway reads of a TLS ClientHello before the handshake."""

    server_name: str | None
    alpn: tuple[bytes, ...]


def read_hello(data: bytes) -> ClientHello | None:
    """The SNI name and ALPN protocols of the ClientHello at the start of ``data`` (a
    connection's first bytes), or None if it is not one or is cut short. Pure."""
    try:
        return _parse_hello(data)
    except (IndexError, struct.error, ValueError):
        return None


def offers_acme_alpn(hello: bytes) -> str | None:
    """The SNI name of a ClientHello that offers the ALPN protocol ``acme-tls/1``."""
    if ACME_TLS_ALPN not in hello:  # every other client: one substring search
        return None
    parsed = read_hello(hello)
    if parsed is None or ACME_TLS_ALPN not in parsed.alpn:
        return None
    return parsed.server_name


def _parse_hello(data: bytes) -> ClientHello | None:
    if data[0] != 0x16 or data[5] != 0x01:  # handshake record, ClientHello
        return None
    position = 9 + 2 + 32  # record and handshake headers, version, random
    position += 1 + data[position]  # session id
    (length,) = struct.unpack_from("!H", data, position)
    position += 2 + length  # cipher suites
    position += 1 + data[position]  # compression methods
    (extensions_length,) = struct.unpack_from("!H", data, position)
    position += 2
    end = position + extensions_length
    if end > len(data):
        return None  # the rest is still on its way: judge nothing
    name: str | None = None
    alpn: list[bytes] = []
    while position + 4 <= end:
        kind, length = struct.unpack_from("!HH", data, position)
        body = data[position + 4 : position + 4 + length]
        position += 4 + length
        if kind == 0:  # server_name: list length, type 0, name length, name
            (name_length,) = struct.unpack_from("!H", body, 3)
            name = body[5 : 5 + name_length].decode("ascii").lower().rstrip(".")
        elif kind == 16:  # ALPN: list length, then length-prefixed names
            offset = 2
            while offset < len(body):
                size = body[offset]
                alpn.append(body[offset + 1 : offset + 1 + size])
                offset += 1 + size
    return ClientHello(name, tuple(alpn))


@dataclass
class InstalledCertificate:
    """A certificate being served: its names, files, context and expiry."""

    hosts: tuple[str, ...]
    pair: CertificatePair
    context: ssl.SSLContext
    not_after: datetime.datetime
    source: str  # "file" ([[certificates]]) or "acme"
    stamp: tuple[int, int, int, int] | None = None


def _stamp(pair: CertificatePair) -> tuple[int, int, int, int] | None:
    try:
        cert, key = pair.certfile.stat(), pair.keyfile.stat()
    except OSError:
        return None
    return (cert.st_mtime_ns, cert.st_size, key.st_mtime_ns, key.st_size)


def not_after(certfile: Path) -> datetime.datetime:
    """When the first certificate in ``certfile`` expires."""
    return x509.load_pem_x509_certificate(certfile.read_bytes()).not_valid_after_utc


def days_left(when: datetime.datetime | None) -> float | None:
    """Days from now until ``when`` (negative once past), or None."""
    if when is None:
        return None
    now = datetime.datetime.now(datetime.UTC)
    return round((when - now).total_seconds() / 86400, 2)


def iso_time(when: datetime.datetime | None) -> str | None:
    """``when`` as ISO 8601 to the second, or None."""
    return when.isoformat(timespec="seconds") if when is not None else None


def _entry(
    hosts: tuple[str, ...],
    source: str,
    expiry: datetime.datetime | None,
    renewal: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "hosts": list(hosts),
        "source": source,
        "not_after": iso_time(expiry),
        "days_left": days_left(expiry),
        "renewal": dict(renewal) if renewal is not None else None,
    }


class CertificateStore:
    """Server SSL contexts by host name, for one listener's default context (``attach``)."""

    def __init__(
        self,
        profile: TLSProfile = "intermediate",
        *,
        default_pair: CertificatePair | None = None,
        reject_unknown: bool = False,
        challenges: Path | None = None,
        alpn: tuple[str, ...] = HTTP1_ALPN,
    ) -> None:
        self.profile: TLSProfile = profile
        self.alpn = alpn  # what every certificate's context offers (h2 with listen.http2)
        self.default_pair = default_pair
        self.reject_unknown = reject_unknown
        # Where the ACME client leaves tls-alpn-01 certificates (None: no ACME).
        self.challenges = challenges
        self.installed: dict[tuple[str, ...], InstalledCertificate] = {}
        self._exact: dict[str, InstalledCertificate] = {}
        self._wildcard: dict[str, InstalledCertificate] = {}
        # The ACME manager's view per domain (set when it runs), for ``status``.
        self.renewal: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None

    def attach(self, default: ssl.SSLContext) -> None:
        """Choose certificates for handshakes on ``default`` (the listener's context)."""
        default.sni_callback = self._sni

    def status(self) -> list[dict[str, Any]]:
        """What is served, for the status page and metrics: one entry per certificate
        (the default one first), with the ACME manager's renewal state where it has one."""
        renewal = dict(self.renewal()) if self.renewal is not None else {}
        entries: list[dict[str, Any]] = []
        if self.default_pair is not None:
            try:
                expiry: datetime.datetime | None = not_after(self.default_pair.certfile)
            except (OSError, ValueError):
                expiry = None
            entries.append(_entry(("(default)",), "default", expiry, None))
        for certificate in self.installed.values():
            state = (
                renewal.pop(certificate.hosts[0], None) if certificate.source == "acme" else None
            )
            entries.append(
                _entry(certificate.hosts, certificate.source, certificate.not_after, state)
            )
        for domain, state in renewal.items():  # ACME domains still without a certificate
            entries.append(_entry((domain,), "acme", None, state))
        return entries

    def _new_context(
        self, pair: CertificatePair, alpn: Iterable[str] | None = None
    ) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pair.certfile, pair.keyfile)
        harden(context, self.profile, self.alpn)
        if alpn is not None:
            context.set_alpn_protocols(list(alpn))
        return context

    def install(self, hosts: Iterable[str], pair: CertificatePair, source: str = "file") -> None:
        """Serve ``pair`` for ``hosts`` (names or ``*.`` wildcards) from now on.

        Raises ``ssl.SSLError``/``OSError`` (and changes nothing) if the pair does not load.
        """
        key = tuple(host.lower() for host in hosts)
        context = self._new_context(pair)
        entry = InstalledCertificate(key, pair, context, not_after(pair.certfile), source)
        entry.stamp = _stamp(pair)
        self.installed[key] = entry
        self._index()

    def remove(self, hosts: Iterable[str]) -> None:
        """Stop serving the certificate installed for ``hosts``."""
        self.installed.pop(tuple(host.lower() for host in hosts), None)
        self._index()

    def _index(self) -> None:
        self._exact, self._wildcard = {}, {}
        for entry in self.installed.values():
            for host in entry.hosts:
                if host.startswith("*."):
                    self._wildcard[host[2:]] = entry
                else:
                    self._exact[host] = entry

    def entry_for(self, name: str | None) -> InstalledCertificate | None:
        """The certificate served for the SNI ``name`` (None: the default one)."""
        return choose(name, self._exact, self._wildcard)

    def rejects(self, name: str | None) -> bool:
        """True if a handshake for the SNI ``name`` is refused (unknown, and the settings
        say so). No name (a client that connects by IP address) gets the default."""
        return bool(name) and self.reject_unknown and self.entry_for(name) is None

    def _sni(
        self, ssl_object: ssl.SSLObject, name: str | None, context: ssl.SSLContext
    ) -> int | None:
        entry = self.entry_for(name)
        if entry is not None:
            ssl_object.context = entry.context
        elif name and self.reject_unknown:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    def reload_changed(self) -> list[str]:
        """Load again the certificates whose files changed and load; the names reloaded.

        A half-written or mismatched pair is kept out (the old one stays) and retried.
        """
        reloaded = []
        for entry in self.installed.values():
            stamp = _stamp(entry.pair)
            if stamp is None or stamp == entry.stamp:
                continue
            try:
                entry.context.load_cert_chain(entry.pair.certfile, entry.pair.keyfile)
                entry.not_after = not_after(entry.pair.certfile)
            except (ssl.SSLError, OSError, ValueError) as exc:
                logger.warning("certificate for %s not reloaded (will retry): %s", entry.hosts, exc)
                continue
            entry.stamp = stamp
            reloaded.append(",".join(entry.hosts))
        return reloaded

    def challenge_context(self, name: str) -> ssl.SSLContext | None:
        """The tls-alpn-01 context for ``name`` if the ACME client has one pending."""
        if self.challenges is None or "/" in name or name.startswith("."):
            return None
        pair = CertificatePair(self.challenges / f"{name}.crt", self.challenges / f"{name}.key")
        try:
            return self._new_context(pair, alpn=["acme-tls/1"])
        except (ssl.SSLError, OSError):
            return None
