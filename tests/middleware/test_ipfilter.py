"""IP allow/deny lists: the pure decision, the middleware in memory, and over real sockets."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Scope
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.middleware.ipfilter import IPFilterMiddleware, IPRules, ip_allowed, ip_refusal
from tests.middleware.asgi import Recorder, gateway_with, run
from tests.proxy.ws_servers import ws_backend
from tests.servers import Backend

# The pure decision --------------------------------------------------------------------------


def rules(allow: list[str] | None = None, deny: list[str] | None = None) -> IPRules:
    return IPRules.parse(allow=allow or [], deny=deny or [])


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3", None),
        ("10.200.0.1", "address denied"),  # deny wins over allow, whatever the order
        ("10.200.255.255", "address denied"),
        ("192.0.2.7", None),
        ("192.0.2.8", "address not allowed"),
        ("::ffff:10.1.2.3", None),  # IPv4-mapped IPv6 is IPv4
        ("::ffff:10.200.0.1", "address denied"),
        ("2001:db8:1::5", None),
        ("2001:db9::5", "address not allowed"),
        ("unknown", "client address unknown"),
        (None, "client address unknown"),
    ],
)
def test_deny_wins_and_a_non_empty_allowlist_admits_only_its_entries(
    address: str | None, expected: str | None
) -> None:
    rule_set = rules(allow=["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"], deny=["10.200.0.0/16"])
    assert ip_refusal(address, rule_set) == expected


def test_no_rules_admit_everyone() -> None:
    assert ip_allowed("203.0.113.1", rules())
    assert ip_allowed(None, rules())


def test_a_deny_only_list_admits_the_rest_and_unknown_clients() -> None:
    rule_set = rules(deny=["203.0.113.0/24", "2001:db8::1"])
    assert not ip_allowed("203.0.113.99", rule_set)
    assert not ip_allowed("2001:db8::1", rule_set)
    assert ip_allowed("2001:db8::2", rule_set)
    assert ip_allowed("198.51.100.1", rule_set)
    assert ip_allowed(None, rule_set)


def test_deny_all_with_exceptions_is_impossible_because_deny_wins() -> None:
    # Documented: an allowlist already refuses everyone else; "deny all" refuses everyone.
    assert not ip_allowed("10.0.0.1", rules(allow=["10.0.0.0/8"], deny=["all"]))
    assert not ip_allowed("10.0.0.1", rules(deny=["all"]))
    assert not ip_allowed("2001:db8::1", rules(deny=["all"]))


def test_invalid_entries_are_errors_at_construction() -> None:
    with pytest.raises(ValueError, match=r"deny: '300\.0\.0\.1' is not an IP address"):
        IPFilterMiddleware(Recorder(), deny=["300.0.0.1"])
    with pytest.raises(ValueError, match=r"allow: '10\.0\.0\.1/8' has host bits set"):
        IPFilterMiddleware(Recorder(), allow=["10.0.0.1/8"])
    with pytest.raises(ValueError, match=r"trusted_proxies: 'proxy\.local'"):
        IPFilterMiddleware(Recorder(), trusted_proxies=["proxy.local"])


# The middleware in memory -------------------------------------------------------------------


def make_scope(kind: str, peer: str, *headers: tuple[bytes, bytes]) -> Scope:
    scope: Scope = {"type": kind, "path": "/", "client": (peer, 5000), "headers": list(headers)}
    if kind == "websocket":
        scope["extensions"] = {"websocket.http.response": {}}
    return scope


async def test_refused_http_and_websocket_get_403_and_the_app_never_runs() -> None:
    inner = Recorder()
    middleware = IPFilterMiddleware(inner, deny=["203.0.113.0/24"])
    http = await run(middleware, make_scope("http", "203.0.113.7"))
    ws = await run(middleware, make_scope("websocket", "203.0.113.7"))
    assert [http[0]["type"], http[0]["status"]] == ["http.response.start", 403]
    assert http[1]["body"] == b"403 Forbidden\n"
    assert [ws[0]["type"], ws[0]["status"]] == ["websocket.http.response.start", 403]
    assert ws[1]["body"] == b"403 Forbidden\n"
    assert inner.scopes == []


async def test_allowed_requests_and_other_scopes_pass_unchanged() -> None:
    inner = Recorder()
    middleware = IPFilterMiddleware(inner, allow=["198.51.100.0/24"])
    allowed = make_scope("http", "198.51.100.1")
    assert await run(middleware, allowed) == []
    assert await run(middleware, {"type": "lifespan"}) == []
    assert inner.scopes == [allowed, {"type": "lifespan"}]
    assert allowed["state"]["client_ip"] == "198.51.100.1"  # shared with later layers


def test_repr_shows_the_rules() -> None:
    middleware = IPFilterMiddleware(Recorder(), allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert repr(middleware) == "IPFilterMiddleware(allow=['10.0.0.0/8'], deny=['10.1.0.0/16'])"


# Over real sockets ----------------------------------------------------------------------------


async def get(url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url, headers=headers)


def refused_exactly_403(response: httpx.Response) -> None:
    assert response.status_code == 403
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == "14"
    assert response.text == "403 Forbidden\n"


async def test_denied_client_gets_403_and_the_backend_sees_nothing(backend: Backend) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return IPFilterMiddleware(app, deny=["127.0.0.0/8"])

    async with gateway_with(wrap, backend) as url:
        response = await get(f"{url}/echo")
    refused_exactly_403(response)
    assert backend.requests == []


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(backend: Backend) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return IPFilterMiddleware(app, allow=["10.0.0.0/8"])  # no trusted proxies

    async with gateway_with(wrap, backend) as url:
        spoofed = await get(
            f"{url}/echo", **{"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"}
        )
    refused_exactly_403(spoofed)
    assert backend.requests == []


async def test_forwarded_for_from_a_trusted_proxy_decides(backend: Backend) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return IPFilterMiddleware(
            app, allow=["10.0.0.0/8"], deny=["10.66.0.0/16"], trusted_proxies=["127.0.0.1"]
        )

    async with gateway_with(wrap, backend) as url:
        allowed = await get(f"{url}/echo", **{"X-Forwarded-For": "10.1.2.3"})
        denied = await get(f"{url}/echo", **{"X-Forwarded-For": "10.66.0.1"})
        # The client may prepend anything; only the address the proxy appended counts.
        prepended = await get(f"{url}/echo", **{"X-Forwarded-For": "10.1.2.3, 192.0.2.9"})
        direct = await get(f"{url}/echo")  # the trusted proxy itself is not on the allowlist
    assert allowed.status_code == 200
    refused_exactly_403(denied)
    refused_exactly_403(prepended)
    refused_exactly_403(direct)
    assert len(backend.requests) == 1


async def test_refused_websocket_handshake_never_reaches_the_backend(backend: Backend) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return IPFilterMiddleware(app, allow=["192.0.2.0/24"])

    async with ws_backend() as ws, gateway_with(wrap, backend, ws.url) as url:
        ws_url = url.replace("http:", "ws:")
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{ws_url}/ws", additional_headers={"X-Forwarded-For": "192.0.2.1"}):
                pass
    response: Any = info.value.response
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.body == b"403 Forbidden\n"
    assert ws.handshakes == []


async def test_allowed_websocket_is_bridged(backend: Backend) -> None:
    def wrap(app: ASGIApp) -> ASGIApp:
        return IPFilterMiddleware(app, allow=["127.0.0.1", "::1"])

    async with (
        ws_backend() as ws,
        gateway_with(wrap, backend, ws.url) as url,
        connect(url.replace("http:", "ws:") + "/ws") as session,
    ):
        await session.send("hello")
        assert await session.recv() == "hello"
    assert len(ws.handshakes) == 1
