"""The operator's lifecycle with real processes and sockets, each operation repeated:
reload (50 times under traffic), check while running, reload outcome, readiness flipping
both ways, startup announcements, the demo's drain order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.control import read_report, report_path
from gateway.tls import CertificatePair
from tests.robustness.helpers import open_fds
from tests.servers import (
    Backend,
    QuietServer,
    eventually,
    free_port,
    gateway_process,
    plain_config,
)

GATEWAY = [sys.executable, "-m", "gateway"]

pytestmark = pytest.mark.timeout(180)


class CountingBackend:
    """A raw HTTP/1.1 keep-alive backend that counts health probes and open connections."""

    def __init__(self) -> None:
        self.open_connections = 0
        self.probes = 0
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.split(b" ", 2)[1] == b"/healthz":
                    self.probes += 1
                else:
                    self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_connections -= 1
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        try:
            yield self.server.sockets[0].getsockname()[1]
        finally:
            self.server.close()


async def status(admin: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{admin}/status.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def probe_rate(backend: CountingBackend, seconds: float = 2.0) -> float:
    before = backend.probes
    await asyncio.sleep(seconds)
    return (backend.probes - before) / seconds


async def reload_and_wait(pid: int, pid_file: Path) -> None:
    """SIGHUP, then wait for the reload report that it produced."""
    asked = time.time_ns()
    os.kill(pid, signal.SIGHUP)

    def done() -> bool:
        report = read_report(report_path(pid_file))
        return report is not None and report.time_ns >= asked

    await eventually(done, 15)
    report = read_report(report_path(pid_file))
    assert report is not None
    assert report.ok, report


def gateway_toml(port: int, pair: CertificatePair, body: str) -> str:
    return (
        f'[listen]\nport = {port}\ncertfile = "{pair.certfile}"\nkeyfile = "{pair.keyfile}"\n{body}'
    )


def admin_env(admin_port: int) -> dict[str, str]:
    return {"GATEWAY_ADMIN__PORT": str(admin_port)}


async def test_fifty_reloads_under_traffic_leave_no_probes_tasks_fds_or_connections(
    tmp_path: Path, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    backend = CountingBackend()
    async with backend.running() as backend_port:
        port, admin_port = free_port(), free_port()
        admin = f"http://127.0.0.1:{admin_port}"
        config, pid_file = tmp_path / "gateway.toml", tmp_path / "gateway.pid"

        def write(read_s: int) -> None:
            # Each reload really changes something (read_s), so each builds a new gateway.
            config.write_text(
                gateway_toml(
                    port,
                    cert_pair,
                    f"[timeouts]\nread_s = {read_s}\n"
                    f'[upstreams.app]\ntargets = [{{url = "http://127.0.0.1:{backend_port}"}}]\n'
                    "[upstreams.app.health]\ninterval_s = 0.2\n"
                    '[[routes]]\nprefix = "/"\nupstream = "app"\n',
                )
            )

        write(60)
        args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(pid_file)]
        async with (
            gateway_process(args, port, admin_env(admin_port)) as process,
            httpx.AsyncClient(verify=client_ssl, timeout=30) as client,
        ):

            async def traffic(stop: asyncio.Event) -> int:
                answered = 0
                while not stop.is_set():
                    response = await client.get(f"https://localhost:{port}/x")
                    assert response.status_code == 200, response.text
                    answered += 1
                return answered

            async def under_traffic(seconds: float) -> None:
                stop = asyncio.Event()
                loads = [asyncio.create_task(traffic(stop)) for _ in range(4)]
                await asyncio.sleep(seconds)
                stop.set()
                assert all(await asyncio.gather(*loads))

            await under_traffic(1.0)
            await asyncio.sleep(0.5)
            before = await status(admin)
            rate_before = await probe_rate(backend)
            fds_before = open_fds(process.pid)
            connections_before = backend.open_connections

            stop = asyncio.Event()
            loads = [asyncio.create_task(traffic(stop)) for _ in range(4)]
            for number in range(50):
                write(61 + number % 2)
                await reload_and_wait(process.pid, pid_file)
            stop.set()
            assert all(await asyncio.gather(*loads))

            await asyncio.sleep(0.5)
            after = await status(admin)
            rate_after = await probe_rate(backend)
            fds_after = open_fds(process.pid)
            connections_after = backend.open_connections
    figures = (
        f"probes/s {rate_before:.1f} -> {rate_after:.1f}; tasks "
        f"{before['process']['asyncio_tasks']} -> {after['process']['asyncio_tasks']}; fds "
        f"{fds_before} -> {fds_after}; backend connections "
        f"{connections_before} -> {connections_after}"
    )
    print(f"\n50 reloads: {figures}")
    assert after["process"]["retired_configurations"] == 0, figures
    # One probe loop at 0.2 s is 5 probes/s; 51 of them would be 255.
    assert rate_after <= max(rate_before * 1.5, rate_before + 3), figures
    assert after["process"]["asyncio_tasks"] <= before["process"]["asyncio_tasks"] + 2, figures
    assert fds_after <= fds_before + 4, figures
    assert connections_after <= connections_before + 4, figures


async def test_check_binds_no_port_and_runs_while_the_gateway_serves(
    tmp_path: Path, backend: Backend, cert_pair: CertificatePair
) -> None:
    port, admin_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        gateway_toml(
            port,
            cert_pair,
            f'[[routes]]\nupstream = "http://127.0.0.1:{backend.port}"\n',
        )
    )
    args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
    async with gateway_process(args, port, admin_env(admin_port)):
        for _ in range(3):  # edit, check, reload: the nginx -t habit, repeated
            check = await asyncio.to_thread(
                subprocess.run,
                [*GATEWAY, "check", "-c", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert check.returncode == 0, check.stderr
            assert "configuration is valid" in check.stderr
        # A second gateway on the same ports says which port and how to change it.
        second = await asyncio.to_thread(
            subprocess.run,
            [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid2")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert second.returncode == 1
    assert (
        f"gateway: {config}: listen.port: cannot listen on 127.0.0.1:{port}: Address already "
        "in use (another program, or another gateway, listens there: set listen.port "
        "(GATEWAY_LISTEN__PORT))"
    ) in second.stderr


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_command_reports_rejection_and_success(
    workers: int, tmp_path: Path, backend: Backend, cert_pair: CertificatePair
) -> None:
    port, admin_port = free_port(), free_port()
    config, pid_file = tmp_path / "gateway.toml", tmp_path / "gateway.pid"
    good = gateway_toml(
        port, cert_pair, f'[[routes]]\nupstream = "http://127.0.0.1:{backend.port}"\n'
    )
    config.write_text(good)
    args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(pid_file)]
    args += ["--workers", str(workers)]

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*GATEWAY, "reload", "--pid-file", str(pid_file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    async with gateway_process(args, port, admin_env(admin_port)):
        config.write_text(good + "[timeouts]\nread_ss = 1\n")
        rejected = await asyncio.to_thread(reload)
        config.write_text(good)
        accepted = await asyncio.to_thread(reload)
    assert rejected.returncode == 1, rejected
    assert "reload rejected by gateway process" in rejected.stderr
    assert f"{config}:" in rejected.stderr
    assert "timeouts.read_ss: unknown key (did you mean 'read_s'?)" in rejected.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert "reloaded its settings" in accepted.stdout


async def test_reload_command_without_a_gateway_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [*GATEWAY, "reload", "--pid-file", str(tmp_path / "none.pid")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no running gateway found via" in result.stderr


@contextlib.asynccontextmanager
async def backend_on(port: int, app: Backend) -> AsyncIterator[None]:
    """``app`` served on a fixed port (so that it can be stopped and started again)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    server = QuietServer(plain_config(app))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started)
        yield
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_readyz_follows_backends_down_and_back_up(
    tmp_path: Path, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    port, admin_port = free_port(), free_port()
    probed_port, plain_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        gateway_toml(
            port,
            cert_pair,
            f'[upstreams.probed]\ntargets = [{{url = "http://127.0.0.1:{probed_port}"}}]\n'
            '[upstreams.probed.health]\npath = "/echo"\ninterval_s = 0.2\ntimeout_s = 1\n'
            "healthy_threshold = 1\nunhealthy_threshold = 1\n"
            '[[routes]]\nprefix = "/probed"\nupstream = "probed"\n'
            f'[[routes]]\nprefix = "/"\nupstream = "http://127.0.0.1:{plain_port}"\n',
        )
    )
    args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
    readyz = f"http://127.0.0.1:{admin_port}/readyz"
    async with (
        gateway_process(args, port, admin_env(admin_port)),
        httpx.AsyncClient(timeout=10) as admin,
        httpx.AsyncClient(verify=client_ssl, timeout=10) as client,
    ):

        async def ready_is(code: int, text: str = "") -> None:
            async with asyncio.timeout(10):
                while True:
                    answer = await admin.get(readyz)
                    if answer.status_code == code and text in answer.text:
                        return
                    await asyncio.sleep(0.05)

        async with backend_on(plain_port, Backend()):
            for _ in range(2):  # down and back up, twice: by the active health check
                async with backend_on(probed_port, Backend()):
                    await ready_is(200, "ready")
                await ready_is(503, "route /probed: no usable target")
        async with backend_on(probed_port, Backend()):
            await ready_is(200, "ready")
            # No health check on "/": its failures (nginx max_fails) make it not ready...
            assert (await client.get(f"https://localhost:{port}/echo")).status_code == 502
            await ready_is(503, "route /: no usable target (last error: connect_error)")
            async with backend_on(plain_port, Backend()):
                # ... and the next request that gets an answer makes it ready again.
                assert (await client.get(f"https://localhost:{port}/echo")).status_code == 200
                await ready_is(200, "ready")


