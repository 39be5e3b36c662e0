"""Automatic HTTPS: certificates obtained and renewed from an ACME CA (RFC 8555) by the
gateway itself, with the ``acme`` library of the Certbot project (``gateway[acme]``).

For each domain the manager keeps a certificate in its storage folder (directories
0700, files 0600)::

    STORAGE/account.key                  the account's key (EC P-256)
    STORAGE/account.json                 the account's URL at the CA
    STORAGE/certs/DOMAIN/{cert,key}.pem  the certificate with its chain, and its key
    STORAGE/http-01/TOKEN                answers to pending http-01 challenges
    STORAGE/tls-alpn-01/DOMAIN.{crt,key} certificates for pending tls-alpn-01 challenges
    STORAGE/lock                         held while a process orders (flock)

A stored certificate is served at once (no new order after a restart) and renewed in the
background before it expires: when the CA's ACME Renewal Information says, or
``renew_before_days`` before the end. A failing order is retried with exponential backoff
and the old certificate stays served. Several processes (``--workers N``, replicas that
share the storage) order one at a time: the one holding the lock orders, the others pick
the files up. Challenges are answered by the gateway's own listeners: http-01 by the
redirect listener (``tls.RedirectToHttps``), tls-alpn-01 by the TLS listener, both from
the files above, so any process can answer for the one that orders.

The ACME protocol runs in a worker thread (the library is synchronous); certificates are
installed in the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import random
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.certificates import CertificateStore, iso_time, not_after
from gateway.errors import MissingExtra
from gateway.logs import get_logger
from gateway.tls import CertificatePair

__all__ = [
    "AcmeManager",
    "AcmeOptions",
    "DomainState",
    "backoff_s",
    "domains_of",
    "private_folder",
    "renewal_time",
    "write_private",
]

logger = get_logger("gateway.acme")

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737


@dataclass(frozen=True)
class AcmeOptions:
    """What the ``[acme]`` settings say (plain values)."""

    directory: str
    domains: tuple[str, ...]
    storage: Path
    email: str | None = None
    ca_bundle: Path | None = None
    challenges: tuple[str, ...] = ("http-01", "tls-alpn-01")
    renew_before_days: float = 30.0
    check_interval_s: float = 12 * 3600.0
    retry_min_s: float = 60.0
    retry_max_s: float = 24 * 3600.0
    timeout_s: float = 90.0


@dataclass
class DomainState:
    """What the status page and metrics show for one domain."""

    domain: str
    not_after: datetime.datetime | None = None
    renew_at: datetime.datetime | None = None
    last_error: str | None = None
    failures: int = 0
    next_attempt: datetime.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "renew_at": iso_time(self.renew_at),
            "failures": self.failures,
            "last_error": self.last_error,
            "next_attempt": iso_time(self.next_attempt),
        }


def renewal_time(
    expiry: datetime.datetime, renew_before_days: float, suggested: datetime.datetime | None
) -> datetime.datetime:
    """When to renew a certificate that expires at ``expiry``: ``renew_before_days``
    before, or earlier if the CA suggests so (ARI; naive times are UTC)."""
    fallback = expiry - datetime.timedelta(days=renew_before_days)
    if suggested is None:
        return fallback
    if suggested.tzinfo is None:
        suggested = suggested.replace(tzinfo=datetime.UTC)
    return min(suggested, fallback)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def private_folder(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), made if missing."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) atomically: readers see the old or the new file."""
    private_folder(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    temporary.replace(path)


def backoff_s(failures: int, minimum: float, maximum: float) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row (doubling, jittered)."""
    if failures <= 0:
        return 0.0
    base: float = min(maximum, minimum * 2.0 ** (failures - 1))
    return base * random.uniform(0.9, 1.1)  # noqa: S311 - spreading retries, not secrets


class AcmeManager:
    """Obtains and renews the certificates of ``options.domains`` into ``store``."""

    def __init__(self, options: AcmeOptions, store: CertificateStore) -> None:
        try:
            import acme.client  # noqa: F401 - the extra must be installed
        except ImportError:
            raise MissingExtra("[acme] (automatic HTTPS)", "acme", "acme") from None
        self.options = options
        self.store = store
        self.states = {domain: DomainState(domain) for domain in options.domains}
        self.storage = private_folder(options.storage)
        for folder in ("certs", "http-01", "tls-alpn-01"):
            private_folder(self.storage / folder)
        store.renewal = self.status
        self._wake = asyncio.Event()

    def pair(self, domain: str) -> CertificatePair:
        folder = self.storage / "certs" / domain
        return CertificatePair(folder / "cert.pem", folder / "key.pem")

    def status(self) -> dict[str, dict[str, Any]]:
        """The renewal state of each domain, for the status page."""
        return {domain: state.as_dict() for domain, state in self.states.items()}

    # -- the background loop ---------------------------------------------------------

    async def run(self) -> None:
        """Serve stored certificates, then keep every domain's certificate valid."""
        while True:
            delays = [await self._check(domain) for domain in self.options.domains]
            delay = max(0.5, min(delays, default=self.options.check_interval_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    def wake(self) -> None:
        """Check every domain now (after a reload, in tests)."""
        self._wake.set()

    async def _check(self, domain: str) -> float:
        """Install the stored certificate if new, order one when due; seconds until next."""
        state = self.states[domain]
        pair = self.pair(domain)
        if self._install_stored(domain, pair):
            logger.info(
                "ACME: serving the certificate for %s, valid until %s", domain, state.not_after
            )
        now = _now()
        if state.next_attempt is not None and now < state.next_attempt:
            return (state.next_attempt - now).total_seconds()
        if state.not_after is not None:
            state.renew_at = await asyncio.to_thread(self._renew_at, pair, state.not_after)
            if now < state.renew_at:
                wait = (state.renew_at - now).total_seconds()
                return min(wait, self.options.check_interval_s)
        try:
            ordered = await asyncio.to_thread(self._order_locked, domain)
        except Exception as exc:  # a CA down, a challenge failed, a network error...
            state.failures += 1
            wait = backoff_s(state.failures, self.options.retry_min_s, self.options.retry_max_s)
            state.last_error = f"{type(exc).__name__}: {exc}"[:300]
            state.next_attempt = _now() + datetime.timedelta(seconds=wait)
            logger.warning(
                "ACME: no certificate for %s yet (attempt %d failed, next in %.0f s, %s): %s",
                domain,
                state.failures,
                wait,
                "the current one stays" if state.not_after else "the default one is served",
                state.last_error,
            )
            return wait
        if not ordered:  # another process holds the lock and orders: pick its result up
            return 2.0
        state.failures, state.last_error, state.next_attempt = 0, None, None
        if self._install_stored(domain, pair):
            logger.info(
                "ACME: certificate for %s obtained, valid until %s", domain, state.not_after
            )
        return 0.0

    def _install_stored(self, domain: str, pair: CertificatePair) -> bool:
        """Serve the stored certificate of ``domain`` if it is new; True if it was."""
        state = self.states[domain]
        if not (pair.certfile.is_file() and pair.keyfile.is_file()):
            return False
        try:
            expiry = not_after(pair.certfile)
            if state.not_after == expiry and (domain,) in self.store.installed:
                return False
            self.store.install([domain], pair, source="acme")
        except (ssl.SSLError, OSError, ValueError) as exc:
            logger.warning("ACME: stored certificate for %s not usable: %s", domain, exc)
            return False
        state.not_after = expiry
        return True

    # -- the ACME protocol (in a worker thread) --------------------------------------

    def _renew_at(self, pair: CertificatePair, expiry: datetime.datetime) -> datetime.datetime:
        """When to renew: by the CA's renewal information (ARI) where it offers it."""
        try:
            suggested, _ = self._client().renewal_time(pair.certfile.read_bytes())
        except Exception as exc:  # the CA unreachable: the fixed rule decides
            logger.debug("ACME: no renewal information (%s)", exc)
            suggested = None
        return renewal_time(expiry, self.options.renew_before_days, suggested)

    def _order_locked(self, domain: str) -> bool:
        """Order under the storage lock; False if another process holds it."""
        with _lock(self.storage / "lock") as held:
            if not held:
                return False
            # Another process may have renewed while we waited for the lock.
            pair = self.pair(domain)
            if pair.certfile.is_file() and _now() < self._renew_at(pair, not_after(pair.certfile)):
                return True
            self._order(domain)
            return True

    def _account_key(self) -> Any:
        from josepy.jwk import JWKEC

        path = self.storage / "account.key"
        if not path.is_file():
            key = ec.generate_private_key(ec.SECP256R1())
            write_private(path, _pem(key))
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        return JWKEC(key=loaded)

    def _client(self) -> Any:
        from acme import client, messages

        key = self._account_key()
        verify: bool | str = str(self.options.ca_bundle) if self.options.ca_bundle else True
        net = _network_class()(
            key,
            alg=_es256(),
            verify_ssl=verify,  # requests takes a bundle path too
            user_agent="gateway-acme",
            timeout=int(self.options.timeout_s),
        )
        directory = client.ClientV2.get_directory(self.options.directory, net)
        acme = client.ClientV2(directory, net)
        account = self.storage / "account.json"
        if account.is_file():
            uri = json.loads(account.read_text())["uri"]
            net.account = messages.RegistrationResource(
                uri=uri, body=messages.Registration.from_data()
            )
        return acme

    def _register(self, acme: Any) -> None:
        from acme import errors, messages

        if acme.net.account is not None:
            return
        new = messages.NewRegistration.from_data(
            email=self.options.email, terms_of_service_agreed=True
        )
        try:
            uri = acme.new_account(new).uri
        except errors.ConflictError as exc:  # the key's account exists: reuse it
            uri = exc.location
            acme.net.account = messages.RegistrationResource(
                uri=uri, body=messages.Registration.from_data()
            )
        write_private(self.storage / "account.json", json.dumps({"uri": uri}).encode())

    def _order(self, domain: str) -> None:
        from acme import crypto_util, messages

        acme = self._client()
        self._register(acme)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = crypto_util.make_csr(_pem(key), [domain])
        try:
            order = acme.new_order(csr)
        except messages.Error as exc:
            if exc.typ and exc.typ.endswith(":accountDoesNotExist"):
                # The CA forgot the account (a test CA restarted): register again.
                (self.storage / "account.json").unlink(missing_ok=True)
                acme = self._client()
                self._register(acme)
                order = acme.new_order(csr)
            else:
                raise
        account_key = acme.net.key
        cleanups: list[Callable[[], None]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA remembers an earlier validation
                challb, cleanup = self._prepare(authz, domain, account_key)
                cleanups.append(cleanup)
                acme.answer_challenge(challb, _answer(challb, account_key))
            # The library compares its deadline with datetime.now(): local, naive.
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.options.timeout_s)
            finished = acme.poll_and_finalize(order, deadline)
        finally:
            for cleanup in cleanups:
                cleanup()
        pair = self.pair(domain)
        write_private(pair.keyfile, _pem(key))
        write_private(pair.certfile, finished.fullchain_pem.encode())

    def _prepare(self, authz: Any, domain: str, account_key: Any) -> tuple[Any, Callable[[], None]]:
        """Pick a challenge this gateway can answer and leave its answer in storage."""
        offered = {_kind(challb.chall): challb for challb in authz.body.challenges}
        for kind in self.options.challenges:
            challb = offered.get(kind)
            if challb is None:
                continue
            if kind == "http-01":
                token = challb.chall.encode("token")
                path = self.storage / "http-01" / token
                write_private(path, challb.chall.validation(account_key).encode())
                return challb, lambda path=path: path.unlink(missing_ok=True)
            if kind == "tls-alpn-01":
                token = challb.chall.jobj["token"]
                authorization = f"{token}.{_thumbprint(account_key)}"
                cert, key = _tls_alpn_certificate(domain, authorization)
                folder = self.storage / "tls-alpn-01"
                write_private(folder / f"{domain}.key", key)
                write_private(folder / f"{domain}.crt", cert)

                def remove(folder: Path = folder) -> None:
                    (folder / f"{domain}.crt").unlink(missing_ok=True)
                    (folder / f"{domain}.key").unlink(missing_ok=True)

                return challb, remove
        raise RuntimeError(
            f"the CA offers {sorted(offered)} for {domain}; this gateway answers "
            f"{list(self.options.challenges)} (http-01 needs listen.redirect_port)"
        )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """Hold ``path``'s exclusive lock if nobody else does (True), else yield False."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _es256() -> Any:
    from josepy.jwa import ES256

    return ES256


def _thumbprint(account_key: Any) -> str:
    from josepy.b64 import b64encode

    digest = account_key.public_key().thumbprint(hash_function=hashes.SHA256)
    return b64encode(digest).decode()


def _tls_alpn_certificate(domain: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The self-signed certificate of a tls-alpn-01 answer (RFC 8737 section 3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        # acmeIdentifier: a DER OCTET STRING (tag 4, length 32) of the digest.
        .add_extension(
            x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), _pem(key)


# RFC 8555 section 6.5: a request refused for its nonce is retried with a fresh one. The
# library retries once; a CA that rejects many nonces in a row gets a few more tries.
_NONCE_RETRIES = 5


@functools.cache
def _network_class() -> Any:
    from acme import client, messages

    class Network(client.ClientNetwork):
        def post(self, *args: Any, **kwargs: Any) -> Any:
            for _ in range(_NONCE_RETRIES - 1):
                try:
                    return super().post(*args, **kwargs)
                except messages.Error as error:
                    if error.code != "badNonce":
                        raise
                    logger.debug("ACME: the CA rejected a nonce twice; trying again")
            return super().post(*args, **kwargs)

    return Network


@functools.cache
def _tls_alpn_response_class() -> Any:
    from acme import challenges

    # The library has no class for tls-alpn-01 (any more). Its answer is the object {}:
    # a response with the (unsent) key authorization as its one field, since the library
    # sends an object without fields as an empty POST-as-GET, which validates nothing.
    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        typ = "tls-alpn-01"

    return TLSALPN01Response


def _kind(chall: Any) -> str:
    """A challenge's type; the library keeps those it does not know as plain JSON."""
    jobj = getattr(chall, "jobj", None)
    return str(jobj.get("type")) if isinstance(jobj, dict) else str(chall.typ)


def _answer(challb: Any, account_key: Any) -> Any:
    """The ChallengeResponse that tells the CA to validate ``challb`` now."""
    if _kind(challb.chall) == "tls-alpn-01":
        authorization = f"{challb.chall.jobj['token']}.{_thumbprint(account_key)}"
        return _tls_alpn_response_class()(key_authorization=authorization)
    return challb.chall.response(account_key)


def domains_of(routes_hosts: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The exact host names of the routes (wildcards cannot have http-01/tls-alpn-01)."""
    names: dict[str, None] = {}
    for hosts in routes_hosts:
        for host in hosts:
            if not host.startswith("*.") and not host.startswith("["):
                names[host.lower()] = None
    return tuple(names)
