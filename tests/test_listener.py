"""Pure parts of the TLS listener and the client log throttle (the socket side is in
tests/robustness/test_tls_faults.py)."""

from __future__ import annotations

import logging

import pytest

from gateway.listener import plain_http_answer
from gateway.logs import ClientLog, UvicornNoise


def test_plain_http_is_answered_400_naming_the_mistake() -> None:
    status, response = plain_http_answer(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "reject", 443)
    assert status == 400
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in head
    assert b"content-length: %d" % len(body) in head
    assert body.startswith(b"400 Bad Request: the plain HTTP request was sent to an HTTPS port")


@pytest.mark.parametrize(
    ("head", "location"),
    [
        (b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", b"https://example.com/a?b=1"),
        (b"GET / HTTP/1.1\r\nhost: example.com:80\r\n\r\n", b"https://example.com:8443/"),
        (b"GET /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", b"https://[::1]:8443/x"),
        # A path that looks scheme-relative stays a path on the client's host.
        (b"GET //evil.example/ HTTP/1.1\r\nHost: a:80\r\n\r\n", b"https://a:8443//evil.example/"),
    ],
)
def test_redirect_mode(head: bytes, location: bytes) -> None:
    https_port = 443 if b"example.com\r\n" in head else 8443
    status, response = plain_http_answer(head, "redirect", https_port)
    assert status == 308
    assert b"\r\nlocation: " + location + b"\r\n" in response


@pytest.mark.parametrize(
    "head",
    [
        b"GET //evil.example/ HTTP/1.1\r\nHost: \r\n\r\n",  # no host: no URL at all
        b"GET / HTTP/1.1\r\nHost: a@evil.example\r\n\r\n",  # userinfo
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute form
        b"GARBAGE\r\n\r\n",
    ],
)
def test_redirect_mode_never_redirects_somewhere_odd(head: bytes) -> None:
    assert plain_http_answer(head, "redirect", 443)[0] == 400


def test_client_log_once_per_client_and_kind_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ClientLog(logging.getLogger("test.clientlog"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.clientlog"):
        for _ in range(5):
            log.log(logging.INFO, "1.2.3.4", "tls", "from %s", "1.2.3.4")
        log.log(logging.INFO, "1.2.3.4", "plain", "plain from %s", "1.2.3.4")
        log.log(logging.INFO, "5.6.7.8", "tls", "from %s", "5.6.7.8")
        now[0] = 61.0
        log.log(logging.INFO, "1.2.3.4", "tls", "again %s", "1.2.3.4")
    assert [r.getMessage() for r in caplog.records] == [
        "from 1.2.3.4",
        "plain from 1.2.3.4",
        "from 5.6.7.8",
        "again 1.2.3.4",
    ]


def test_client_log_remembers_a_bounded_number_of_clients() -> None:
    log = ClientLog(logging.getLogger("test.clientlog"), max_clients=3, clock=lambda: 0.0)
    for address in ("a", "b", "c", "d"):
        assert log.allow(address, "tls")
    assert len(log._last) == 3
    assert log.allow("a", "tls")  # forgotten first, so allowed again
    assert not log.allow("d", "tls")


def test_uvicorn_noise_filter() -> None:
    noise = UvicornNoise()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.INFO, "", 0, msg, (1,), None)

    assert not noise.filter(record("Started server process [%d]"))
    assert noise.filter(record("Waiting for connections to close. (CTRL+C to force quit)"))
