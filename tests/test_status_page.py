"""The admin status page in headless Chromium: live refresh after real traffic, screenshot."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from gateway.metrics import Metrics
from gateway.upstream import Upstream
from tests.servers import Backend, plain_config, run_server
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, chromium_installed  # noqa: F401
from tests.test_metrics import instrumented_gateway, two_routes

pytestmark = pytest.mark.browser


@dataclass
class Running:
    """A backend, an instrumented gateway and its admin listener, on their own loop."""

    gateway_url: str
    admin_url: str
    target: str
    metrics: Metrics
    upstream: Upstream
    loop: asyncio.AbstractEventLoop


@pytest.fixture
def running() -> Iterator[Running]:
    """The servers in a thread: Playwright's sync API needs this thread free of a loop."""
    started = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        holder["stop"] = stop
        backend = Backend()
        metrics = Metrics()
        async with run_server(plain_config(backend)) as port:
            backend.port = port
            async with instrumented_gateway(two_routes(backend), metrics) as (url, admin, gw):
                target = f"127.0.0.1:{port}"
                upstream = gw.upstreams[f"http://{target}"]
                loop = asyncio.get_running_loop()
                holder["running"] = Running(url, admin, target, metrics, upstream, loop)
                started.set()
                await stop.wait()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            holder["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=main, name="status-page-servers")
    thread.start()
    try:
        assert started.wait(30), "servers did not start"
        error = holder.get("error")
        if isinstance(error, BaseException):
            raise AssertionError("servers failed") from error
        running = holder["running"]
        assert isinstance(running, Running)
        yield running
    finally:
        stop = holder.get("stop")
        if isinstance(stop, asyncio.Event) and "running" in holder:
            running = holder["running"]
            assert isinstance(running, Running)
            running.loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        assert not thread.is_alive()
    assert "error" not in holder, holder.get("error")


def test_status_page_refreshes_live_in_chromium(running: Running, tmp_path: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(f"{running.admin_url}/status")

            expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10000)
            expect(page.locator("#ready")).to_have_text("ready")
            api = page.locator('#routes tr[data-route="/api"]')
            expect(api).to_be_visible()
            expect(page.locator('#routes tr[data-route="/"]')).to_be_visible()
            target = api.locator(f'[data-target="{running.target}"]')
            expect(target).to_have_attribute("data-health", "up")
            expect(target).to_have_text(f"{running.target} up")
            expect(page.locator("#requests")).to_have_text("0")
            expect(page.locator("#no-errors")).to_be_visible()

            # A marker that a full page reload would wipe out.
            page.evaluate("window.__notReloaded = true")
            with httpx.Client() as client:
                for _ in range(3):
                    assert client.get(f"{running.gateway_url}/api/echo").status_code == 200
                assert client.get(f"{running.gateway_url}/api/status/502").status_code == 502
            running.loop.call_soon_threadsafe(
                running.metrics.upstream_error, "/api", "no_healthy_target"
            )

            # The next refresh (every 2 s) shows the traffic, without reloading the page.
            requests = api.locator('td[data-count="requests"]')
            expect(requests).to_have_text("4", timeout=10000)
            expect(api.locator('td[data-count="server_errors"]')).to_have_text("1")
            expect(page.locator("#requests")).to_have_text("4")
            expect(page.locator("#server-errors")).to_have_text("1")
            expect(page.locator("#errors")).to_have_text("1")
            errors = page.locator("#recent-errors tbody tr")
            expect(errors).to_have_count(1)
            expect(errors.first).to_contain_text("no_healthy_target")
            expect(page.locator("#no-errors")).to_be_hidden()
            assert float(page.locator("#rate").inner_text()) > 0
            assert page.evaluate("window.__notReloaded") is True

            text = page.locator("body").inner_text()
            for expected in ("Gateway status", "/api", " up", "Requests/s",
                             "Open WebSocket sessions", "Recent errors"):  # fmt: skip
                assert expected in text
            shot = tmp_path / "status.png"
            page.screenshot(path=str(shot), full_page=True)

            # The target fails: the page shows it down and the gateway not ready.
            peer = running.upstream.peers[0]
            running.loop.call_soon_threadsafe(running.upstream.failed, peer, "connect_error")
            expect(target).to_have_attribute("data-health", "down", timeout=10000)
            expect(page.locator("#ready")).to_have_text(
                "not ready: route /api: no usable target (last error: connect_error)"
            )
            assert problems == []
        finally:
            browser.close()
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000
