"""Upstream pools without sockets: targets, balancing, health state machines, retry rules."""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from gateway.upstream import (
    HealthCheck,
    PassiveHealth,
    ProbeHealth,
    Target,
    Upstream,
    client_address,
    client_ssl_context,
    counts_as_failure,
    failure_kind,
    highest_random_weight,
    least_connections,
    may_retry,
    smooth_weighted,
)
from gateway.upstream._balance import hash_seed


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- targets and options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "authority", "unix_path", "base_path"),
    [
        ("http://10.0.0.1:8080", "http", "10.0.0.1", 8080, "10.0.0.1:8080", None, ""),
        ("https://api.internal/v1/", "https", "api.internal", None, "api.internal", None, "/v1"),
        ("ws://b:9000/socket", "http", "b", 9000, "b:9000", None, "/socket"),
        ("wss://b", "https", "b", None, "b", None, ""),
        ("http://[::1]:81", "http", "::1", 81, "[::1]:81", None, ""),
        ("unix:/run/app.sock", "http", "localhost", None, "localhost", "/run/app.sock", ""),
        ("unix:/run/a.sock:/api/", "http", "localhost", None, "localhost", "/run/a.sock", "/api"),
    ],
)
def test_target_url_forms(
    url: str,
    scheme: str,
    host: str,
    port: int | None,
    authority: str,
    unix_path: str | None,
    base_path: str,
) -> None:
    target = Target(url)
    assert (target.scheme, target.host, target.port) == (scheme, host, port)
    assert (target.authority, target.unix_path, target.base_path) == (
        authority,
        unix_path,
        base_path,
    )
    assert target.base_url == f"{scheme}://{authority}{base_path}"


def test_target_is_a_value_object() -> None:
    assert Target("http://a:1", weight=2) == Target("http://a:1", 2)
    assert Target("http://a:1") != Target("http://a:1", weight=2)
    assert repr(Target("http://a:1", 3)) == "Target(url='http://a:1', weight=3)"
    assert len({Target("http://a:1"), Target("http://a:1")}) == 1


@pytest.mark.parametrize(
    ("url", "weight", "message"),
    [
        ("ftp://a", 1, "http"),
        ("http://", 1, "http"),
        ("a:80", 1, "http"),
        ("http://user:pw@a", 1, "credentials"),
        ("http://a/?x=1", 1, "query"),
        ("http://a:99999", 1, "(?i)port"),
        ("unix:relative.sock", 1, "unix:/path"),
        ("unix:/a.sock:base", 1, "unix:/path"),
        ("http://a", 0, "weight"),
        ("http://a", True, "weight"),
    ],
)
def test_bad_targets_name_the_problem(url: str, weight: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Target(url, weight)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"path": "healthz"}, "path"),
        ({"path": "/a b"}, "path"),
        ({"interval_s": 0}, "interval_s"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"healthy_threshold": 0}, "healthy_threshold"),
        ({"unhealthy_threshold": 1.5}, "unhealthy_threshold"),
    ],
)
def test_bad_health_checks_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        HealthCheck(**options)


