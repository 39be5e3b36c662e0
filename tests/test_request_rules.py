"""Unit tests of gateway.request_rules that the protocol and router tests do not reach."""

from __future__ import annotations

from gateway import request_rules
from gateway.request_rules import body_may_lack_length, valid_host


def test_host_verdicts_are_remembered_and_bounded() -> None:
    assert valid_host(b"example.com:8443")
    assert not valid_host(b"exa mple.com")
    assert not valid_host(b"exa mple.com")  # a remembered refusal is still a refusal
    for number in range(3 * request_rules._MAX_HOST_VERDICTS):
        assert valid_host(b"h%d.example" % number)
    assert len(request_rules._HOST_VERDICTS) <= request_rules._MAX_HOST_VERDICTS
    assert not valid_host(b"y/")


def test_bodies_without_length_exist_past_http1() -> None:
    assert not body_may_lack_length("1.1")
    assert not body_may_lack_length("1.0")
    assert body_may_lack_length("2")
    assert body_may_lack_length("3")