async def test_readiness_process_mode_ignores_backends(
    tmp_path: Path, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    port, admin_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        gateway_toml(
            port,
            cert_pair,
            f'[admin]\nreadiness = "process"\n[[routes]]\nupstream = "http://127.0.0.1:{free_port()}"\n',
        )
    )
    args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
    async with (
        gateway_process(args, port, admin_env(admin_port)),
        httpx.AsyncClient(verify=client_ssl, timeout=10) as client,
    ):
        assert (await client.get(f"https://localhost:{port}/")).status_code == 502
        ready = await client.get(f"http://127.0.0.1:{admin_port}/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")


async def test_startup_announces_each_listener_once_with_a_url(
    tmp_path: Path, backend: Backend, cert_pair: CertificatePair
) -> None:
    port, redirect, admin_port = free_port(), free_port(), free_port()
    env = {
        "GATEWAY_LISTEN__HOST": "0.0.0.0",
        "GATEWAY_LISTEN__PORT": str(port),
        "GATEWAY_LISTEN__REDIRECT_PORT": str(redirect),
        "GATEWAY_LISTEN__CERTFILE": str(cert_pair.certfile),
        "GATEWAY_LISTEN__KEYFILE": str(cert_pair.keyfile),
        "GATEWAY_ADMIN__PORT": str(admin_port),
        "GATEWAY_ROUTES": f'[{{"prefix": "/", "upstream": "http://127.0.0.1:{backend.port}"}}]',
    }
    args = [*GATEWAY, "run", "--pid-file", str(tmp_path / "pid")]
    async with gateway_process(args, port, env) as process:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
    lines = [line.split(" ", 3)[3] for line in log.splitlines() if " INFO " in line]
    assert lines[:3] == [
        f"gateway: gateway listening on https://localhost:{port}/ (all interfaces; also "
        f"https://{socket.gethostname()}:{port}/)",
        f"gateway: redirect listener on http://localhost:{redirect}/ (all interfaces; also "
        f"http://{socket.gethostname()}:{redirect}/) -> https port {port}",
        f"gateway: admin listener on http://127.0.0.1:{admin_port}/ (/healthz /readyz /metrics"
        " /status; admin.port, admin.enabled)",
    ]
    assert "Started server process" not in log
    assert "Finished server process" not in log
    assert log.count("gateway starting: pid") == 1
    assert log.count("gateway ready (pid") == 1
    assert log.count("gateway stopped") == 1


async def test_demo_drains_the_gateway_before_its_backend_stops(tmp_path: Path) -> None:
    port, backend_port, admin_port = free_port(), free_port(), free_port()
    args = [
        *GATEWAY, "demo", "--port", str(port), "--backend-port", str(backend_port),
        "--admin-port", str(admin_port),
    ]  # fmt: skip
    env = {"GATEWAY_STATE_DIR": str(tmp_path)}
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with gateway_process(args, port, env) as process:
        async with connect(f"wss://localhost:{port}/ws", ssl=context) as session:
            await session.send("hello")
            assert await session.recv() == "hello"
            process.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(session.recv(), 20)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "server shutdown")


def test_the_collector_is_settled_for_a_long_running_server() -> None:
    """What start-up built is frozen out of the collector's scans, and young collections
    wait for more than the objects a few dozen requests hold while in flight."""
    from gateway.server import YOUNG_GC_THRESHOLD, settle_collector

    before = gc.get_threshold()
    try:
        settle_collector()
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert before[0] < YOUNG_GC_THRESHOLD