@pytest.mark.parametrize(
    ("targets", "options", "key"),
    [
        ([], {}, "at least one"),
        ("http://a", {}, "list"),
        (["http://a", "http://a"], {}, "repeat"),
        (["http://a"], {"balance": "random"}, "balance"),
        (["http://a"], {"max_fails": -1}, "max_fails"),
        (["http://a"], {"fail_timeout_s": 0}, "fail_timeout_s"),
        (["http://a"], {"max_tries": 0}, "max_tries"),
        (["http://a"], {"try_timeout_s": 0}, "try_timeout_s"),
        (["http://a"], {"max_connections_per_target": 0}, "max_connections_per_origin"),
        (["http://a"], {"health": {"path": "/"}}, "health"),
    ],
)
def test_bad_upstream_options_name_the_key(targets: Any, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Upstream(targets, **options)


def test_upstream_repr_and_targets() -> None:
    upstream = Upstream(["http://a:1", Target("http://b:2", 3)], name="api", balance="ip_hash")
    assert repr(upstream) == "Upstream('api', [http://a:1, http://b:2], balance='ip_hash')"
    assert upstream.targets == (Target("http://a:1"), Target("http://b:2", 3))
    assert upstream.ssl_context is None  # no https target


# -- balancing ------------------------------------------------------------------------


def picks(weights: list[int], count: int, eligible: list[int] | None = None) -> str:
    current = [0] * len(weights)
    indices = eligible if eligible is not None else list(range(len(weights)))
    return "".join("abcdefgh"[smooth_weighted(weights, current, indices)] for _ in range(count))


def test_smooth_weighted_round_robin_is_nginx_sequence() -> None:
    assert picks([5, 1, 1], 7) == "aabacaa"  # the example of nginx's commit message
    assert picks([3, 1], 8) == "aabaaaba"
    assert picks([1, 1, 1], 6) == "abcabc"


def test_smooth_weighted_spreads_exactly_by_weight() -> None:
    counts = Counter(picks([3, 1], 400))
    assert counts == {"a": 300, "b": 100}


def test_smooth_weighted_skips_ineligible_without_disturbing_them() -> None:
    current = [0, 0, 0]
    assert [smooth_weighted([1, 1, 1], current, [0, 2]) for _ in range(4)] == [0, 2, 0, 2]
    assert current[1] == 0


def test_least_connections_prefers_fewest_per_weight() -> None:
    current = [0, 0, 0]
    assert least_connections([1, 1, 1], [3, 1, 2], current, [0, 1, 2]) == 1
    # 4 active on weight 4 is less loaded than 2 on weight 1.
    assert least_connections([4, 1], [4, 2], [0, 0], [0, 1]) == 0
    # Only eligible targets count.
    assert least_connections([1, 1, 1], [3, 1, 2], current, [0, 2]) == 2


def test_least_connections_breaks_ties_round_robin() -> None:
    current = [0, 0, 0]
    chosen = [least_connections([1, 1, 1], [0, 0, 0], current, [0, 1, 2]) for _ in range(6)]
    assert chosen == [0, 1, 2, 0, 1, 2]
    weighted = [least_connections([2, 1], [0, 0], [0, 0], [0, 1])]
    assert weighted == [0]


def hashed(keys: list[str], urls: list[str], weights: list[int], eligible: list[int]) -> list[int]:
    seeds = [hash_seed(url) for url in urls]
    return [highest_random_weight(key, seeds, weights, eligible) for key in keys]


URLS = [f"http://10.0.0.{n}:80" for n in range(1, 5)]
KEYS = [f"198.51.{n // 256}.{n % 256}" for n in range(4000)]


def test_ip_hash_is_stable_and_even() -> None:
    first = hashed(KEYS, URLS, [1, 1, 1, 1], [0, 1, 2, 3])
    assert first == hashed(KEYS, URLS, [1, 1, 1, 1], [0, 1, 2, 3])
    counts = Counter(first)
    assert all(850 <= counts[index] <= 1150 for index in range(4)), counts


def test_ip_hash_follows_weights() -> None:
    counts = Counter(hashed(KEYS, URLS[:2], [3, 1], [0, 1]))
    assert 0.70 < counts[0] / len(KEYS) < 0.80, counts


def test_ip_hash_moves_only_the_clients_of_a_target_that_goes_down() -> None:
    before = hashed(KEYS, URLS, [1, 1, 1, 1], [0, 1, 2, 3])
    after = hashed(KEYS, URLS, [1, 1, 1, 1], [0, 1, 3])  # target 2 is down
    for old, new in zip(before, after, strict=True):
        if old != 2:
            assert new == old
    moved = Counter(new for old, new in zip(before, after, strict=True) if old == 2)
    assert set(moved) == {0, 1, 3}  # its clients spread over the others
    # Back up: everyone returns where they were.
    assert hashed(KEYS, URLS, [1, 1, 1, 1], [0, 1, 2, 3]) == before


def test_ip_hash_does_not_depend_on_target_order() -> None:
    forward = hashed(KEYS[:200], URLS, [1] * 4, [0, 1, 2, 3])
    backward = hashed(KEYS[:200], URLS[::-1], [1] * 4, [0, 1, 2, 3])
    assert [URLS[i] for i in forward] == [URLS[::-1][i] for i in backward]


# -- health state machines ----------------------------------------------------------------


def test_passive_health_takes_a_target_out_after_max_fails_within_the_window() -> None:
    health = PassiveHealth(max_fails=3, fail_timeout_s=10)
    assert not health.failed(0)
    assert not health.failed(4)
    assert health.available(5)
    assert health.failed(9)  # third failure within 10 s of the first
    assert not health.available(9)
    assert not health.available(18.9)
    assert health.available(19)


def test_passive_health_failures_spread_out_never_trip() -> None:
    health = PassiveHealth(max_fails=2, fail_timeout_s=10)
    for moment in (0, 11, 22, 33):
        assert not health.failed(moment)
        assert health.available(moment)


def test_passive_health_success_resets_the_count() -> None:
    health = PassiveHealth(max_fails=2, fail_timeout_s=10)
    health.failed(0)
    assert not health.succeeded()
    assert not health.failed(1)
    assert health.available(1)


def test_passive_health_trial_after_timeout() -> None:
    health = PassiveHealth(max_fails=1, fail_timeout_s=10)
    assert health.failed(0)
    assert health.available(10)
    assert health.picked(10)  # the trial request
    assert not health.available(10)  # ... is the only one let through
    assert not health.failed(12)  # it failed: out again
    assert not health.available(21)
    assert health.available(22)
    assert health.picked(22)
    assert health.succeeded()  # it worked: back
    assert health.available(22)
    assert not health.picked(22)


def test_passive_health_disabled_with_max_fails_zero() -> None:
    health = PassiveHealth(max_fails=0, fail_timeout_s=10)
    for moment in range(10):
        assert not health.failed(moment)
    assert health.available(10)


def test_probe_health_thresholds() -> None:
    probe = ProbeHealth(healthy_threshold=2, unhealthy_threshold=3)
    assert probe.healthy
    assert [probe.record(False) for _ in range(3)] == [False, False, True]
    assert not probe.healthy
    assert [probe.record(True), probe.record(False), probe.record(True)] == [False] * 3
    assert probe.record(True)
    assert probe.healthy


# -- Upstream: selection with the state machines ------------------------------------------


def test_round_robin_by_weight() -> None:
    upstream = Upstream([Target("http://a", 3), Target("http://b", 1)])
    counts: Counter[str] = Counter()
    for _ in range(40):
        peer = upstream.select()
        assert peer is not None
        counts[peer.target.url] += 1
        upstream.release(peer)
    assert counts == {"http://a": 30, "http://b": 10}


def test_select_counts_active_until_release() -> None:
    upstream = Upstream(["http://a", "http://b"], balance="least_conn")
    first = upstream.select()
    second = upstream.select()
    assert first is not None
    assert second is not None
    assert first is not second
    third = upstream.select()
    assert third is not None
    assert [status.active for status in upstream.status()] == [2, 1] or [
        status.active for status in upstream.status()
    ] == [1, 2]
    for peer in (first, second, third):
        upstream.release(peer)
    assert [status.active for status in upstream.status()] == [0, 0]
    assert sum(status.selected for status in upstream.status()) == 3


def test_least_conn_sends_to_the_idle_target() -> None:
    upstream = Upstream(["http://a", "http://b"], balance="least_conn")
    busy = upstream.select()
    assert busy is not None
    for _ in range(5):
        peer = upstream.select()
        assert peer is not None
        assert peer is not busy
        upstream.release(peer)


def test_ip_hash_upstream_is_sticky_and_falls_back_to_round_robin() -> None:
    upstream = Upstream(["http://a", "http://b", "http://c"], balance="ip_hash")
    for address in ("192.0.2.1", "192.0.2.2", "2001:db8::7"):
        chosen = {upstream.select(address).target.url for _ in range(10)}  # type: ignore[union-attr]
        assert len(chosen) == 1
    without = {upstream.select(None).target.url for _ in range(3)}  # type: ignore[union-attr]
    assert len(without) == 3


def test_exclude_moves_a_retry_to_another_target() -> None:
    upstream = Upstream(["http://a", "http://b", "http://c"], balance="ip_hash")
    first = upstream.select("192.0.2.9")
    assert first is not None
    second = upstream.select("192.0.2.9", [first.index])
    assert second is not None
    assert second is not first
    third = upstream.select("192.0.2.9", [first.index, second.index])
    assert third is not None
    assert third not in (first, second)
    assert upstream.select("192.0.2.9", [0, 1, 2]) is None


def test_failed_target_is_skipped_then_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    changes: list[tuple[str, bool]] = []
    upstream = Upstream(
        ["http://a", "http://b"],
        name="api",
        fail_timeout_s=10,
        clock=clock,
        on_health_change=lambda target, healthy: changes.append((target.url, healthy)),
    )
    a = upstream.peers[0]
    with caplog.at_level(logging.WARNING, "gateway.upstream"):
        upstream.failed(a, "connect_error", "ConnectError: refused")
    assert "http://a out of rotation for 10 s" in caplog.text
    assert changes == [("http://a", False)]
    assert {upstream.select().target.url for _ in range(4)} == {"http://b"}  # type: ignore[union-attr]
    status = upstream.status()[0]
    assert (status.available, status.fails, status.last_error) == (False, 1, "connect_error")
    assert status.out_for_s == 10
    assert upstream.retry_after_s() == 1  # b is up
    clock.advance(10)
    trial = upstream.select()
    assert trial is a  # a's turn in the rotation, and its trial
    assert upstream.select() is upstream.peers[1]  # no second request during the trial
    upstream.succeeded(a)
    assert changes[-1] == ("http://a", True)
    assert {upstream.select().target.url for _ in range(4)} == {"http://a", "http://b"}  # type: ignore[union-attr]


def test_pool_timeout_and_answers_do_not_count_against_a_target() -> None:
    upstream = Upstream(["http://a", "http://b"])
    upstream.failed(upstream.peers[0], "pool_timeout")
    assert upstream.status()[0].available
    assert upstream.status()[0].last_error == "pool_timeout"


def test_all_targets_out_gives_none_and_retry_after() -> None:
    clock = FakeClock()
    upstream = Upstream(["http://a", "http://b"], fail_timeout_s=30, clock=clock)
    upstream.failed(upstream.peers[0], "connect_error")
    clock.advance(5)
    upstream.failed(upstream.peers[1], "timeout")
    assert upstream.select() is None
    assert upstream.retry_after_s() == 25  # a returns first
    clock.advance(24.5)
    assert upstream.retry_after_s() == 1


def test_a_lone_target_is_never_taken_out_by_failures() -> None:
    upstream = Upstream(["http://a"], max_fails=1)
    for _ in range(5):
        upstream.failed(upstream.peers[0], "connect_error")
    assert upstream.select() is upstream.peers[0]
    assert upstream.status()[0].available


def test_active_health_takes_targets_out_and_back() -> None:
    check = HealthCheck(healthy_threshold=1, unhealthy_threshold=1, interval_s=3)
    upstream = Upstream(["http://a", "http://b"], health=check)
    a = upstream.peers[0]
    assert a.probe is not None
    a.probe.record(False)
    assert upstream.status()[0].healthy is False
    assert {upstream.select().target.url for _ in range(3)} == {"http://b"}  # type: ignore[union-attr]
    upstream.peers[1].probe.record(False)  # type: ignore[union-attr]
    assert upstream.select() is None
    assert upstream.retry_after_s() == 3
    a.probe.record(True)
    assert upstream.select() is a


# -- retry rules ----------------------------------------------------------------------------

REQUEST = httpx.Request("GET", "http://a/")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused", request=REQUEST), "connect_error"),
        (httpx.ConnectTimeout("slow", request=REQUEST), "connect_timeout"),
        (httpx.PoolTimeout("full", request=REQUEST), "pool_timeout"),
        (httpx.ReadTimeout("slow", request=REQUEST), "timeout"),
        (httpx.WriteTimeout("slow", request=REQUEST), "timeout"),
        (httpx.ReadError("reset", request=REQUEST), "error"),
        (httpx.WriteError("reset", request=REQUEST), "error"),
        (httpx.RemoteProtocolError("bad", request=REQUEST), "invalid_response"),
        (httpx.LocalProtocolError("ours", request=REQUEST), None),
        (httpx.UnsupportedProtocol("ftp", request=REQUEST), None),
    ],
)
def test_failure_kinds(exc: Exception, kind: str | None) -> None:
    assert failure_kind(exc) == kind
    assert counts_as_failure(kind) == (kind not in (None, "pool_timeout"))


