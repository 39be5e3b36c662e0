"""Basic auth and bearer tokens: hashes and parsing, the gates in memory, and over real sockets."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Scope
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.middleware import auth
from gateway.middleware.auth import (
    BasicAuthMiddleware,
    BearerTokenMiddleware,
    hash_password,
    parse_basic,
    token_matches,
    verify_password,
)
from tests.conftest import header_values
from tests.middleware.asgi import Recorder, gateway_with, run
from tests.proxy.ws_servers import ws_backend
from tests.servers import Backend

FAST = 1000  # iterations for test hashes; real ones use the default


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


# Hashes and parsing ---------------------------------------------------------------------------


def test_hashes_are_django_compatible_pbkdf2_sha256() -> None:
    # Django's own test vector for make_password("lètmein", "seasalt", "pbkdf2_sha256").
    expected = "pbkdf2_sha256$10000$seasalt$CWWFdHOWwPnki7HvkcqN9iA2T3KLW1cf2uZ5kvArtVY="
    assert hash_password("lètmein", iterations=10000, salt="seasalt") == expected
    assert verify_password("lètmein", expected)
    assert not verify_password("letmein", expected)


def test_a_new_hash_has_a_random_salt_and_the_default_cost() -> None:
    first, second = hash_password("s3cret"), hash_password("s3cret")
    assert first != second
    algorithm, iterations, salt, _ = first.split("$")
    assert (algorithm, iterations, len(salt)) == ("pbkdf2_sha256", "600000", 22)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "md5$1$salt$AAAA",
        "pbkdf2_sha256$x$salt$AAAA",
        "pbkdf2_sha256$0$salt$AAAA",
        "pbkdf2_sha256$1000$$AAAA",
        "pbkdf2_sha256$1000$salt$",
        "pbkdf2_sha256$1000$salt$not base64!",
    ],
)
def test_malformed_hashes_never_verify(encoded: str) -> None:
    assert not verify_password("anything", encoded)


def test_hash_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="iterations"):
        hash_password("x", iterations=0)
    with pytest.raises(ValueError, match="salt"):
        hash_password("x", salt="a$b")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (basic("alice", "s3cret"), ("alice", "s3cret")),
        (b"basic " + base64.b64encode(b"alice:s3cret"), ("alice", "s3cret")),
        (basic("alice", "with:colon"), ("alice", "with:colon")),
        (basic("zoë", "pässword"), ("zoë", "pässword")),
        (basic("alice", ""), ("alice", "")),
        (b"Basic " + base64.b64encode(b"no-colon"), None),
        (b"Basic " + base64.b64encode(b"\xff\xfe:x"), None),  # not UTF-8
        (b"Basic not*base64", None),
        (b"Basic", None),
        (b"Bearer " + base64.b64encode(b"alice:s3cret"), None),
        (b"", None),
    ],
)
def test_parse_basic(value: bytes, expected: tuple[str, str] | None) -> None:
    assert parse_basic(value) == expected


def test_token_matches_compares_digests() -> None:
    digests = [hashlib.sha256(b"one").digest(), hashlib.sha256(b"two").digest()]
    assert token_matches(b"two", digests)
    assert not token_matches(b"three", digests)
    assert not token_matches(b"two", [])


def test_configuration_errors_name_the_key_but_never_the_secret() -> None:
    with pytest.raises(ValueError, match="users: the password hash of 'bob' is") as info:
        BasicAuthMiddleware(Recorder(), users={"bob": "plaintext-password"}, realm="r")
    assert "plaintext-password" not in str(info.value)
    with pytest.raises(ValueError, match="users: 'a:b'"):
        BasicAuthMiddleware(
            Recorder(), users={"a:b": hash_password("x", iterations=FAST)}, realm="r"
        )
    with pytest.raises(ValueError, match="realm"):
        BasicAuthMiddleware(Recorder(), users={}, realm='say "hi"')
    with pytest.raises(ValueError, match="tokens: expected a list"):
        BearerTokenMiddleware(Recorder(), tokens="one-token")
    with pytest.raises(ValueError, match=r"tokens\[1\]: sha256: needs 64 hex digits"):
        BearerTokenMiddleware(Recorder(), tokens=["ok", "sha256:abc"])
    with pytest.raises(ValueError, match=r"tokens\[0\]: empty"):
        BearerTokenMiddleware(Recorder(), tokens=[""])
    assert "s3cret" not in repr(BearerTokenMiddleware(Recorder(), tokens=["s3cret"]))


# The gates in memory --------------------------------------------------------------------------


def make_scope(*authorization: bytes, kind: str = "http") -> Scope:
    headers = [(b"host", b"gw"), *[(b"authorization", value) for value in authorization]]
    scope: Scope = {"type": kind, "path": "/p", "headers": headers, "client": ("192.0.2.1", 1)}
    if kind == "websocket":
        scope["extensions"] = {"websocket.http.response": {}}
    return scope


USERS = {"alice": hash_password("s3cret", iterations=FAST)}


def challenge_of(sent: list[Message]) -> tuple[int, bytes, bytes]:
    return sent[0]["status"], dict(sent[0]["headers"])[b"www-authenticate"], sent[1]["body"]


@pytest.mark.parametrize(
    "authorization",
    [
        (),
        (basic("alice", "wrong"),),
        (basic("mallory", "s3cret"),),
        (b"Basic ???",),
        (basic("alice", "s3cret"), basic("alice", "s3cret")),
        (b"Bearer s3cret",),
    ],
)
async def test_basic_refusals_get_401_with_a_challenge(authorization: tuple[bytes, ...]) -> None:
    inner = Recorder()
    sent = await run(
        BasicAuthMiddleware(inner, users=USERS, realm="Staff"), make_scope(*authorization)
    )
    assert challenge_of(sent) == (
        401,
        b'Basic realm="Staff", charset="UTF-8"',
        b"401 Unauthorized\n",
    )
    assert inner.scopes == []


async def test_basic_success_strips_the_header_and_names_the_user() -> None:
    inner = Recorder()
    middleware = BasicAuthMiddleware(inner, users=USERS, realm="Staff")
    assert await run(middleware, make_scope(basic("alice", "s3cret"))) == []
    assert inner.scopes[0]["headers"] == [(b"host", b"gw")]
    assert inner.scopes[0]["state"]["user"] == "alice"
    kept = BasicAuthMiddleware(inner, users=USERS, realm="Staff", forward_authorization=True)
    await run(kept, make_scope(basic("alice", "s3cret")))
    assert inner.scopes[1]["headers"][1] == (b"authorization", basic("alice", "s3cret"))


async def test_websocket_handshakes_are_gated_too() -> None:
    inner = Recorder()
    middleware = BasicAuthMiddleware(inner, users=USERS, realm="Staff")
    sent = await run(middleware, make_scope(kind="websocket"))
    assert sent[0]["type"] == "websocket.http.response.start"
    assert challenge_of(sent)[0] == 401
    await run(middleware, make_scope(basic("alice", "s3cret"), kind="websocket"))
    assert len(inner.scopes) == 1
    assert await run(middleware, {"type": "lifespan"}) == []
    assert inner.scopes[-1] == {"type": "lifespan"}


async def test_successes_are_cached_and_unknown_users_cost_a_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def counting(password: str, encoded: str) -> bool:
        calls.append(encoded.split("$")[1])
        return verify_password(password, encoded)

    monkeypatch.setattr(auth, "verify_password", counting)
    cached = BasicAuthMiddleware(Recorder(), users=USERS, realm="r")
    for _ in range(3):
        assert await run(cached, make_scope(basic("alice", "s3cret"))) == []
    assert len(calls) == 1
    assert challenge_of(await run(cached, make_scope(basic("alice", "wrong"))))[0] == 401
    assert challenge_of(await run(cached, make_scope(basic("nobody", "x"))))[0] == 401
    assert calls == [str(FAST)] * 3  # the unknown user was hashed at the same cost
    uncached = BasicAuthMiddleware(Recorder(), users=USERS, realm="r", cache_ttl_s=0)
    for _ in range(2):
        await run(uncached, make_scope(basic("alice", "s3cret")))
    assert len(calls) == 5


async def test_bearer_tokens(caplog: pytest.LogCaptureFixture) -> None:
    inner = Recorder()
    digest = hashlib.sha256(b"hashed-token").hexdigest()
    middleware = BearerTokenMiddleware(
        inner, tokens=["plain-token", f"sha256:{digest}"], realm="api"
    )
    with caplog.at_level(logging.INFO, logger="gateway.auth"):
        missing = await run(middleware, make_scope())
        wrong = await run(middleware, make_scope(b"Bearer guessed-token"))
        malformed = await run(middleware, make_scope(b"Bearer "))
    assert challenge_of(missing)[:2] == (401, b'Bearer realm="api"')
    assert challenge_of(wrong)[:2] == (401, b'Bearer realm="api", error="invalid_token"')
    assert challenge_of(malformed)[:2] == (401, b'Bearer realm="api", error="invalid_request"')
    assert "guessed-token" not in caplog.text
    assert [record.getMessage().rsplit("reason=", 1)[1] for record in caplog.records] == [
        "no credentials",
        "unknown token",
        "malformed Bearer credentials",
    ]
    await run(middleware, make_scope(b"Bearer plain-token"))
    await run(middleware, make_scope(b"bearer hashed-token"))
    assert [scope["headers"] for scope in inner.scopes] == [[(b"host", b"gw")]] * 2
    assert BearerTokenMiddleware(inner, tokens=["t"]).challenge(None) == b"Bearer"


async def test_refusal_logs_hold_no_credentials(caplog: pytest.LogCaptureFixture) -> None:
    middleware = BasicAuthMiddleware(Recorder(), users=USERS, realm="r")
    with caplog.at_level(logging.DEBUG, logger="gateway.auth"):
        await run(middleware, make_scope(basic("alice", "Secret-One")))
        await run(middleware, make_scope(basic("Secret-Two-typed-as-user", "x")))
    assert "Secret" not in caplog.text
    assert "alice" not in caplog.text
    assert caplog.text.count("reason=wrong user or password") == 2


# Over real sockets ----------------------------------------------------------------------------


def basic_gate(**options: Any) -> Callable[[ASGIApp], ASGIApp]:
    return lambda app: BasicAuthMiddleware(app, users=USERS, realm="Staff only", **options)


async def test_basic_auth_over_sockets(backend: Backend) -> None:
    async with gateway_with(basic_gate(), backend) as url, httpx.AsyncClient() as http:
        refused = await http.get(f"{url}/echo/refused")
        wrong = await http.get(f"{url}/echo/wrong", auth=("alice", "nope"))
        assert backend.requests == []
        accepted = await http.get(f"{url}/echo/ok", auth=("alice", "s3cret"))
    for response in (refused, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Basic realm="Staff only", charset="UTF-8"'
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == "401 Unauthorized\n"
    assert accepted.status_code == 200
    assert [record["raw_path"] for record in backend.requests] == ["/echo/ok"]
    assert header_values(backend.requests[0], "authorization") == []


async def test_authorization_can_be_forwarded(backend: Backend) -> None:
    gate = basic_gate(forward_authorization=True)
    async with gateway_with(gate, backend) as url, httpx.AsyncClient() as http:
        response = await http.get(f"{url}/echo", auth=("alice", "s3cret"))
    assert response.status_code == 200
    expected = basic("alice", "s3cret").decode()
    assert header_values(backend.requests[0], "authorization") == [expected]


async def test_bearer_token_over_sockets(backend: Backend) -> None:
    def gate(app: ASGIApp) -> ASGIApp:
        return BearerTokenMiddleware(app, tokens=["t0ken"])

    async with gateway_with(gate, backend) as url, httpx.AsyncClient() as http:
        wrong = await http.get(f"{url}/echo", headers={"Authorization": "Bearer other"})
        assert backend.requests == []
        right = await http.get(f"{url}/echo", headers={"Authorization": "Bearer t0ken"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert wrong.text == "401 Unauthorized\n"
    assert right.status_code == 200
    assert header_values(backend.requests[0], "authorization") == []


async def test_websocket_handshake_needs_credentials(backend: Backend) -> None:
    async with ws_backend() as ws, gateway_with(basic_gate(), backend, ws.url) as url:
        ws_url = url.replace("http:", "ws:") + "/ws"
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url):
                pass
        assert ws.handshakes == []
        credentials = {"Authorization": basic("alice", "s3cret").decode()}
        async with connect(ws_url, additional_headers=credentials) as session:
            await session.send("hi")
            assert await session.recv() == "hi"
    response: Any = info.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Staff only", charset="UTF-8"'
    assert response.body == b"401 Unauthorized\n"
    assert len(ws.handshakes) == 1
    assert ws.handshakes[0].get("Authorization") == []
