"""Unit tests for the pure header and URL rules."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.proxy.forwarding import (
    ForwardingOptions,
    client_chain,
    request_headers,
    response_headers,
    rewrite_location,
    strip_hop_by_hop,
    strip_root_path,
)

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name for name, _ in headers]


def test_hop_by_hop_and_connection_named_headers_are_removed() -> None:
    headers = [
        (b"connection", b"keep-alive, X-Secret"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"1"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"proxy-connection", b"keep-alive"),
        (b"accept", b"*/*"),
    ]
    assert strip_hop_by_hop(headers) == [(b"accept", b"*/*")]


def test_order_and_duplicates_are_kept() -> None:
    headers = [(b"a", b"1"), (b"set-cookie", b"x=1"), (b"b", b"2"), (b"set-cookie", b"y=2")]
    assert strip_hop_by_hop(headers) == headers


def request(headers: list[tuple[bytes, bytes]], peer: str = "203.0.113.7", **options: object):
    return request_headers(
        headers,
        peer=peer,
        scheme="https",
        upstream_host=b"backend:8080",
        options=ForwardingOptions(**options),  # type: ignore[arg-type]
    )


def test_options_take_any_set_of_names() -> None:
    # The rules cache their unions of name sets: a caller's plain sets are frozen first.
    headers = [(b"connection", b"x-tenant, x-other"), (b"x-tenant", b"a"), (b"x-other", b"b")]
    for _ in range(2):
        out = request(headers, protected={b"x-tenant"}, strip_untrusted={b"x-forwarded-port"})
        assert [(n, v) for n, v in out if n.startswith(b"x-t") or n == b"x-other"] == [
            (b"x-tenant", b"a")
        ]


def test_untrusted_peer_forwarding_headers_are_replaced() -> None:
    out = dict(
        request(
            [
                (b"host", b"example.com"),
                (b"x-forwarded-for", b"1.2.3.4"),
                (b"x-real-ip", b"1.2.3.4"),
                (b"x-forwarded-proto", b"http"),
                (b"forwarded", b"for=1.2.3.4"),
            ]
        )
    )
    assert out[b"host"] == b"example.com"
    assert out[b"x-forwarded-for"] == b"203.0.113.7"
    assert out[b"x-real-ip"] == b"203.0.113.7"
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b"example.com"
    assert b"forwarded" not in out


def test_trusted_peer_chain_is_appended_and_real_ip_found() -> None:
    out = dict(
        request(
            [
                (b"host", b"h"),
                (b"x-forwarded-for", b"198.51.100.1, 10.0.0.5"),
                (b"x-forwarded-proto", b"http"),
            ],
            peer="10.0.0.9",
            trusted_proxies=TRUSTED,
        )
    )
    assert out[b"x-forwarded-for"] == b"198.51.100.1, 10.0.0.5, 10.0.0.9"
    assert out[b"x-real-ip"] == b"198.51.100.1"
    # A trusted proxy in front saw the original scheme.
    assert out[b"x-forwarded-proto"] == b"http"


def test_client_chain_spoofed_left_entries_from_untrusted_do_not_win() -> None:
    chain, real = client_chain("10.0.0.9", [b"6.6.6.6, 198.51.100.1"], TRUSTED)
    assert chain == ["6.6.6.6", "198.51.100.1", "10.0.0.9"]
    assert real == "198.51.100.1"


def test_host_missing_gets_upstream_host_and_override_wins() -> None:
    assert dict(request([]))[b"host"] == b"backend:8080"
    out = request([(b"host", b"client.example")], host="internal.example")
    assert [v for k, v in out if k == b"host"] == [b"internal.example"]


def test_forwarded_and_via_are_optional() -> None:
    out = dict(request([(b"host", b"h")], peer="2001:db8::1", forwarded=True, via=True))
    assert out[b"forwarded"] == b'for="[2001:db8::1]";proto=https;host="h"'
    assert out[b"via"] == b"1.1 gateway"
    out = dict(request([(b"host", b"h")], x_forwarded=False))
    assert b"x-forwarded-for" not in out
    assert b"x-real-ip" not in out


def test_expect_is_answered_by_the_gateway_not_forwarded() -> None:
    assert b"expect" not in names(request([(b"expect", b"100-continue")]))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"http://backend:8080/x?y=1", b"https://public.example/api/x?y=1"),
        (b"http://backend:8080", b"https://public.example/api"),
        (b"http://other/x", b"http://other/x"),
        (b"/relative", b"/relative"),
        (b"http://backend:8080x/evil", b"http://backend:8080x/evil"),
        (b"5; url=http://backend:8080/next", b"5; url=https://public.example/api/next"),
    ],
)
def test_rewrite_location(value: bytes, expected: bytes) -> None:
    assert rewrite_location(value, "http://backend:8080", "https://public.example/api") == expected


def test_rewrite_location_default_port_equivalence() -> None:
    assert rewrite_location(b"http://backend/x", "http://backend:80", "https://p") == b"https://p/x"
    assert rewrite_location(b"http://backend:80/x", "http://backend", "https://p") == b"https://p/x"


def test_response_headers_rewrite_and_strip() -> None:
    out = response_headers(
        [(b"location", b"http://b:1/a"), (b"transfer-encoding", b"chunked"), (b"server", b"x")],
        upstream_base="http://b:1",
        public_base="https://p",
    )
    assert out == [(b"location", b"https://p/a"), (b"server", b"x")]


@pytest.mark.parametrize(
    ("raw", "root", "expected"),
    [
        (b"/api/x%2Fy", "/api", b"/x%2Fy"),
        (b"/api", "/api", b"/"),
        (b"/apix/y", "/api", b"/apix/y"),
        (b"/a%70i/x", "/api", b"/x"),
        (b"/x/../y", "", b"/x/../y"),
        (b"/caf%C3%A9/z", "/café", b"/z"),
    ],
)
def test_strip_root_path(raw: bytes, root: str, expected: bytes) -> None:
    assert strip_root_path(raw, root) == expected
