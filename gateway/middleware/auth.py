"""Simple gates for routes: HTTP Basic auth (users and password hashes) and bearer tokens.

Both answer ``401 Unauthorized`` with a ``WWW-Authenticate`` challenge before the
wrapped app runs, for HTTP requests and WebSocket handshakes alike (browsers send
cached Basic credentials on handshakes; other clients can send any header).  The
``Authorization`` header is the gateway's: it is removed before the request goes on,
unless ``forward_authorization=True``.  Credentials are compared in constant time and
never logged - not even the user name of a failed attempt, which is often a password
typed into the wrong field.

Password hashes use PBKDF2-HMAC-SHA256 in Django's self-describing format,
``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>``; make one with::

    python -c "from gateway.middleware.auth import hash_password; print(hash_password('s3cret'))"

A slow hash is the point of a password hash, and Basic auth sends the password with
every request, so verification runs in a worker thread (the event loop keeps serving)
and a successful check is remembered for ``cache_ttl_s`` under a keyed digest of the
credentials, as Caddy does.  Unknown users cost the same work as wrong passwords.
Since every wrong password costs a hash, a slow hash is also a lever on the gateway's
CPU: a client address with ``max_failures`` failures within ``failure_window_s`` gets
429 before any hash is computed, and at most ``max_concurrent_hashes`` hashes run at a
time (a longer queue is refused with 429) - remembered good credentials never wait.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.logs import get_logger
from gateway.responses import send_text

__all__ = [
    "BasicAuthMiddleware",
    "BearerTokenMiddleware",
    "FailureLimiter",
    "TooManyFailures",
    "hash_password",
    "parse_basic",
    "token_matches",
    "verify_password",
]

logger = get_logger("gateway.auth")

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
_SALT_ALPHABET = string.ascii_letters + string.digits
_CACHE_SIZE = 1024


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: str = "") -> str:
    """``pbkdf2_sha256$iterations$salt$hash`` for ``password`` (a random salt by default)."""
    if iterations < 1:
        raise ValueError(f"iterations: must be at least 1, got {iterations!r}")
    salt = salt or "".join(secrets.choice(_SALT_ALPHABET) for _ in range(22))
    if "$" in salt:
        raise ValueError("salt: must not contain '$'")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{ALGORITHM}${iterations}${salt}${base64.b64encode(digest).decode('ascii')}"


def _split_hash(encoded: str) -> tuple[int, str, str]:
    algorithm, _, rest = encoded.partition("$")
    iterations, _, rest = rest.partition("$")
    salt, _, digest = rest.partition("$")
    if algorithm != ALGORITHM or not iterations.isdigit() or int(iterations) < 1:
        raise ValueError(f"not a {ALGORITHM}$iterations$salt$hash string")
    if not salt or not digest:
        raise ValueError(f"not a {ALGORITHM}$iterations$salt$hash string")
    try:
        base64.b64decode(digest, validate=True)
    except binascii.Error:
        raise ValueError("the hash part is not base64") from None
    return int(iterations), salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches ``encoded`` (made by ``hash_password``); constant time."""
    try:
        iterations, salt, digest = _split_hash(encoded)
    except ValueError:
        return False
    computed = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return hmac.compare_digest(base64.b64encode(computed), digest.encode("ascii"))


def _credentials(value: bytes, scheme: bytes) -> bytes | None:
    """The credentials after ``scheme`` in an Authorization value, or None."""
    parts = value.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != scheme:
        return None
    return parts[1].strip()


def parse_basic(value: bytes) -> tuple[str, str] | None:
    """``(user, password)`` of a ``Basic`` Authorization value (RFC 7617, UTF-8), or None."""
    credentials = _credentials(value, b"basic")
    if credentials is None:
        return None
    try:
        user, colon, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


def _challenge(scheme: str, realm: str | None, *params: str) -> bytes:
    fields = ([f'realm="{realm}"'] if realm is not None else []) + list(params)
    return (scheme + (" " + ", ".join(fields) if fields else "")).encode()


def _check_realm(realm: str | None) -> None:
    if realm is not None and (
        not realm.isprintable() or '"' in realm or "\\" in realm or not realm.isascii()
    ):
        raise ValueError(f"realm: {realm!r} must be printable ASCII without quotes or backslashes")


