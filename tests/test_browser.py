"""The seed scenario in a real browser: headless Chromium -> https/wss gateway -> echo backend."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.servers import free_port
from tests.tools import missing

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def chromium_installed() -> None:
    """Debian's chromium (scripts/setup installs it): missing, fail under CI, else skip."""
    if not Path(CHROMIUM).exists():
        missing("chromium", "apt-get install chromium (scripts/setup does)")


# Without these, Chromium tries Google's services and the closed network refuses them.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture(params=["http1", "http2"])
def demo(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    """``gateway demo`` as a real process on free ports, with listen.http2 off and on;
    yields the https port."""
    port, backend_port = free_port(), free_port()
    http2 = {"GATEWAY_LISTEN__HTTP2": "true"} if request.param == "http2" else {}
    log = tmp_path / "demo.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--port", str(port),
             "--backend-port", str(backend_port)],
            env={
                **os.environ,
                "GATEWAY_STATE_DIR": str(tmp_path / "state"),
                "GATEWAY_ADMIN__PORT": "0",
                **http2,
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while b"gateway ready" not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert f"open https://localhost:{port}/" in log.read_text()
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_demo_page_echoes_text_and_binary_over_wss(
    demo: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.goto(f"https://localhost:{demo}/")
            protocol = page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=10000)
            # The page chose wss:// from location.protocol, not a hard-coded ws://.
            expect(page.locator("#url")).to_have_text(f"wss://localhost:{demo}/ws")

            page.fill("#msg", "hello through the gateway")
            page.click("#send")
            received = page.locator('#log li[data-direction="in"]')
            expect(received.first).to_have_text("hello through the gateway")
            expect(received.first).to_have_attribute("data-kind", "text")

            page.fill("#msg", "binary ünïcode")
            page.click("#send-binary")
            expect(received).to_have_count(2)
            expect(received.first).to_have_attribute("data-kind", "binary")
            expect(received.first).to_have_text("16 bytes: binary ünïcode")
            page.screenshot(path=str(tmp_path / "demo.png"))
        finally:
            browser.close()
    assert (tmp_path / "demo.png").stat().st_size > 1000
    # The page over HTTP/2 where it is on; which protocol carried the WebSocket is in the
    # gateway's session line (http=2: RFC 8441 on the page's connection).
    assert protocol == ("h2" if "http2" in request.node.callspec.id else "http/1.1")
    log = tmp_path / "demo.log"
    deadline = time.monotonic() + 10  # the session line comes when the browser closed it
    while "websocket session" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    [session] = [line for line in log.read_text().splitlines() if "websocket session" in line]
    websocket_over = session.split(" http=")[1].split()[0]
    print(f"\nbrowser: page over {protocol}, WebSocket over HTTP/{websocket_over}")
    if protocol == "http/1.1":
        assert websocket_over == "1.1"