@pytest.mark.parametrize(
    ("method", "kind", "body_read", "retry"),
    [
        ("POST", "connect_error", False, True),
        ("POST", "connect_timeout", False, True),
        ("PATCH", "pool_timeout", False, True),
        ("POST", "error", False, False),
        ("POST", "timeout", False, False),
        ("POST", "invalid_response", False, False),
        ("GET", "error", False, True),
        ("HEAD", "timeout", False, True),
        ("PUT", "invalid_response", False, True),
        ("DELETE", "error", False, True),
        ("OPTIONS", "error", False, True),
        ("TRACE", "error", False, True),
        ("PUT", "error", True, False),  # its body started to flow: cannot be replayed
        ("POST", "connect_error", True, False),
        ("GET", None, False, False),
    ],
)
def test_retry_rules(method: str, kind: Any, body_read: bool, retry: bool) -> None:
    assert may_retry(method, kind, body_read) is retry


def test_client_address_prefers_the_client_ip_middleware() -> None:
    assert client_address({"client": ("10.0.0.9", 5000)}) == "10.0.0.9"
    scope = {"client": ("10.0.0.9", 5000), "state": {"client_ip": "203.0.113.5"}}
    assert client_address(scope) == "203.0.113.5"
    assert client_address({"client": None, "state": {}}) is None


# -- upstream TLS ---------------------------------------------------------------------------


def test_client_ssl_context_verifies_by_default() -> None:
    context = client_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_ssl_context_with_a_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    context = client_ssl_context(ca_bundle=str(bundle))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1  # only the bundle, not the system CAs


def test_client_ssl_context_without_verification() -> None:
    context = client_ssl_context(verify=False)
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname
    with pytest.raises(ValueError, match="ca_bundle"):
        client_ssl_context(verify=False, ca_bundle="/x.pem")


def test_client_ssl_context_bad_bundle_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ca_bundle"):
        client_ssl_context(ca_bundle=str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ValueError, match="ca_bundle"):
        client_ssl_context(ca_bundle=str(garbage))


def test_verify_false_is_logged_once_per_upstream(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "gateway.upstream"):
        upstream = Upstream(["https://a", "https://b"], verify=False)
        Upstream(["http://c"], verify=False)  # nothing to verify: nothing to say
    warnings = [r for r in caplog.records if "NOT verified" in r.getMessage()]
    assert len(warnings) == 1
    assert upstream.ssl_context is not None
    assert upstream.ssl_context.verify_mode == ssl.CERT_NONE
