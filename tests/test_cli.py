"""The command line, run as real processes: check, cert, run (TLS, redirect, workers)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway.tls import CertificatePair
from tests.servers import Backend, free_port, gateway_process

GATEWAY = [sys.executable, "-m", "gateway"]


def gateway_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "GATEWAY_ADMIN__PORT": "0", **(env or {})}
    return subprocess.run(
        [*GATEWAY, *args], capture_output=True, text=True, timeout=60, env=environment, check=False
    )


def test_check_prints_effective_configuration() -> None:
    result = gateway_cmd("check", "-c", "settings/gateway.toml")
    assert result.returncode == 0, result.stderr
    assert '[[routes]]\nprefix = "/"\n' in result.stdout
    assert 'upstream = "http://127.0.0.1:8080"' in result.stdout
    assert "configuration is valid" in result.stderr


def test_check_reports_every_problem_with_its_line_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[listen]\nportt = 1\n\n[[routes]]\nupstream = "ftp://x"\n'
        '[[routes]]\nprefix = "/a"\nupstream = "http://a"\n[routes.headers]\nsecurityy = 1\n'
    )
    result = gateway_cmd("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"gateway: {path}:2: listen.portt: unknown key (did you mean 'port'?)",
        f"gateway: {path}:5: routes.0.upstream: upstream 'ftp://x': unsupported scheme 'ftp' "
        "(use http or https)",
        f"gateway: {path}:10: routes.1.headers.securityy: unknown key (did you mean 'security'?)",
    ]
    assert result.stdout == ""


def test_check_blames_the_environment_variable_not_the_file(tmp_path: Path) -> None:
    env = {"GATEWAY_LISTEN__PORTT": "1", "GATEWAY_ROUTES": '[{"prefix": "/", "upstreem": "x"}]'}
    result = gateway_cmd("check", "-c", "settings/gateway.toml", env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "gateway: GATEWAY_LISTEN__PORTT: listen.portt: unknown key (did you mean 'port'?)",
        "gateway: GATEWAY_ROUTES: routes.0.upstreem: unknown key (did you mean 'upstream'?)",
    ]


def test_check_binds_no_port(tmp_path: Path) -> None:
    # The gateway it checks is running: its ports are taken, and check must not care.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "busy.toml"
        path.write_text(f"[listen]\nport = {port}\n[admin]\nport = {port}\n")
        result = gateway_cmd("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert f"port = {port}" in result.stdout


def test_check_an_nginx_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text("server { listen 8443; location / { proxy_pass http://127.0.0.1:9000; } }\n")
    result = gateway_cmd("check", "--nginx", str(conf))
    assert result.returncode == 0, result.stderr
    assert 'upstream = "http://127.0.0.1:9000"' in result.stdout


def test_cert_writes_a_usable_localhost_certificate(tmp_path: Path) -> None:
    result = gateway_cmd("cert", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert oct((tmp_path / "key.pem").stat().st_mode & 0o777) == "0o600"
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        tmp_path / "cert.pem", tmp_path / "key.pem"
    )


async def test_run_makes_a_dev_certificate_redirects_and_stops_on_sigterm(
    backend: Backend, tmp_path: Path
) -> None:
    port, redirect = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[listen]\nport = {port}\nredirect_port = {redirect}\n"
        f'[[routes]]\nupstream = "http://127.0.0.1:{backend.port}"\n'
    )
    env = {"GATEWAY_STATE_DIR": str(tmp_path / "state")}
    async with gateway_process([*GATEWAY, "run", "-c", str(config)], port, env) as process:
        dev = tmp_path / "state" / "dev-cert" / "cert.pem"
        context = ssl.create_default_context(cafile=dev)
        async with httpx.AsyncClient(verify=context, timeout=30) as client:
            response = await client.get(f"https://localhost:{port}/echo")
            assert response.status_code == 200
            moved = await client.get(f"http://localhost:{redirect}/a/b?c=1")
        assert moved.status_code == 308
        assert moved.headers["location"] == f"https://localhost:{port}/a/b?c=1"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
    assert "no certificate configured: using a new development certificate" in log
    assert f"{dev}" in log


async def test_run_with_two_workers(
    backend: Backend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    port = free_port()
    env = {
        "GATEWAY_LISTEN__PORT": str(port),
        "GATEWAY_LISTEN__CERTFILE": str(cert_pair.certfile),
        "GATEWAY_LISTEN__KEYFILE": str(cert_pair.keyfile),
        "GATEWAY_ROUTES": f'[{{"prefix": "/", "upstream": "http://127.0.0.1:{backend.port}"}}]',
    }
    async with gateway_process([*GATEWAY, "run", "--workers", "2"], port, env) as process:
        async with httpx.AsyncClient(verify=client_ssl, timeout=30) as client:
            for _ in range(5):
                response = await client.get(f"https://localhost:{port}/echo")
                assert response.status_code == 200
                # gateway run: one Date, and its own Server instead of the backend's.
                assert len(response.headers.get_list("date")) == 1
                assert response.headers.get_list("server") == ["gateway"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_uvicorn_factory_with_its_own_ssl_flags(
    backend: Backend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[[routes]]\nupstream = "http://127.0.0.1:{backend.port}"\n')
    args = [
        sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        "--ssl-certfile", str(cert_pair.certfile), "--ssl-keyfile", str(cert_pair.keyfile),
    ]  # fmt: skip
    async with (
        gateway_process(args, port, {"GATEWAY_CONFIG": str(config)}),
        httpx.AsyncClient(verify=client_ssl, timeout=30) as client,
    ):
        response = await client.get(f"https://127.0.0.1:{port}/echo")
        missing = await client.get(f"https://127.0.0.1:{port}/nowhere")  # the gateway's 404
    assert response.status_code == 200
    assert backend.requests[0]["raw_path"] == "/echo"
    # uvicorn's default flags: its Date and Server, the backend's dropped - one of each.
    for answer in (response, missing):
        assert len(answer.headers.get_list("date")) == 1
        assert answer.headers.get_list("server") == ["uvicorn"]


@pytest.mark.parametrize("args", [["run", "--workers", "0"], ["bogus"]])
def test_bad_arguments(args: list[str]) -> None:
    assert gateway_cmd(*args).returncode == 2


async def test_sigterm_closes_websocket_sessions_with_1001_after_grace(
    cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0) as backend:
        backend_port = backend.sockets[0].getsockname()[1]
        port = free_port()
        env = {
            "GATEWAY_LISTEN__PORT": str(port),
            "GATEWAY_LISTEN__CERTFILE": str(cert_pair.certfile),
            "GATEWAY_LISTEN__KEYFILE": str(cert_pair.keyfile),
            "GATEWAY_TIMEOUTS__SHUTDOWN_GRACE_S": "0.5",
            "GATEWAY_ROUTES": f'[{{"prefix": "/", "upstream": "http://127.0.0.1:{backend_port}"}}]',
        }
        async with (
            gateway_process([*GATEWAY, "run"], port, env) as process,
            connect(f"wss://localhost:{port}/ws", ssl=client_ssl) as session,
        ):
            await session.send("before")
            assert await session.recv() == "before"
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(session.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
            assert await asyncio.wait_for(process.wait(), 20) == 0


def test_hash_password_reads_stdin() -> None:
    result = subprocess.run(
        [*GATEWAY, "hash-password"], input="s3cret\n", capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    from gateway.middleware.auth import verify_password

    assert verify_password("s3cret", result.stdout.strip())
    assert "s3cret" not in result.stdout


async def test_admin_listener_serves_health_metrics_and_status(backend: Backend) -> None:
    port, admin = free_port(), free_port()
    env = {
        "GATEWAY_LISTEN__PORT": str(port),
        "GATEWAY_LISTEN__TLS": "false",
        "GATEWAY_ADMIN__PORT": str(admin),
        "GATEWAY_LOG__ACCESS_LOG": "true",
        "GATEWAY_ROUTES": f'[{{"prefix": "/", "upstream": "http://127.0.0.1:{backend.port}"}}]',
    }
    async with gateway_process([*GATEWAY, "run"], port, env) as process:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(3):
                assert (
                    await client.get(f"http://127.0.0.1:{port}/echo?token=s3cret")
                ).status_code == 200
            health = await client.get(f"http://127.0.0.1:{admin}/healthz")
            ready = await client.get(f"http://127.0.0.1:{admin}/readyz")
            metrics = await client.get(f"http://127.0.0.1:{admin}/metrics")
            status = await client.get(f"http://127.0.0.1:{admin}/status.json")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
    assert health.status_code == 200
    assert ready.status_code == 200
    assert 'gateway_http_requests_total{code="200",protocol="1.1",route="/"} 3.0' in metrics.text
    assert status.json()["routes"][0]["name"] == "/"
    access = [line for line in log.splitlines() if '"GET /echo' in line]
    assert len(access) == 3
    assert "s3cret" not in log


def test_features_without_their_extra_are_named_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from gateway.cli import check_extras
    from gateway.settings import Settings

    settings = Settings(listen={"http2": True}, acme={"domains": ["gw.example.com"]})
    assert check_extras(settings, "g.toml") == []  # both extras are installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: None if name in ("hypercorn", "acme") else real(name),
    )
    assert check_extras(settings, "g.toml") == [
        "g.toml: listen.http2: needs the 'hypercorn' package: pip install 'gateway[http2]'",
        "g.toml: [acme]: needs the 'acme' package: pip install 'gateway[acme]'",
    ]
    assert check_extras(Settings(), "g.toml") == []
