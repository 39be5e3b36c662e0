"""Load generator for the soak test, run as its own process.

``python soak_client.py BASE_URL CA_FILE SECONDS`` prints one JSON line: counts,
failures (the first few), and latency percentiles in milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import sys
import time

import httpx
from websockets.asyncio.client import connect

HTTP_WORKERS = 8
WS_WORKERS = 4


async def main(base: str, cafile: str, seconds: float) -> dict[str, object]:
    context = ssl.create_default_context(cafile=cafile)
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    failures: list[str] = []
    counts = {"http": 0, "ws_messages": 0, "ws_sessions": 0}

    async def http_worker(number: int) -> None:
        limits = httpx.Limits(max_keepalive_connections=2)
        async with httpx.AsyncClient(verify=context, timeout=10, limits=limits) as client:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                body = os.urandom(1000 + (i * 997) % 20000) if i % 2 else b""
                start = time.perf_counter()
                try:
                    if body:
                        response = await client.post(f"{base}/echo/{number}/{i}", content=body)
                    else:
                        response = await client.get(f"{base}/echo/{number}/{i}?q={i}")
                    latencies.append(time.perf_counter() - start)
                    record = response.json()
                    ok = (
                        response.status_code == 200
                        and record["raw_path"] == f"/echo/{number}/{i}"
                        and record["body_sha256"] == hashlib.sha256(body).hexdigest()
                    )
                    if not ok:
                        failures.append(f"http {response.status_code} {response.text[:100]}")
                except Exception as exc:
                    failures.append(f"http {type(exc).__name__}: {exc}")
                counts["http"] += 1

    async def ws_worker(number: int) -> None:
        wss = base.replace("https:", "wss:")
        while time.monotonic() < deadline:
            try:
                async with connect(f"{wss}/ws/{number}", ssl=context, open_timeout=10) as ws:
                    counts["ws_sessions"] += 1
                    for i in range(50):
                        if time.monotonic() >= deadline:
                            break
                        message: str | bytes = f"{number}:{i}" if i % 2 else os.urandom(i * 100)
                        start = time.perf_counter()
                        await ws.send(message)
                        echoed = await asyncio.wait_for(ws.recv(), 10)
                        latencies.append(time.perf_counter() - start)
                        if echoed != message:
                            failures.append(f"ws mismatch {number}:{i}")
                        counts["ws_messages"] += 1
            except Exception as exc:
                failures.append(f"ws {type(exc).__name__}: {exc}")

    await asyncio.gather(
        *(http_worker(n) for n in range(HTTP_WORKERS)), *(ws_worker(n) for n in range(WS_WORKERS))
    )
    latencies.sort()

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2)

    return {
        **counts,
        "failures": len(failures),
        "first_failures": failures[:10],
        "p50_ms": pct(0.50) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
        "max_ms": pct(1.0) if latencies else None,
    }


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
    print(json.dumps(result), flush=True)
