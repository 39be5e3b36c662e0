"""Operations with real processes and signals: reload, certificate reload, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.reload import Reloader
from gateway.settings import Settings
from gateway.tls import CertificatePair
from tests.servers import Backend, free_port, gateway_process, plain_config, run_server

GATEWAY = [sys.executable, "-m", "gateway"]


def write_config(
    path: Path, port: int, upstream: str, pair: CertificatePair, extra: str = ""
) -> None:
    path.write_text(
        f'[listen]\nport = {port}\ncertfile = "{pair.certfile}"\nkeyfile = "{pair.keyfile}"\n'
        f"[timeouts]\nshutdown_grace_s = 5\n"
        f'[[routes]]\nprefix = "/"\nupstream = "{upstream}"\n{extra}'
    )


async def wait_for_log(process: asyncio.subprocess.Process, text: str, log: list[str]) -> None:
    """Read the process's stderr into ``log`` until a line contains ``text``."""
    assert process.stderr is not None
    while not any(text in line for line in log):
        line = await asyncio.wait_for(process.stderr.readline(), 15)
        if not line:
            raise AssertionError(f"process ended before logging {text!r}: {log}")
        log.append(line.decode())


async def test_reload_under_load_drops_nothing_and_switches_backend(
    tmp_path: Path, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    first, second = Backend(), Backend()
    async with run_server(plain_config(first)) as port1, run_server(plain_config(second)) as port2:
        port = free_port()
        config = tmp_path / "gateway.toml"
        write_config(config, port, f"http://127.0.0.1:{port1}", cert_pair)
        args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        async with (
            gateway_process(args, port, {}) as process,
            httpx.AsyncClient(verify=client_ssl, timeout=30) as client,
        ):
            statuses: list[int] = []
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    response = await client.get(f"https://localhost:{port}/echo")
                    statuses.append(response.status_code)

            workers = [asyncio.create_task(load()) for _ in range(4)]
            await asyncio.sleep(0.5)
            write_config(config, port, f"http://127.0.0.1:{port2}", cert_pair)
            log: list[str] = []
            reload = await asyncio.create_subprocess_exec(
                *GATEWAY, "reload", "--pid-file", str(tmp_path / "pid")
            )
            assert await reload.wait() == 0
            await wait_for_log(process, "reloaded settings", log)
            count_at_reload = len(second.requests)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*workers)
    assert statuses
    assert set(statuses) == {200}
    assert first.requests
    assert len(second.requests) > count_at_reload


async def test_broken_reload_keeps_old_routes_and_websocket_sessions_survive(
    tmp_path: Path, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0) as ws_backend:
        ws_port = ws_backend.sockets[0].getsockname()[1]
        port = free_port()
        config = tmp_path / "gateway.toml"
        write_config(config, port, f"http://127.0.0.1:{ws_port}", cert_pair)
        args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
        async with (
            gateway_process(args, port, {}) as process,
            connect(f"wss://localhost:{port}/chat", ssl=client_ssl) as session,
        ):
            log: list[str] = []
            # A good reload: the open session keeps working on the old configuration.
            process.send_signal(signal.SIGHUP)
            await wait_for_log(process, "reloaded settings", log)
            await session.send("after good reload")
            assert await session.recv() == "after good reload"
            # A broken file: rejected with the key named, old routes kept.
            config.write_text('[[routes]]\nupstream = "ftp://nowhere"\n')
            process.send_signal(signal.SIGHUP)
            await wait_for_log(process, "reload rejected", log)
            await session.send("after broken reload")
            assert await session.recv() == "after broken reload"
            async with connect(f"wss://localhost:{port}/new", ssl=client_ssl) as fresh:
                await fresh.send("new session")
                assert await fresh.recv() == "new session"
    rejected = [line for line in log if "reload rejected" in line]
    assert "routes.0.upstream" in rejected[0]
    assert "unsupported scheme 'ftp'" in rejected[0]


async def peer_certificate_issuer(port: int, context: ssl.SSLContext) -> str:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        cert = writer.get_extra_info("peercert")
        return str(cert["issuer"])
    finally:
        writer.close()


