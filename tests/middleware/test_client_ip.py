"""The real client address: normalisation, CIDR ranges, trusted proxies, the per-request cache."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.types import Scope

from gateway.middleware.client_ip import (
    client_ip,
    normalise_address,
    parse_address,
    parse_networks,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped: compared as IPv4
        ("2001:DB8::1", "2001:db8::1"),
        ("192.0.2.1:5555", "192.0.2.1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
        ("unknown", None),
        ("", None),
        ("192.0.2.1:port", None),
        ("2001:db8::1:", None),
        ("example.com:80", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (str(address) if address is not None else None) == expected


def test_normalise_keeps_what_is_not_an_address() -> None:
    assert normalise_address("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalise_address(" unknown ") == "unknown"


def test_parse_networks_accepts_addresses_ranges_and_all() -> None:
    networks = parse_networks("allow", ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"])
    assert [str(network) for network in networks] == [
        "10.0.0.0/8",
        "192.0.2.7/32",
        "2001:db8::/32",
        "::1/128",
    ]
    assert [str(network) for network in parse_networks("deny", ["all"])] == ["0.0.0.0/0", "::/0"]
    ready = ipaddress.ip_network("172.16.0.0/12")
    assert parse_networks("allow", [ready]) == (ready,)


def test_ipv4_mapped_ranges_become_ipv4() -> None:
    assert parse_networks("allow", ["::ffff:10.0.0.0/104"]) == (
        ipaddress.IPv4Network("10.0.0.0/8"),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.0/33", "allow: '10.0.0.0/33' is not an IP address or CIDR range"),
        ("example.com", "allow: 'example.com' is not an IP address or CIDR range"),
        ("", "allow: '' is not an IP address or CIDR range"),
        ("10.0.0.1/8", r"allow: '10.0.0.1/8' has host bits set \(did you mean '10.0.0.0/8'\?\)"),
    ],
)
def test_bad_entries_name_the_key_and_the_value(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_networks("allow", [value])


def test_a_string_instead_of_a_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="trusted_proxies: expected a list"):
        parse_networks("trusted_proxies", "10.0.0.0/8")


def scope(peer: str | None, *forwarded: bytes) -> Scope:
    return {
        "type": "http",
        "client": (peer, 4000) if peer is not None else None,
        "headers": [(b"x-forwarded-for", value) for value in forwarded],
    }


PROXIES = parse_networks("trusted_proxies", ["10.0.0.0/8"])


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_ip(scope("203.0.113.9", b"10.9.9.9"), PROXIES) == "203.0.113.9"
    assert client_ip(scope("203.0.113.9", b"198.51.100.1")) == "203.0.113.9"


def test_trusted_proxies_are_skipped_from_the_right() -> None:
    request = scope("10.0.0.2", b"198.51.100.1, 203.0.113.5", b"10.0.0.7")
    assert client_ip(request, PROXIES) == "203.0.113.5"
    assert client_ip(scope("10.0.0.2"), PROXIES) == "10.0.0.2"  # no header: the proxy itself


def test_a_mapped_peer_is_compared_as_ipv4() -> None:
    assert client_ip(scope("::ffff:10.0.0.2", b"203.0.113.5"), PROXIES) == "203.0.113.5"
    assert client_ip(scope("::ffff:203.0.113.5")) == "203.0.113.5"


def test_no_peer_is_none() -> None:
    assert client_ip(scope(None, b"203.0.113.5"), PROXIES) is None


def test_the_answer_is_cached_per_trusted_list() -> None:
    request = scope("10.0.0.2", b"203.0.113.5")
    assert client_ip(request, PROXIES) == "203.0.113.5"
    assert request["state"]["client_ip"] == "203.0.113.5"
    request["headers"] = []  # a cached answer does not look at the headers again
    assert client_ip(request, PROXIES) == "203.0.113.5"
    assert client_ip(request) == "10.0.0.2"  # other trusted proxies: computed afresh
    assert request["state"]["client_ip"] == "10.0.0.2"
