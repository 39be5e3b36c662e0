"""Autobahn|Testsuite's fuzzing client through ``gateway run``: framing, fragmentation,
control frames, UTF-8, close handshakes, limits and permessage-deflate, as a client
sees them through the gateway in front of a websockets echo backend.

A case passes when Autobahn calls its behaviour OK, NON-STRICT or INFORMATIONAL; a case
the gateway fails passes only if the backend, asked directly, fails it too (the gateway
cannot be more correct than what it forwards to). Both ways of relaying are run: the
frame relay (the default, for clients that negotiate no extension) and the bridge
(``relay = false``; with compression every session takes it).

The suite's cases 1-7, 9 and 10 run here whole; of 12 and 13 (compression, about 8
minutes whole, dominated by the largest messages) every payload kind and parameter set
with messages of up to 1 KiB. ``bench/autobahn`` runs all of 1-10 and 12-13 (README:
WebSocket fidelity).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port, gateway_process, wait_for_port
from tests.tools import ROOT, missing

pytestmark = pytest.mark.timeout(900)

WSTEST = ROOT / ".venv-autobahn" / "bin" / "wstest"
ECHO = Path(__file__).with_name("autobahn_echo.py")
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}

# Of 12 (5 kinds of payload) and 13 (7 sets of compression parameters), cases
# x.y.1-x.y.4: 1,000 compressed messages of 16, 64, 256 and 1,024 bytes.
CASES = [
    *(f"{group}.*" for group in (1, 2, 3, 4, 5, 6, 7, 9, 10)),
    *(f"12.{part}.{number}" for part in range(1, 6) for number in range(1, 5)),
    *(f"13.{part}.{number}" for part in range(1, 8) for number in range(1, 5)),
]


def wstest() -> Path:
    if not os.access(WSTEST, os.X_OK):
        missing("Autobahn|Testsuite (.venv-autobahn/bin/wstest)", "scripts/install-autobahn")
    return WSTEST


async def fuzz(url: str, cases: list[str], outdir: Path) -> dict[str, dict[str, Any]]:
    """Run the fuzzing client against ``url``: its result for each case."""
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": "target", "url": url}],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    outdir.mkdir(parents=True)
    spec_file = outdir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    process = await asyncio.create_subprocess_exec(
        str(wstest()),
        "-m",
        "fuzzingclient",
        "-s",
        str(spec_file),
        cwd=outdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    index = outdir / "index.json"
    log = output.decode(errors="replace")[-3000:]
    assert process.returncode == 0, log
    assert index.exists(), log
    results: dict[str, dict[str, Any]] = json.loads(index.read_text())["target"]
    return results


def failures(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The cases that did not pass, with what went wrong."""
    return {
        case: f"{result['behavior']} (close: {result['behaviorClose']})"
        for case, result in results.items()
        if result["behavior"] not in PASSING or result["behaviorClose"] not in PASSING
    }


@pytest.fixture
async def echo_backend() -> AsyncIterator[str]:
    port = free_port()
    environment = {**os.environ, "WEBSOCKETS_MAX_FRAGMENTS": str(1 << 23)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ECHO), str(port), env=environment
    )
    try:
        await wait_for_port(port, process)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "bridge"])
async def test_autobahn_cases_pass_through_the_gateway(
    relay: bool, echo_backend: str, tmp_path: Path
) -> None:
    wstest()
    port = free_port()
    env = {
        "GATEWAY_LISTEN__HOST": "127.0.0.1",
        "GATEWAY_LISTEN__PORT": str(port),
        "GATEWAY_LISTEN__TLS": "false",
        "GATEWAY_ROUTES": json.dumps([{"prefix": "/", "upstream": f"http://{echo_backend}"}]),
        "GATEWAY_ORIGIN__ALLOW": '["*"]',
        "GATEWAY_ORIGIN__ALLOW_MISSING": "true",
        # Case 9 sends messages of up to 16 MiB.
        "GATEWAY_WEBSOCKET__MAX_MESSAGE_BYTES": str(64 << 20),
        "GATEWAY_WEBSOCKET__RELAY": "true" if relay else "false",
        "GATEWAY_LOG__LEVEL": "warning",
    }
    args = [sys.executable, "-m", "gateway", "run"]
    async with gateway_process(args, port, env):
        results = await fuzz(f"ws://127.0.0.1:{port}", CASES, tmp_path / "gateway")
    assert len(results) == 301 + 12 * 4  # every case of the list ran (12 and 13 in part)

    failed = failures(results)
    if failed:  # the gateway's failures count only where the backend passes
        direct = await fuzz(f"ws://{echo_backend}", sorted(failed), tmp_path / "direct")
        failed = {case: why for case, why in failed.items() if case not in failures(direct)}
    assert not failed, f"failed through the gateway, passed by the backend: {failed}"