class TooManyFailures(Exception):
    """A client has failed too often (or the hashing queue is full): answer 429."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class FailureLimiter:
    """Failed attempts per client address: ``max_failures`` within ``window_s`` block the
    address until the window of its first counted failure has passed. Remembers at most
    ``max_clients`` addresses (the oldest forgotten first). Pure: the caller gives the time.
    """

    def __init__(self, max_failures: int, window_s: float, max_clients: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def blocked(self, address: str, now: float) -> bool:
        """Whether ``address`` may not try again before its window ends."""
        entry = self._failures.get(address)
        if entry is None:
            return False
        started, count = entry
        if now - started >= self.window_s:
            del self._failures[address]
            return False
        return count >= self.max_failures

    def retry_after_s(self, address: str, now: float) -> float:
        """Seconds until ``address`` may try again."""
        entry = self._failures.get(address)
        return 0.0 if entry is None else max(0.0, entry[0] + self.window_s - now)

    def failed(self, address: str, now: float) -> None:
        """Count a failed attempt of ``address``."""
        started, count = self._failures.get(address, (now, 0))
        if now - started >= self.window_s:
            started, count = now, 0
        self._failures[address] = (started, count + 1)
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


class _Gate:
    """What both gates share: find the header, refuse with 401, strip and pass on."""

    app: ASGIApp
    forward_authorization: bool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        refusal: str | None = (
            "no credentials" if not values else "more than one Authorization header"
        )
        challenge = self.challenge(None)
        if len(values) == 1:
            try:
                refusal, challenge = await self.check(scope, values[0])
            except TooManyFailures as exc:
                await self._too_many(scope, send, exc.retry_after_s)
                return
        if refusal is not None:
            client = scope.get("client")
            logger.info(
                "auth refused: client=%s path=%s reason=%s",
                client[0] if client else "-",
                scope.get("path", ""),
                refusal,
            )
            await send_text(scope, send, 401, headers=[(b"www-authenticate", challenge)])
            return
        if not self.forward_authorization:
            headers = [
                (name, value) for name, value in scope["headers"] if name != b"authorization"
            ]
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)

    async def _too_many(self, scope: Scope, send: Send, retry_after_s: float) -> None:
        client = scope.get("client")
        logger.info(
            "auth refused: client=%s path=%s reason=too many failed attempts",
            client[0] if client else "-",
            scope.get("path", ""),
        )
        retry_after = str(max(1, math.ceil(retry_after_s))).encode()
        await send_text(
            scope,
            send,
            429,
            "429 Too Many Requests: too many failed logins, try again later",
            headers=[(b"retry-after", retry_after)],
        )

    def challenge(self, error: str | None) -> bytes:
        raise NotImplementedError

    async def check(self, scope: Scope, value: bytes) -> tuple[str | None, bytes]:
        """``(refusal reason or None, challenge)`` for one Authorization value."""
        raise NotImplementedError


class BasicAuthMiddleware(_Gate):
    """HTTP Basic auth against ``users`` (name -> ``hash_password`` string).

    On success the user name is put in ``scope["state"]["user"]`` for later layers.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        users: Mapping[str, str],
        realm: str,
        forward_authorization: bool = False,
        cache_ttl_s: float = 300.0,
        # Failed attempts per client address within failure_window_s before 429 (checked
        # before the hash is computed), and password hashes computed at once (all clients).
        max_failures: int = 10,
        failure_window_s: float = 60.0,
        max_concurrent_hashes: int = 2,
    ) -> None:
        _check_realm(realm)
        iterations = 1
        for user, encoded in users.items():
            if not user or ":" in user:
                raise ValueError(f"users: {user!r} is not a valid user name (empty or has ':')")
            try:
                iterations = max(iterations, _split_hash(encoded)[0])
            except ValueError as exc:
                raise ValueError(f"users: the password hash of {user!r} is {exc}") from None
        self.app = app
        self.users = dict(users)
        self.realm = realm
        self.forward_authorization = forward_authorization
        self.cache_ttl_s = cache_ttl_s
        # Checked for unknown users, so that they take as long as wrong passwords.
        self._decoy = f"{ALGORITHM}${iterations}${secrets.token_hex(11)}$AAAA"
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        if max_failures < 1 or failure_window_s <= 0 or max_concurrent_hashes < 1:
            raise ValueError("max_failures, failure_window_s, max_concurrent_hashes must be > 0")
        self.failures = FailureLimiter(max_failures, failure_window_s)
        # Each hash is about a CPU-second's fraction; a bound keeps a flood of wrong
        # passwords from taking every core. Waiting beyond the queue bound is refused.
        self._hashing = asyncio.Semaphore(max_concurrent_hashes)
        self._max_waiting = 8 * max_concurrent_hashes
        self._waiting = 0

    def __repr__(self) -> str:
        return f"BasicAuthMiddleware(users={sorted(self.users)!r}, realm={self.realm!r})"

    def challenge(self, error: str | None) -> bytes:
        return _challenge("Basic", self.realm, 'charset="UTF-8"')

    async def check(self, scope: Scope, value: bytes) -> tuple[str | None, bytes]:
        credentials = parse_basic(value)
        if credentials is None:
            return "malformed Basic credentials", self.challenge(None)
        user, password = credentials
        client = scope.get("client")
        address = client[0] if client else "-"
        if not self._cached(user, password):
            now = time.monotonic()
            if self.failures.blocked(address, now):
                raise TooManyFailures(self.failures.retry_after_s(address, now))
            if self._waiting >= self._max_waiting:
                raise TooManyFailures(1.0)
            if not await self._verify(user, password):
                self.failures.failed(address, time.monotonic())
                return "wrong user or password", self.challenge(None)
        scope.setdefault("state", {})["user"] = user
        return None, b""

    def _cached(self, user: str, password: str) -> bool:
        """A recent success with these credentials: no hash needed."""
        key = hmac.digest(self._cache_key, f"{user}\0{password}".encode(), "sha256")
        expires = self._verified.get(key)
        if expires is not None and expires > time.monotonic() and user in self.users:
            self._verified.move_to_end(key)
            return True
        return False

    async def _verify(self, user: str, password: str) -> bool:
        key = hmac.digest(self._cache_key, f"{user}\0{password}".encode(), "sha256")
        now = time.monotonic()
        encoded = self.users.get(user, self._decoy)
        self._waiting += 1
        try:
            async with self._hashing:
                ok = await asyncio.to_thread(verify_password, password, encoded)
        finally:
            self._waiting -= 1
        if not ok or user not in self.users:
            return False
        if self.cache_ttl_s > 0:
            self._verified[key] = now + self.cache_ttl_s
            while len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        return True


