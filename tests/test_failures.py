"""The one map of backend failures: kind, HTTP status and metrics label agree for every
error of httpx, websockets and the OS."""

from __future__ import annotations

import ssl

import httpx
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidHandshake, InvalidStatus
from websockets.http11 import Response

from gateway.failures import failure_kind, http_status, metrics_label
from gateway.proxy.websocket_rules import map_backend_error

REFUSAL = InvalidStatus(Response(403, "Forbidden", Headers(), b"no"))


@pytest.mark.parametrize(
    ("error", "kind", "status", "label"),
    [
        (httpx.ConnectError("x"), "connect_error", 502, "connect_error"),
        (httpx.ConnectTimeout("x"), "connect_timeout", 504, "connect_timeout"),
        (httpx.PoolTimeout("x"), "pool_timeout", 503, "pool_timeout"),
        (httpx.ReadTimeout("x"), "timeout", 504, "timeout"),
        (httpx.WriteTimeout("x"), "timeout", 504, "timeout"),
        (httpx.ReadError("x"), "error", 502, "error"),
        (httpx.RemoteProtocolError("x"), "invalid_response", 502, "invalid_response"),
        (httpx.LocalProtocolError("x"), None, 502, "other"),
        # The WebSocket leg: OS errors and websockets' own.
        (TimeoutError(), "timeout", 504, "timeout"),
        (ConnectionRefusedError(), "connect_error", 502, "connect_error"),
        (ConnectionResetError(), "connect_error", 502, "connect_error"),
        (ssl.SSLError(1, "certificate verify failed"), "connect_error", 502, "connect_error"),
        (InvalidHandshake("x"), "invalid_response", 502, "invalid_response"),
        (ConnectionClosedError(None, None), "invalid_response", 502, "invalid_response"),
        (REFUSAL, None, 502, "refused"),
        (ValueError("x"), None, 502, "other"),
    ],
)
def test_one_map(error: BaseException, kind: str | None, status: int, label: str) -> None:
    assert failure_kind(error) == kind
    assert http_status(error) == status
    assert metrics_label(error) == label


def test_labels_that_are_kinds_already_pass() -> None:
    assert metrics_label("no_healthy_target") == "no_healthy_target"


@pytest.mark.parametrize(
    "error", [TimeoutError(), ConnectionRefusedError(), ssl.SSLError(1, "x"), InvalidHandshake()]
)
def test_websocket_bridge_answers_follow_the_map(error: BaseException) -> None:
    # A TLS failure on the WebSocket leg is a connect error for health, retries, metrics
    # and the client's status alike (main said "error" in metrics).
    assert map_backend_error(error).status == http_status(error)