async def test_swapped_certificate_is_served_to_the_next_client(
    tmp_path: Path, backend: Backend
) -> None:
    old_ca, new_ca = trustme.CA(organization_name="Old CA"), trustme.CA(organization_name="New CA")
    pair = CertificatePair(tmp_path / "cert.pem", tmp_path / "key.pem")

    def install(ca: trustme.CA) -> None:
        issued = ca.issue_cert("localhost", "127.0.0.1")
        issued.private_key_pem.write_to_path(str(pair.keyfile))
        issued.cert_chain_pems[0].write_to_path(str(pair.certfile))

    install(old_ca)
    port = free_port()
    config = tmp_path / "gateway.toml"
    write_config(config, port, f"http://127.0.0.1:{backend.port}", pair)
    trust_both = ssl.create_default_context()
    old_ca.configure_trust(trust_both)
    new_ca.configure_trust(trust_both)
    args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
    async with gateway_process(args, port, {}) as process:
        assert "Old CA" in await peer_certificate_issuer(port, trust_both)
        # An open keep-alive connection survives the swap.
        async with httpx.AsyncClient(verify=trust_both, timeout=30) as client:
            assert (await client.get(f"https://localhost:{port}/echo")).status_code == 200
            install(new_ca)
            log: list[str] = []
            await wait_for_log(process, "certificate reloaded", log)
            assert (await client.get(f"https://localhost:{port}/echo")).status_code == 200
        assert "New CA" in await peer_certificate_issuer(port, trust_both)


async def test_sigterm_lets_a_long_upload_finish_then_exits_0(
    tmp_path: Path, backend: Backend, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    write_config(config, port, f"http://127.0.0.1:{backend.port}", cert_pair)
    args = [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]
    chunk = b"x" * 65536
    chunks = 40  # about 2.6 MB over 2 s

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield chunk
            await asyncio.sleep(0.05)

    async with (
        gateway_process(args, port, {}) as process,
        httpx.AsyncClient(verify=client_ssl, timeout=30) as client,
    ):
        upload = asyncio.create_task(
            client.post(f"https://localhost:{port}/echo", content=slow_body())
        )
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        response = await upload
        assert await asyncio.wait_for(process.wait(), 20) == 0
    assert response.status_code == 200
    assert response.json()["body_bytes"] == len(chunk) * chunks
    assert not (tmp_path / "pid").exists()


NGINX_CONF = """
map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
server {{
    listen {port} ssl;
    server_name localhost;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
        proxy_pass http://127.0.0.1:{backend};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_set_header Host $http_host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_read_timeout 86400;
    }}
}}
"""


async def test_run_nginx_conf_and_reload_it(
    tmp_path: Path, cert_pair: CertificatePair, client_ssl: ssl.SSLContext
) -> None:
    first, second = Backend(), Backend()
    async with run_server(plain_config(first)) as port1, run_server(plain_config(second)) as port2:
        port = free_port()
        conf = tmp_path / "nginx.conf"

        def write(backend_port: int) -> None:
            conf.write_text(
                NGINX_CONF.format(
                    port=port, cert=cert_pair.certfile, key=cert_pair.keyfile, backend=backend_port
                )
            )

        write(port1)
        args = [*GATEWAY, "run", "--nginx", str(conf), "--pid-file", str(tmp_path / "pid")]
        async with (
            gateway_process(args, port, {}) as process,
            httpx.AsyncClient(verify=client_ssl, timeout=30) as client,
        ):
            assert (await client.get(f"https://localhost:{port}/a")).status_code == 200
            write(port2)
            process.send_signal(signal.SIGHUP)
            await wait_for_log(process, "reloaded settings", [])
            assert (await client.get(f"https://localhost:{port}/b")).status_code == 200
    assert [r["raw_path"] for r in first.requests] == ["/a"]
    assert [r["raw_path"] for r in second.requests] == ["/b"]


async def test_reload_says_which_timeouts_need_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    # The listeners read header_s and tls_handshake_s when they start; a reload says so.
    old = Settings()
    new = Settings(timeouts={"tls_handshake_s": 3, "header_s": 60, "read_s": 5})
    reloader = Reloader(lambda: new, "test.toml", old, None)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        assert await reloader.reload()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["reload: timeouts.tls_handshake_s takes effect after a restart"]
    assert reloader.settings is new


async def test_reload_says_listener_sections_need_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # HTTP/2 (on or off, and its bounds) and ACME are set up when the listener starts.
    old = Settings()
    new = Settings(listen={"http2": True}, http2={"max_concurrent_streams": 10})
    reloader = Reloader(lambda: new, "test.toml", old, None)
    with caplog.at_level(logging.WARNING, logger="gateway"):
        assert await reloader.reload()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "reload: [listen] changes take effect after a restart",
        "reload: [http2] changes take effect after a restart",
    ]
