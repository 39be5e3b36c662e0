"""One active health probe: ``GET path`` to one target through the upstream's transport."""

from __future__ import annotations

import asyncio

import httpx

from gateway.upstream._config import HealthCheck
from gateway.upstream._peer import Peer

__all__ = ["probe_once"]

PROBE_BODY_BYTES = 64 * 1024
"""At most this much of a probe's answer is read (a longer body closes the connection)."""


async def probe_once(
    transport: httpx.AsyncBaseTransport, peer: Peer, check: HealthCheck
) -> tuple[bool, str]:
    """Probe ``peer`` once: ``(passed, detail)``; never raises for a failing target.

    Passed means a response head with a status in ``check.expect_status`` arrived, and
    the answer ended, within ``check.timeout_s``.
    """
    target = peer.target
    timeout_s = check.timeout_s
    phases = ("connect", "read", "write", "pool")
    extensions: dict[str, object] = {
        "timeout": dict.fromkeys(phases, timeout_s),
        "target": check.path.encode("ascii"),
    }
    if target.unix_path is not None:
        extensions["unix_socket"] = target.unix_path
    request = httpx.Request(
        "GET",
        peer.origin_url,
        headers=[(b"host", target.authority.encode("idna")), (b"user-agent", b"gateway")],
        extensions=extensions,
    )
    try:
        async with asyncio.timeout(timeout_s):
            response = await transport.handle_async_request(request)
            try:
                stream = response.stream
                assert isinstance(stream, httpx.AsyncByteStream)
                received = 0
                async for chunk in stream:
                    received += len(chunk)
                    if received > PROBE_BODY_BYTES:
                        break
            finally:
                await response.aclose()
    except Exception as exc:  # any failure is a failed probe; the detail is logged
        if isinstance(exc, TimeoutError):
            return False, f"no answer within {timeout_s:g} s"
        return False, f"{type(exc).__name__}: {exc}"
    status = response.status_code
    return status in check.expect_status, f"status {status}"
