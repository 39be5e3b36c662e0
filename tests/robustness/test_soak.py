"""A bounded soak: mixed HTTP and WebSocket traffic from a second process against the
gateway run as a real process; no failures, resources back near the start afterwards.

30 s by default (the suite stays under 10 minutes); ``GATEWAY_SOAK_S=600 pytest
tests/robustness/test_soak.py`` runs a longer (or, for a quick local check, shorter) one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from gateway.tls import CertificatePair
from tests.proxy.ws_servers import ws_backend
from tests.robustness.helpers import open_fds
from tests.servers import Backend, free_port, gateway_process, plain_config, run_server

SOAK_ENV = "GATEWAY_SOAK_S"


def soak_seconds() -> float:
    """The soak's length: ``GATEWAY_SOAK_S`` seconds if set (a positive number), else 30."""
    text = os.environ.get(SOAK_ENV, "30")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{SOAK_ENV}={text!r}: expected a positive number of seconds")
    return seconds


SOAK_S = soak_seconds()
WARMUP_S = 3.0
# The soak, the warm-up, and start-up, settling and shutdown with a wide margin.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SOAK_S + WARMUP_S) + 150)]
CLIENT = Path(__file__).with_name("soak_client.py")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def run_client(base: str, cafile: Path, seconds: float) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(CLIENT), base, str(cafile), str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), seconds + 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    result: dict[str, object] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def settled(pid: int, rss_limit: int, fds_limit: int) -> tuple[int, int]:
    """RSS and fds once both are under their limits (bounded wait), or the last values."""
    rss = fds = 0
    for _ in range(50):
        rss, fds = rss_kib(pid), open_fds(pid)
        if rss <= rss_limit and fds <= fds_limit:
            break
        await asyncio.sleep(0.2)
    return rss, fds


async def test_soak_mixed_http_and_websocket(
    cert_pair: CertificatePair, ca_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    http = Backend()
    async with run_server(plain_config(http)) as http_port, ws_backend() as ws:
        http.port = http_port
        port = free_port()
        routes = [
            {"prefix": "/ws", "upstream": ws.url, "http": False},
            {"prefix": "/", "upstream": f"http://127.0.0.1:{http_port}"},
        ]
        env = {
            "GATEWAY_LISTEN__HOST": "127.0.0.1",
            "GATEWAY_LISTEN__PORT": str(port),
            "GATEWAY_LISTEN__CERTFILE": str(cert_pair.certfile),
            "GATEWAY_LISTEN__KEYFILE": str(cert_pair.keyfile),
            "GATEWAY_ROUTES": json.dumps(routes),
            "GATEWAY_LOG__LEVEL": "warning",
        }
        args = [sys.executable, "-m", "gateway", "run"]
        async with gateway_process(args, port, env) as process:
            assert process.stderr is not None
            # Keep the gateway's stderr pipe drained (a full pipe would block its logging).
            log: list[bytes] = []
            drain = asyncio.create_task(_drain(process.stderr, log))
            base = f"https://localhost:{port}"
            warm = await run_client(base, ca_file, WARMUP_S)
            assert warm["failures"] == 0, warm
            await asyncio.sleep(1.0)
            rss_start, fds_start = rss_kib(process.pid), open_fds(process.pid)
            result = await run_client(base, ca_file, SOAK_S)
            rss_end, fds_end = await settled(
                process.pid, rss_start + max(rss_start // 4, 20_000), fds_start + 8
            )
        drain.cancel()
    with capsys.disabled():
        print(
            f"\nsoak {SOAK_S:.0f}s: {result['http']} HTTP requests, {result['ws_messages']} WS "
            f"messages in {result['ws_sessions']} sessions; p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms; gateway RSS "
            f"{rss_start} -> {rss_end} KiB, fds {fds_start} -> {fds_end}"
        )
    assert result["failures"] == 0, result["first_failures"]
    assert int(str(result["http"])) > 500, result
    assert int(str(result["ws_messages"])) > 500, result
    assert fds_end <= fds_start + 8
    assert rss_end <= rss_start + max(rss_start // 4, 20_000)  # KiB: +25 % or +20 MiB


async def _drain(stream: asyncio.StreamReader, into: list[bytes]) -> None:
    while line := await stream.readline():
        if len(into) < 1000:
            into.append(line)


@pytest.fixture
def ca_file(ca: object, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))  # type: ignore[attr-defined]
    return path