class BearerTokenMiddleware(_Gate):
    """Accept requests carrying ``Authorization: Bearer <token>`` with one of ``tokens``.

    Entries are the tokens themselves, or ``sha256:<hex digest>`` of a token so that
    the configuration need not hold the secret.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: Collection[str],
        realm: str | None = None,
        forward_authorization: bool = False,
    ) -> None:
        if isinstance(tokens, str):
            raise ValueError("tokens: expected a list of tokens, not one string")
        _check_realm(realm)
        digests = []
        for index, token in enumerate(tokens):
            if token.startswith("sha256:"):
                try:
                    digest = bytes.fromhex(token.removeprefix("sha256:"))
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise ValueError(f"tokens[{index}]: sha256: needs 64 hex digits")
            elif not token or token != token.strip():
                raise ValueError(f"tokens[{index}]: empty or has surrounding whitespace")
            else:
                digest = hashlib.sha256(token.encode()).digest()
            digests.append(digest)
        self.app = app
        self.realm = realm
        self.forward_authorization = forward_authorization
        self._digests = tuple(digests)

    def __repr__(self) -> str:
        return f"BearerTokenMiddleware(tokens=<{len(self._digests)}>, realm={self.realm!r})"

    def challenge(self, error: str | None) -> bytes:
        return _challenge("Bearer", self.realm, *([f'error="{error}"'] if error else []))

    async def check(self, scope: Scope, value: bytes) -> tuple[str | None, bytes]:
        token = _credentials(value, b"bearer")
        if not token:
            return "malformed Bearer credentials", self.challenge("invalid_request")
        if not token_matches(token, self._digests):
            return "unknown token", self.challenge("invalid_token")
        return None, b""


def token_matches(token: bytes, digests: Collection[bytes]) -> bool:
    """True if ``token``'s SHA-256 is one of ``digests``; every digest is compared."""
    presented = hashlib.sha256(token).digest()
    found = False
    for digest in digests:
        found |= hmac.compare_digest(presented, digest)
    return found
