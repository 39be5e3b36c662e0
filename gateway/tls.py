"""TLS: server SSL context (Mozilla's intermediate or modern profile), development
certificates, the HTTP->HTTPS redirect app."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.types import Receive, Scope, Send

from gateway.request_rules import split_host
from gateway.responses import send_text

__all__ = [
    "DEV_CERT_NAMES",
    "HTTP1_ALPN",
    "HTTP2_ALPN",
    "INTERMEDIATE_CIPHERS",
    "TLS_GROUPS",
    "CertificatePair",
    "RedirectToHttps",
    "TLSProfile",
    "check_pair",
    "describe_profile",
    "dev_certificate",
    "harden",
    "https_url",
    "openssl_groups_config",
    "server_context",
    "write_self_signed",
]

DEV_CERT_NAMES = ("localhost", "127.0.0.1", "::1")
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
DEV_CERT_DAYS = 365


@dataclass(frozen=True, slots=True)
class CertificatePair:
    """A certificate chain file and its private key file (PEM)."""

    certfile: Path
    keyfile: Path


TLSProfile = Literal["intermediate", "modern"]

# Mozilla's server side TLS guideline (v5.7), without the DHE suites: TLS 1.2 with
# ECDHE key exchange and AEAD ciphers only. TLS 1.3 suites are OpenSSL's, all AEAD.
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# The key exchange groups of the guideline. Python has no call to set a list of them on
# a context (set_ecdh_curve sets exactly one), so they reach OpenSSL through a
# configuration file read when the process starts (see openssl_groups_config).
TLS_GROUPS = "X25519:P-256:P-384"


def check_pair(pair: CertificatePair) -> str | None:
    """Why ``pair`` does not load into an SSL context (wrong key, not PEM, ...), or None."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(pair.certfile, pair.keyfile)
    except (ssl.SSLError, OSError) as exc:
        return f"cannot load certificate and key: {exc}"
    return None


def describe_profile(profile: TLSProfile) -> str:
    """One line saying what ``profile`` allows, for ``gateway check`` and the log."""
    if profile == "modern":
        return f"modern: TLS 1.3 only, groups {TLS_GROUPS}"
    return f"intermediate: TLS 1.2 (ECDHE + AEAD ciphers) and TLS 1.3, groups {TLS_GROUPS}"


HTTP1_ALPN = ("http/1.1",)
HTTP2_ALPN = ("h2", "http/1.1")


def harden(
    context: ssl.SSLContext,
    profile: TLSProfile = "intermediate",
    alpn: tuple[str, ...] = HTTP1_ALPN,
) -> ssl.SSLContext:
    """Apply Mozilla's ``intermediate`` or ``modern`` profile and offer ``alpn`` (http/1.1,
    or h2 first with ``listen.http2``).

    The server's cipher order is kept (Python's default for server contexts): every
    suite allowed is strong, and AES-128-GCM first is the cheapest of them.
    """
    if profile == "modern":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(alpn))
    return context


def server_context(pair: CertificatePair, profile: TLSProfile = "intermediate") -> ssl.SSLContext:
    """A server SSL context for ``pair`` with the TLS ``profile``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.certfile, pair.keyfile)
    return harden(context, profile)


def openssl_groups_config() -> str:
    """An OpenSSL configuration that limits every TLS context to ``TLS_GROUPS``.

    OpenSSL reads it (``OPENSSL_CONF``) when Python's ``ssl`` module is first imported,
    so it must be in the environment before the process starts; ``gateway run`` and
    ``gateway demo`` restart themselves once with it.
    """
    return (
        "# Written by the gateway: Mozilla's TLS key exchange groups for every context.\n"
        "openssl_conf = gateway_openssl_init\n\n"
        "[gateway_openssl_init]\nssl_conf = gateway_ssl\n\n"
        "[gateway_ssl]\nsystem_default = gateway_tls_defaults\n\n"
        f"[gateway_tls_defaults]\nGroups = {TLS_GROUPS}\nMinProtocol = TLSv1.2\n"
    )


def write_self_signed(
    folder: Path, names: tuple[str, ...] = DEV_CERT_NAMES, days: int = DEV_CERT_DAYS
) -> CertificatePair:
    """Write a self-signed certificate for ``names`` (hosts and IPs) and its key into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = CertificatePair(folder / "cert.pem", folder / "key.pem")
    pair.certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(pair.keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key_pem)
    return pair


def dev_certificate(folder: Path) -> tuple[CertificatePair, bool]:
    """The development certificate in ``folder``, made if missing or expiring; (pair, made)."""
    pair = CertificatePair(folder / "cert.pem", folder / "key.pem")
    if pair.certfile.is_file() and pair.keyfile.is_file():
        try:
            cert = x509.load_pem_x509_certificate(pair.certfile.read_bytes())
            remaining = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
            if remaining > datetime.timedelta(days=7):
                return pair, False
        except ValueError:
            pass
    return write_self_signed(folder), True


def https_url(host_header: str, https_port: int, target: str) -> str | None:
    """The https URL for a request that arrived over plain HTTP, or None when its Host is
    not a usable ``host[:port]`` or its target is not a path (never a URL elsewhere)."""
    parts = split_host(host_header.encode("latin-1"))
    if parts is None or not target.startswith("/"):
        return None
    host = parts[0].decode("ascii")
    port = "" if https_port == 443 else f":{https_port}"
    return f"https://{host}{port}{target}"


class RedirectToHttps:
    """ASGI app for the plain-HTTP listener: 308 to https; ``ws://`` is refused with advice."""

    def __init__(self, https_port: int, acme_answers: Path | None = None) -> None:
        self.https_port = https_port
        # ACME http-01 answers, one file per token (gateway.acme writes them).
        self.acme_answers = acme_answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        if (
            scope["type"] == "http"
            and self.acme_answers is not None
            and scope["path"].startswith(ACME_CHALLENGE_PATH)
        ):
            await self._acme_answer(scope, send, scope["path"][len(ACME_CHALLENGE_PATH) :])
            return
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        url = https_url(hosts[0], self.https_port, target) if len(hosts) == 1 else None
        if url is None:
            # Without a usable Host there is no https URL to send anyone to.
            await send_text(scope, send, 400, "400 Bad Request: no usable Host to redirect to")
            return
        if scope["type"] == "http":
            body = f"Moved to {url}\n".encode()
            headers = [
                (b"location", url.encode("latin-1")),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 308, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        # A ws:// handshake on the plain port: the page must use wss:// (the classic mistake).
        wss = "wss://" + url.removeprefix("https://")
        message = (
            f"This WebSocket endpoint requires TLS: connect to {wss} instead of ws://. "
            "A page served over https must open wss:// URLs "
            "(derive the scheme from location.protocol).\n"
        ).encode()
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 426,
                    "headers": [
                        # RFC 2817: 426 names the protocol to switch to.
                        (b"upgrade", b"TLS/1.2, HTTP/1.1"),
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(message)).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": message})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "use wss://"})

    async def _acme_answer(self, scope: Scope, send: Send, token: str) -> None:
        """Answer an ACME http-01 validation for ``token`` (or 404)."""
        answer = None
        if _TOKEN.fullmatch(token) and self.acme_answers is not None:
            try:
                answer = (self.acme_answers / token).read_bytes()
            except OSError:
                answer = None
        if answer is None:
            await send_text(scope, send, 404)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})
