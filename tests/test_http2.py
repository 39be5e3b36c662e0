"""HTTP/2 on the TLS listener (listen.http2): real TLS on 127.0.0.1, httpx's HTTP/2 client
for requests, the ``h2`` library for raw frames (WebSocket over HTTP/2, abuse)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from gateway.tls import CertificatePair
from tests.conftest import GatewayFactory
from tests.proxy.ws_servers import ws_backend
from tests.robustness.test_hostile import flood, rss_bytes
from tests.servers import Backend, eventually, free_port, gateway_process
from tests.test_lifecycle import reload_and_wait
from tests.tools import require_command

h2_connection = pytest.importorskip("h2.connection")
h2_config = pytest.importorskip("h2.config")
h2_events = pytest.importorskip("h2.events")
h2_settings = pytest.importorskip("h2.settings")
h2_errors = pytest.importorskip("h2.errors")
pytest.importorskip("hypercorn")

HTTP2 = {"listen": {"http2": True}, "origin": {"allow": ["*"]}}


@pytest.fixture
async def h2_gateway(backend: Backend, gateway_factory: GatewayFactory) -> AsyncIterator[str]:
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **HTTP2) as url:
        yield url


def header(headers: list[list[str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


async def test_requests_over_h2_reach_the_backend_as_http11(
    h2_gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    port = h2_gateway.rsplit(":", 1)[1]
    async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
        got = await client.get(f"https://localhost:{port}/echo/a%2Fb?x=1&x=2")
        posted = await client.post(f"https://localhost:{port}/echo", content=b"z" * 100_000)
    assert got.http_version == "HTTP/2"
    assert got.status_code == 200
    seen = got.json()
    assert seen["raw_path"] == "/echo/a%2Fb"
    assert seen["query"] == "x=1&x=2"
    # Host from :authority; no pseudo-header or HTTP/2-only field reaches the backend.
    assert header(seen["headers"], "host") == [f"localhost:{port}"]
    assert not [name for name, _ in seen["headers"] if name.startswith(":")]
    assert header(seen["headers"], "x-forwarded-proto") == ["https"]
    assert posted.json()["body_bytes"] == 100_000
    # One Date and one Server, the gateway's.
    assert got.headers.get_list("server") == ["gateway"]
    assert len(got.headers.get_list("date")) == 1
    assert got.headers.get("x-request-id")


async def test_http11_keeps_working_on_the_same_port(
    h2_gateway: str, client_ssl: ssl.SSLContext
) -> None:
    async with httpx.AsyncClient(http2=False, verify=client_ssl) as client:
        response = await client.get(f"{h2_gateway}/echo")
    assert response.http_version == "HTTP/1.1"
    assert response.status_code == 200


async def test_the_edge_rules_hold_per_stream(h2_gateway: str, client_ssl: ssl.SSLContext) -> None:
    async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
        dots = await client.get(f"{h2_gateway}/x/%2e%2e/echo")
        many = await client.get(f"{h2_gateway}/echo", headers={f"x-{i}": "1" for i in range(120)})
    assert dots.status_code == 400  # path rules
    assert many.status_code == 431  # limits.max_header_count
    # A header list over the announced SETTINGS_MAX_HEADER_LIST_SIZE (limits.max_header_bytes)
    # ends the connection: GOAWAY ENHANCE_YOUR_CALM.
    async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="error_code:11"):
            await client.get(f"{h2_gateway}/echo", headers={"x-big": "v" * 70_000})
        fine = await client.get(f"{h2_gateway}/echo")
    assert fine.status_code == 200


async def test_h2_needs_tls() -> None:
    with pytest.raises(ValueError, match="h2c"):
        Settings(listen={"tls": False, "http2": True})


async def test_backend_down_is_502_over_h2(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    async with (
        gateway_factory(f"http://127.0.0.1:{closed}", **HTTP2) as url,
        httpx.AsyncClient(http2=True, verify=client_ssl) as client,
    ):
        response = await client.get(f"{url}/")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 502


# -- raw HTTP/2 ----------------------------------------------------------------------------


@contextlib.contextmanager
def h2_socket(port: int, client_ssl: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=_ca_pem(client_ssl))
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    assert tls.selected_alpn_protocol() == "h2"
    try:
        yield tls
    finally:
        tls.close()


def _ca_pem(context: ssl.SSLContext) -> str:
    return "".join(ssl.DER_cert_to_PEM_cert(der) for der in context.get_ca_certs(binary_form=True))


def client_connection() -> Any:
    config = h2_config.H2Configuration(client_side=True, header_encoding=None)
    conn = h2_connection.H2Connection(config=config)
    conn.initiate_connection()
    return conn


def read_events(tls: ssl.SSLSocket, conn: Any, until: Any, limit_s: float = 10) -> list[Any]:
    """Read and collect events until ``until(events)`` is true or the connection ends."""
    events: list[Any] = []
    tls.settimeout(limit_s)
    while not until(events):
        try:
            data = tls.recv(65536)
        except (TimeoutError, OSError):
            break
        if not data:
            break
        received = conn.receive_data(data)
        for event in received:  # read: the window opens again, as a client's does
            if isinstance(event, h2_events.DataReceived) and event.flow_controlled_length:
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        events.extend(received)
        if outgoing := conn.data_to_send():
            with contextlib.suppress(OSError):
                tls.sendall(outgoing)
    return events


def settings_received(events: list[Any]) -> bool:
    return any(isinstance(e, h2_events.RemoteSettingsChanged) for e in events)


def request_headers(port: int, path: str = "/echo") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", f"localhost:{port}".encode()),
        (b":path", path.encode()),
    ]


def open_and_reset(conn: Any, port: int, count: int) -> None:
    """``count`` streams opened and cancelled at once: rapid reset's shape."""
    for _ in range(count):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, request_headers(port), end_stream=True)
        conn.reset_stream(stream, h2_errors.ErrorCodes.CANCEL)


async def run_h2load(h2load: str, *args: str) -> str:
    """h2load's report (stdout) for ``args``."""
    done = await asyncio.to_thread(
        subprocess.run, [h2load, *args], capture_output=True, text=True, timeout=120
    )
    return done.stdout


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def websocket_frame(opcode: int, payload: bytes) -> bytes:
    """A client (masked) WebSocket frame, payload under 126 bytes."""
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + masked


def websocket_over_h2(
    port: int, client_ssl: ssl.SSLContext, origin: str
) -> tuple[bool, int, bytes]:
    """An RFC 8441 session: (CONNECT protocol announced, status, bytes echoed back)."""
    with h2_socket(port, client_ssl) as tls:
        conn = client_connection()
        tls.sendall(conn.data_to_send())
        read_events(tls, conn, settings_received)
        enabled = conn.remote_settings.get(h2_settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":authority", f"localhost:{port}".encode()),
                (b":path", b"/ws"),
                (b"sec-websocket-version", b"13"),
                (b"origin", origin.encode()),
            ],
        )
        tls.sendall(conn.data_to_send())
        events = read_events(
            tls, conn, lambda ev: any(isinstance(e, h2_events.ResponseReceived) for e in ev)
        )
        [status] = [
            int(dict(e.headers)[b":status"])
            for e in events
            if isinstance(e, h2_events.ResponseReceived)
        ]
        if status != 200:
            return bool(enabled), status, b""
        conn.send_data(stream, websocket_frame(0x1, b"hello over h2"))
        tls.sendall(conn.data_to_send())

        def echoed(events: list[Any]) -> bool:
            return b"hello over h2" in received(events)

        def received(events: list[Any]) -> bytes:
            return b"".join(e.data for e in events if isinstance(e, h2_events.DataReceived))

        return bool(enabled), status, received(read_events(tls, conn, echoed))


async def test_websocket_over_h2_rfc8441(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    async with ws_backend() as backend, gateway_factory(backend.url, **HTTP2) as url:
        enabled, status, received = await asyncio.to_thread(
            websocket_over_h2, port_of(url), client_ssl, f"https://localhost:{port_of(url)}"
        )
    assert enabled  # SETTINGS_ENABLE_CONNECT_PROTOCOL announced
    assert status == 200
    assert received[:2] == bytes([0x81, len(b"hello over h2")])  # an unmasked text frame
    assert received[2:] == b"hello over h2"


async def test_websocket_over_h2_keeps_the_origin_check(
    gateway_factory: GatewayFactory, client_ssl: ssl.SSLContext
) -> None:
    sections = {"listen": {"http2": True}}  # origin.allow: same-origin, the default
    async with ws_backend() as backend, gateway_factory(backend.url, **sections) as url:
        _, status, _ = await asyncio.to_thread(
            websocket_over_h2, port_of(url), client_ssl, "https://evil.example"
        )
    assert status == 403


async def test_rapid_reset_burst_ends_the_connection_and_others_are_served(
    h2_gateway: str, client_ssl: ssl.SSLContext, backend: Backend
) -> None:
    port = port_of(h2_gateway)

    def burst() -> tuple[int, bool]:
        """Open and cancel 5,000 streams (CVE-2023-44487); (streams sent, ended by server)."""
        with h2_socket(port, client_ssl) as tls:
            conn = client_connection()
            tls.sendall(conn.data_to_send())
            sent = 0
            with contextlib.suppress(OSError):
                for _ in range(50):
                    open_and_reset(conn, port, 100)
                    sent += 100
                    tls.sendall(conn.data_to_send())
            # The server ends the connection: GOAWAY, or a close.
            tls.settimeout(10)
            ended = False
            with contextlib.suppress(OSError):
                while data := tls.recv(65536):
                    if any(
                        isinstance(e, h2_events.ConnectionTerminated)
                        for e in conn.receive_data(data)
                    ):
                        ended = True
                        break
                else:
                    ended = True
            return sent, ended

    sent, ended = await asyncio.to_thread(burst)
    assert ended, sent
    # Streams cancelled at once start little work (main: hypercorn's default of 1,000
    # requests per connection; here 500).
    assert backend.started <= 1000, backend.started
    async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
        response = await client.get(f"https://localhost:{port}/echo")
    assert response.status_code == 200


async def test_streams_over_the_limit_are_refused_one_by_one(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """RFC 9113 5.1.2: a stream over SETTINGS_MAX_CONCURRENT_STREAMS is a stream error
    (REFUSED_STREAM: never processed, safe to retry), not the end of the connection; on
    main h2 ended the connection (GOAWAY PROTOCOL_ERROR), losing the four streams in
    flight. The refused streams are POSTs whose body comes in the same write."""
    sections = {**HTTP2, "http2": {"max_concurrent_streams": 4}}
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        port = port_of(url)

        def streams() -> tuple[int, dict[int, int], dict[int, int], list[Any]]:
            with h2_socket(port, client_ssl) as tls:
                conn = client_connection()
                tls.sendall(conn.data_to_send())
                read_events(tls, conn, settings_received)
                allowed = conn.remote_settings.max_concurrent_streams
                # Past the announced limit on purpose: the client library would refuse.
                conn.remote_settings[h2_settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
                conn.remote_settings.acknowledge()
                for _ in range(4):  # slow requests: all open at once
                    stream = conn.get_next_available_stream_id()
                    conn.send_headers(stream, request_headers(port, "/slow/0.5"), end_stream=True)
                for _ in range(4):
                    stream = conn.get_next_available_stream_id()
                    post = [(b":method", b"POST"), *request_headers(port)[1:]]
                    conn.send_headers(stream, post)
                    conn.send_data(stream, b"b" * 1000, end_stream=True)
                tls.sendall(conn.data_to_send())
                statuses: dict[int, int] = {}
                resets: dict[int, int] = {}

                def note(events: list[Any]) -> None:
                    for event in events:
                        if isinstance(event, h2_events.ResponseReceived):
                            statuses[event.stream_id] = int(dict(event.headers)[b":status"])
                        elif isinstance(event, h2_events.StreamReset):
                            resets[event.stream_id] = event.error_code

                def settled(events: list[Any]) -> bool:
                    note(events)
                    return len(statuses) + len(resets) >= 8

                events = read_events(tls, conn, settled)
                ends = [e for e in events if isinstance(e, h2_events.ConnectionTerminated)]
                if ends:
                    return allowed, statuses, resets, ends
                # The connection still takes streams.
                stream = conn.get_next_available_stream_id()
                conn.send_headers(stream, request_headers(port), end_stream=True)
                tls.sendall(conn.data_to_send())

                def answered(events: list[Any]) -> bool:
                    note(events)
                    return stream in statuses

                read_events(tls, conn, answered)
                return allowed, statuses, resets, ends

        allowed, statuses, resets, ends = await asyncio.to_thread(streams)
    assert allowed == 4
    assert ends == []
    assert statuses == {1: 200, 3: 200, 5: 200, 7: 200, 17: 200}
    assert resets == dict.fromkeys([9, 11, 13, 15], h2_errors.ErrorCodes.REFUSED_STREAM)
    assert [r["method"] for r in backend.requests].count("POST") == 0


async def test_rapid_reset_after_the_requests_per_connection_gets_a_graceful_goaway(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """Streams opened and reset in one write past max_requests_per_connection: the ones
    over the limit are refused although the client reset them already. On the previous
    commit refusing such a stream raised StreamClosedError and the connection died
    without its GOAWAY (seen as a flaky flood test on a slow machine)."""
    sections = {
        **HTTP2,
        "http2": {"max_requests_per_connection": 5, "max_control_frames_per_s": 10_000},
    }
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        port = port_of(url)

        def burst() -> list[Any]:
            with h2_socket(port, client_ssl) as tls:
                conn = client_connection()
                tls.sendall(conn.data_to_send())
                read_events(tls, conn, settings_received)
                open_and_reset(conn, port, 20)
                tls.sendall(conn.data_to_send())
                return read_events(
                    tls,
                    conn,
                    lambda ev: any(isinstance(e, h2_events.ConnectionTerminated) for e in ev),
                )

        events = await asyncio.to_thread(burst)
    ends = [e for e in events if isinstance(e, h2_events.ConnectionTerminated)]
    assert [(e.error_code, e.last_stream_id) for e in ends][:1] == [
        (h2_errors.ErrorCodes.NO_ERROR, 9)  # the fifth stream: 1, 3, 5, 7, 9
    ]


async def test_thousands_of_streams_on_one_connection(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """hypercorn's priority tree holds 1,000 streams at once: served and reset streams
    leave it, so one connection can take many more (max_requests_per_connection was
    capped at 900 for fear of it). 1,500 streams opened and reset, then 1,500 requests."""
    h2load = require_command("h2load")
    sections = {
        **HTTP2,
        "http2": {"max_requests_per_connection": 5000, "max_control_frames_per_s": 100_000},
    }
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        port = port_of(url)

        def ping_answered(events: list[Any]) -> bool:
            return any(isinstance(e, h2_events.PingAckReceived) for e in events)

        def resets_then_request() -> list[Any]:
            with h2_socket(port, client_ssl) as tls:
                conn = client_connection()
                tls.sendall(conn.data_to_send())
                read_events(tls, conn, settings_received)
                for block in range(15):
                    open_and_reset(conn, port, 100)
                    # Each block read on its own (its PING answered): all 100 taken.
                    conn.ping(block.to_bytes(8, "big"))
                    tls.sendall(conn.data_to_send())
                    read_events(tls, conn, ping_answered)
                stream = conn.get_next_available_stream_id()
                conn.send_headers(stream, request_headers(port), end_stream=True)
                tls.sendall(conn.data_to_send())
                return read_events(
                    tls,
                    conn,
                    lambda ev: any(
                        isinstance(e, h2_events.ConnectionTerminated)
                        or (isinstance(e, h2_events.StreamEnded) and e.stream_id == stream)
                        for e in ev
                    ),
                )

        events = await asyncio.to_thread(resets_then_request)
        loaded = await run_h2load(h2load, "-n", "1500", "-c", "1", "-m", "10", f"{url}/echo")
    assert not [e for e in events if isinstance(e, h2_events.ConnectionTerminated)], events
    assert any(isinstance(e, h2_events.ResponseReceived) for e in events), events
    assert backend.started >= 100  # streams were taken, not all refused
    assert "1500 succeeded, 0 failed, 0 errored" in loaded, loaded


async def test_the_announced_bounds_are_the_enforced_ones(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """SETTINGS_MAX_FRAME_SIZE and SETTINGS_MAX_HEADER_LIST_SIZE come from the settings
    and are what the connection accepts (main: hypercorn announced no frame size and kept
    h2's 16 KiB frames and 64 KiB header lists whatever was configured)."""
    sections = {
        **HTTP2,
        "http2": {"max_frame_bytes": 65536},
        "limits": {"max_header_bytes": 128 * 1024},
    }
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        port = port_of(url)

        def exchange() -> tuple[int, int, list[Any]]:
            with h2_socket(port, client_ssl) as tls:
                conn = client_connection()
                tls.sendall(conn.data_to_send())
                read_events(tls, conn, settings_received)
                announced = conn.remote_settings
                stream = conn.get_next_available_stream_id()
                post = [(b":method", b"POST"), *request_headers(port)[1:]]
                conn.send_headers(stream, [*post, (b"x-big", b"v" * 80_000)])
                conn.send_data(stream, b"d" * 40_000, end_stream=True)  # one DATA frame
                tls.sendall(conn.data_to_send())
                events = read_events(
                    tls,
                    conn,
                    lambda ev: any(
                        isinstance(e, h2_events.StreamEnded | h2_events.ConnectionTerminated)
                        for e in ev
                    ),
                )
                return announced.max_frame_size, announced.max_header_list_size, events

        frame, header_list, events = await asyncio.to_thread(exchange)
    assert (frame, header_list) == (65536, 128 * 1024)
    assert not [e for e in events if isinstance(e, h2_events.ConnectionTerminated)], events
    [response] = [e for e in events if isinstance(e, h2_events.ResponseReceived)]
    assert dict(response.headers)[b":status"] == b"200"
    [request] = backend.requests
    assert request["body_bytes"] == 40_000, [h for h in request["headers"] if h[0] != "x-big"]


async def test_a_body_without_content_length_is_held_to_the_body_limit(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """HTTP/2 frames a body by END_STREAM, so a request may carry one without
    Content-Length. It is counted as it streams against ``limits.max_body_bytes`` (main:
    the limit read no Content-Length as "no body" and passed 1 MB over a 1,000-byte limit
    to the backend). The 413 goes out while the client still sends: its later DATA is
    dropped, the stream reset with NO_ERROR once the answer is complete (RFC 9113 8.1, as
    nginx does), and the connection goes on (main's hypercorn failed the connection on
    DATA for a stream it had answered)."""
    sections = {**HTTP2, "limits": {"max_body_bytes": 1000}}
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        port = port_of(url)

        def exchange() -> list[Any]:
            with h2_socket(port, client_ssl) as tls:
                conn = client_connection()
                post = [(b":method", b"POST"), *request_headers(port)[1:]]
                conn.send_headers(1, post)
                for _ in range(30):  # 30 KB in one write, within the initial window
                    conn.send_data(1, b"b" * 1000)
                tls.sendall(conn.data_to_send())
                events = read_events(
                    tls,
                    conn,
                    lambda ev: any(
                        isinstance(e, h2_events.StreamEnded | h2_events.ConnectionTerminated)
                        for e in ev
                    ),
                )
                conn.send_headers(3, request_headers(port), end_stream=True)
                tls.sendall(conn.data_to_send())
                return events + read_events(
                    tls,
                    conn,
                    lambda ev: any(
                        isinstance(e, h2_events.StreamEnded | h2_events.ConnectionTerminated)
                        for e in ev
                    ),
                )

        events = await asyncio.to_thread(exchange)
        async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:

            async def body() -> AsyncIterator[bytes]:
                for _ in range(9):
                    yield b"b" * 100

            within = await client.post(f"{url}/echo", content=body())
    assert not [e for e in events if isinstance(e, h2_events.ConnectionTerminated)], events
    statuses = {
        e.stream_id: dict(e.headers)[b":status"]
        for e in events
        if isinstance(e, h2_events.ResponseReceived)
    }
    assert statuses == {1: b"413", 3: b"200"}
    [reset] = [e for e in events if isinstance(e, h2_events.StreamReset)]
    assert (reset.stream_id, reset.error_code) == (1, h2_errors.ErrorCodes.NO_ERROR)
    assert within.http_version == "HTTP/2"
    assert within.status_code == 200
    assert within.json()["body_bytes"] == 900
    assert not [r for r in backend.requests if r["body_bytes"] > 1000]


def send_until_held(tls: ssl.SSLSocket, conn: Any, stream: int, frame_bytes: int) -> int:
    """Send ``stream``'s body as fast as the windows allow until they stay shut for 1.5 s
    (or the gateway stops reading altogether, or 64 MB went): the bytes sent."""
    sent, quiet_since = 0, time.monotonic()
    while sent < 64 * 1024 * 1024 and time.monotonic() - quiet_since < 1.5:
        room = min(conn.local_flow_control_window(stream), frame_bytes)
        if room <= 0:
            read_events(tls, conn, lambda ev: bool(ev), limit_s=0.1)
            continue
        conn.send_data(stream, b"u" * room)
        try:
            tls.settimeout(2)
            tls.sendall(conn.data_to_send())
        except TimeoutError:
            break  # the gateway stopped reading altogether
        sent += room
        quiet_since = time.monotonic()
    return sent


async def stalled_backend() -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    """A backend that accepts and never reads (its writers, to abort at the end)."""
    held: list[asyncio.StreamWriter] = []

    async def take_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never reads: its socket buffers fill, then the proxy waits

    return await asyncio.start_server(take_nothing, "127.0.0.1", 0), held


@pytest.mark.parametrize("cancel", [False, True], ids=["kept", "then-cancelled"])
async def test_an_upload_a_backend_does_not_take_holds_back_no_other_stream(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext, cancel: bool
) -> None:
    """One stream's body waits for a backend that reads nothing: the client is held to
    that stream's flow-control window, and the connection goes on serving its other
    streams (main: hypercorn's reading of the whole connection waited for room in the
    stalled stream's queue of 10 messages, so a GET on the same connection got nothing).
    Cancelled by the client, the stream lets go of what it held."""
    stalled, held = await stalled_backend()
    stalled_port = stalled.sockets[0].getsockname()[1]
    routes = [
        {"prefix": "/stall", "upstream": f"http://127.0.0.1:{stalled_port}"},
        {"prefix": "/", "upstream": f"http://127.0.0.1:{backend.port}"},
    ]
    try:
        async with gateway_factory("unused", routes=routes, **HTTP2) as url:
            port = port_of(url)

            def exchange() -> tuple[int, list[Any]]:
                with h2_socket(port, client_ssl) as tls:
                    conn = client_connection()
                    tls.sendall(conn.data_to_send())
                    read_events(tls, conn, settings_received)
                    post = [(b":method", b"POST"), *request_headers(port, "/stall/up")[1:]]
                    conn.send_headers(1, post)
                    tls.sendall(conn.data_to_send())
                    sent = send_until_held(tls, conn, 1, frame_bytes=1024)
                    if cancel:
                        conn.reset_stream(1, h2_errors.ErrorCodes.CANCEL)
                    conn.send_headers(3, request_headers(port, "/echo"), end_stream=True)
                    with contextlib.suppress(TimeoutError):
                        tls.sendall(conn.data_to_send())
                    return sent, read_events(
                        tls,
                        conn,
                        lambda ev: any(
                            isinstance(e, h2_events.StreamEnded) and e.stream_id == 3 for e in ev
                        ),
                        limit_s=5,
                    )

            try:
                sent, events = await asyncio.to_thread(exchange)
            finally:  # the proxy gives up on the backend, and the gateway can stop
                for writer in held:
                    writer.transport.abort()
    finally:
        stalled.close()
    answered = [
        dict(e.headers)[b":status"]
        for e in events
        if isinstance(e, h2_events.ResponseReceived) and e.stream_id == 3
    ]
    assert answered == [b"200"], (sent, events)
    # Held to the window: what the backend's and the gateway's buffers took, not 64 MB.
    assert sent < 32 * 1024 * 1024, sent


async def test_stalled_uploads_cancelled_again_and_again_leave_nothing_behind(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """What users repeat: five uploads in a row on one connection, each stalled by a
    backend that reads nothing until the gateway holds its body, then cancelled, each
    followed by a GET that is answered. Afterwards the gateway's tasks (the streams'
    pumps among them) and file descriptors are back where they were."""
    stalled, held = await stalled_backend()
    routes = [
        {"prefix": "/stall", "upstream": f"http://127.0.0.1:{stalled.sockets[0].getsockname()[1]}"},
        {"prefix": "/", "upstream": f"http://127.0.0.1:{backend.port}"},
    ]

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    try:
        async with gateway_factory("unused", routes=routes, **HTTP2) as url:
            port = port_of(url)
            async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
                assert (await client.get(f"{url}/echo")).status_code == 200  # warm: pools
            await asyncio.sleep(0.5)
            tasks, before = len(asyncio.all_tasks()), fds()

            def rounds() -> list[bytes]:
                statuses = []
                with h2_socket(port, client_ssl) as tls:
                    conn = client_connection()
                    tls.sendall(conn.data_to_send())
                    read_events(tls, conn, settings_received)
                    for upload in range(1, 20, 4):
                        post = [(b":method", b"POST"), *request_headers(port, "/stall/up")[1:]]
                        conn.send_headers(upload, post)
                        send_until_held(tls, conn, upload, frame_bytes=16384)
                        conn.reset_stream(upload, h2_errors.ErrorCodes.CANCEL)
                        conn.send_headers(
                            upload + 2, request_headers(port, "/echo"), end_stream=True
                        )
                        tls.sendall(conn.data_to_send())
                        events = read_events(
                            tls,
                            conn,
                            lambda ev, s=upload + 2: any(
                                isinstance(e, h2_events.StreamEnded) and e.stream_id == s
                                for e in ev
                            ),
                            limit_s=5,
                        )
                        statuses += [
                            dict(e.headers)[b":status"]
                            for e in events
                            if isinstance(e, h2_events.ResponseReceived)
                        ]
                return statuses

            statuses = await asyncio.to_thread(rounds)
            for writer in held:
                writer.transport.abort()
            await eventually(lambda: len(asyncio.all_tasks()) <= tasks, 10)
            await eventually(lambda: fds() <= before + 2, 10)
    finally:
        for writer in held:
            writer.transport.abort()
        stalled.close()
    assert statuses == [b"200"] * 5
    assert len(held) == 5  # each upload reached the backend


def raw_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = struct.pack("!I", len(payload))[1:] + bytes([kind, flags])
    return head + struct.pack("!I", stream) + payload


def goaway_code(received: bytes) -> int | None:
    """The error code of the first GOAWAY frame in ``received`` (frames from the start)."""
    offset = 0
    while offset + 9 <= len(received):
        length = int.from_bytes(received[offset : offset + 3], "big")
        if received[offset + 3] == 0x7 and offset + 9 + length <= len(received):
            return int.from_bytes(received[offset + 13 : offset + 17], "big")
        offset += 9 + length
    return None


FLOODS = {
    "ping": lambda i: raw_frame(0x6, 0, 0, i.to_bytes(8, "big")),
    "settings": lambda i: raw_frame(0x4, 0, 0, struct.pack("!HI", 0x4, 65535)),
    # PRIORITY for streams never opened (hypercorn kept a node for each)
    "priority": lambda i: raw_frame(0x2, 0, 1001 + 2 * i, struct.pack("!IB", 0, 15)),
    "empty-data": lambda i: raw_frame(0x0, 0, 1),  # on an open request stream
    "reset": lambda i: b"",  # HEADERS + RST_STREAM, made by the h2 client below
}


@pytest.mark.parametrize("kind", list(FLOODS))
async def test_control_frame_floods_end_the_connection(
    kind: str, gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """A client that reads every answer may still make the gateway work without end with
    frames that carry no request (CVE-2019-9512 ping, -9515 settings, -9513 priority,
    -9518 empty frames, CVE-2023-44487 rapid reset): past http2.max_control_frames_per_s
    the connection ends with GOAWAY ENHANCE_YOUR_CALM (main answered 50,000 pings)."""
    # The lowest budget: a block of 100 frames overdraws it however slow the gateway
    # (a rate refills while a slow machine works through a block).
    sections = {**HTTP2, "http2": {"max_control_frames_per_s": 10}}
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        port = port_of(url)

        def attack() -> tuple[int, int | None]:
            with h2_socket(port, client_ssl) as tls:
                conn = client_connection()
                slow = [(b":method", b"POST"), *request_headers(port, "/slow/5")[1:]]
                conn.send_headers(conn.get_next_available_stream_id(), slow)  # stream 1
                tls.sendall(conn.data_to_send())
                received = b""
                sent = 0
                with contextlib.suppress(OSError):
                    while sent < 50_000 and goaway_code(received) is None:
                        if kind == "reset":
                            open_and_reset(conn, port, 100)
                            block = conn.data_to_send()
                        else:
                            block = b"".join(FLOODS[kind](sent + i) for i in range(100))
                        # Then a PING with a marker: its ACK says the block was read (the
                        # server answers in order), so the count sent is what it took.
                        marker = (2**63 + sent).to_bytes(8, "big")
                        tls.sendall(block + raw_frame(0x6, 0, 0, marker))
                        sent += 100
                        ack = raw_frame(0x6, 0x1, 0, marker)
                        tls.settimeout(10)
                        while ack not in received and goaway_code(received) is None:
                            data = tls.recv(65536)
                            if not data:
                                break
                            received += data
                return sent, goaway_code(received)

        sent, code = await asyncio.to_thread(attack)
        async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
            served = await client.get(f"{url}/echo")
    print(f"\n{kind} flood: ended after {sent} frames, GOAWAY code {code}")
    assert code == h2_errors.ErrorCodes.ENHANCE_YOUR_CALM, (sent, code)
    assert sent <= 1000  # 101 frames a round trip against 10 a second
    assert served.status_code == 200


async def test_a_browser_like_client_stays_within_the_control_frame_budget(
    h2_gateway: str, client_ssl: ssl.SSLContext
) -> None:
    """Normal use: 300 requests on one connection, 50 of them cancelled, a few pings and
    settings - the default budget is not reached."""
    port = port_of(h2_gateway)

    def session() -> tuple[int, list[Any]]:
        with h2_socket(port, client_ssl) as tls:
            conn = client_connection()
            tls.sendall(conn.data_to_send())
            read_events(tls, conn, settings_received)
            answered = 0
            ends: list[Any] = []
            for round_ in range(30):
                ids = []
                for i in range(10):
                    stream = conn.get_next_available_stream_id()
                    conn.send_headers(stream, request_headers(port), end_stream=True)
                    if i < 2 and round_ % 2:
                        conn.reset_stream(stream, h2_errors.ErrorCodes.CANCEL)
                    else:
                        ids.append(stream)
                if round_ % 10 == 0:
                    conn.ping(round_.to_bytes(8, "big"))
                    conn.update_settings({h2_settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
                tls.sendall(conn.data_to_send())
                events = read_events(
                    tls,
                    conn,
                    lambda ev, ids=ids: (
                        {e.stream_id for e in ev if isinstance(e, h2_events.StreamEnded)}
                        >= set(ids)
                        or any(isinstance(e, h2_events.ConnectionTerminated) for e in ev)
                    ),
                )
                answered += sum(isinstance(e, h2_events.StreamEnded) for e in events)
                ends += [e for e in events if isinstance(e, h2_events.ConnectionTerminated)]
            return answered, ends

    answered, ends = await asyncio.to_thread(session)
    assert ends == []
    assert answered == 270


async def test_continuation_flood_is_cut_off(h2_gateway: str, client_ssl: ssl.SSLContext) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames without end (CVE-2024-27316's
    shape): the connection ends before the block outgrows the header list limit."""
    port = port_of(h2_gateway)

    def flood() -> tuple[int, bool]:
        with h2_socket(port, client_ssl) as tls:
            conn = client_connection()
            tls.sendall(conn.data_to_send())
            block = b"\x00" + bytes([0x7F, 0x81, 0x7F]) + b"x" * 16_000  # literal, long name
            headers_frame = struct.pack("!I", (len(block) << 8) | 0x01)[1:]  # type HEADERS
            head = headers_frame[:3] + bytes([0x01, 0x00]) + struct.pack("!I", 1)  # END_STREAM
            tls.sendall(head + block)
            sent = len(block)
            continuation = struct.pack("!I", len(block))[1:] + bytes([0x09, 0x00])
            continuation += struct.pack("!I", 1) + block
            try:
                for _ in range(2_000):  # 32 MB if nothing stopped it
                    tls.sendall(continuation)
                    sent += len(block)
            except OSError:  # the server closed the connection
                return sent, True
            return sent, False

    sent, cut_off = await asyncio.to_thread(flood)
    # Cut off: what was sent is the header list limit plus the sockets' buffers.
    assert cut_off, sent
    assert sent < 16 * 1024 * 1024, sent
    async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
        response = await client.get(f"https://localhost:{port}/echo")
    assert response.status_code == 200


# -- gateway run ---------------------------------------------------------------------------


WRITE_OUT = ("-o", "/dev/null", "-w", "%{http_version} %{http_code}")


def run_toml(port: int, pair: CertificatePair, backend_port: int, version: str) -> str:
    return (
        f'[listen]\nport = {port}\ncertfile = "{pair.certfile}"\nkeyfile = "{pair.keyfile}"\n'
        "http2 = true\n"
        f'[headers]\nresponse_set = {{ x-config = "{version}" }}\n'
        f'[[routes]]\nupstream = "http://127.0.0.1:{backend_port}"\n'
    )


async def test_gateway_run_serves_h2_reloads_and_drains(
    tmp_path: Path, cert_pair: CertificatePair, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """curl --http2 and h2load against `gateway run`; a SIGHUP reload is seen over the same
    h2 connection; SIGTERM lets a slow h2 request finish."""
    curl, h2load = require_command("curl"), require_command("h2load")
    port = free_port()
    config, pid_file = tmp_path / "gateway.toml", tmp_path / "gateway.pid"
    config.write_text(run_toml(port, cert_pair, backend.port, "one"))
    args = [sys.executable, "-m", "gateway", "run", "-c", str(config), "--pid-file", str(pid_file)]
    env = {"GATEWAY_STATE_DIR": str(tmp_path)}
    ca = tmp_path / "ca.pem"
    ca.write_text(_ca_pem(client_ssl))
    url = f"https://localhost:{port}"
    async with gateway_process(args, port, env) as process:
        shown = await asyncio.to_thread(
            subprocess.run,
            [curl, "-sS", "--http2", "--cacert", str(ca), *WRITE_OUT, f"{url}/echo"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.stdout == "2 200", shown
        # 500 requests per connection: max_requests_per_connection, reached by none
        # (h2load does not reconnect after a GOAWAY).
        loaded = await run_h2load(h2load, "-n", "2000", "-c", "4", "-m", "10", f"{url}/echo")
        assert "2000 succeeded, 0 failed, 0 errored" in loaded, loaded
        async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
            before = await client.get(f"{url}/echo")
            config.write_text(run_toml(port, cert_pair, backend.port, "two"))
            await reload_and_wait(process.pid, pid_file)
            after = await client.get(f"{url}/echo")  # the same HTTP/2 connection
            slow = asyncio.create_task(client.get(f"{url}/slow/1"))
            await eventually(lambda: backend.requests[-1]["raw_path"] == "/slow/1", 10)
            process.send_signal(signal.SIGTERM)
            finished = await slow
        assert await process.wait() == 0
    assert (before.http_version, before.headers["x-config"]) == ("HTTP/2", "one")
    assert (after.http_version, after.headers["x-config"]) == ("HTTP/2", "two")
    assert finished.status_code == 200


async def test_two_workers_serve_h2_and_stop(
    tmp_path: Path, cert_pair: CertificatePair, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """`gateway run --workers 2` with listen.http2: h2load's connections (each lands on
    either worker) are all served over h2, and SIGTERM stops both workers cleanly."""
    h2load = require_command("h2load")
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(run_toml(port, cert_pair, backend.port, "one"))
    args = [sys.executable, "-m", "gateway", "run", "-c", str(config), "--workers", "2"]
    async with gateway_process(args, port, {"GATEWAY_STATE_DIR": str(tmp_path)}) as process:
        loaded = await run_h2load(
            h2load, "-n", "400", "-c", "8", "-m", "5", f"https://localhost:{port}/echo"
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    assert "Application protocol: h2" in loaded, loaded
    assert "400 succeeded, 0 failed, 0 errored" in loaded, loaded
    assert len(backend.requests) == 400


# -- floods from a client that never reads (gateway run, its memory measured) ------------


def ping_frame(payload: bytes) -> bytes:
    return struct.pack("!I", 8)[1:] + bytes([0x06, 0x00]) + struct.pack("!I", 0) + payload


def settings_frame() -> bytes:
    setting = struct.pack("!HI", 0x4, 65535)  # SETTINGS_INITIAL_WINDOW_SIZE
    return (
        struct.pack("!I", len(setting))[1:] + bytes([0x04, 0x00]) + struct.pack("!I", 0) + setting
    )


@pytest.mark.parametrize("kind", ["ping", "settings"])
async def test_control_frame_flood_from_a_client_that_never_reads_holds_no_memory(
    kind: str,
    tmp_path: Path,
    cert_pair: CertificatePair,
    backend: Backend,
    client_ssl: ssl.SSLContext,
) -> None:
    """Every PING and SETTINGS frame is answered: while the client reads none of the
    answers, the gateway stops reading it (the flood stalls), and holds little."""
    port = free_port()
    config, pid_file = tmp_path / "gateway.toml", tmp_path / "gateway.pid"
    config.write_text(run_toml(port, cert_pair, backend.port, "one"))
    args = [sys.executable, "-m", "gateway", "run", "-c", str(config), "--pid-file", str(pid_file)]
    block = (ping_frame(b"12345678") if kind == "ping" else settings_frame()) * 4096

    def attack(pid: int) -> tuple[int, int]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=_ca_pem(client_ssl))
        context.set_alpn_protocols(["h2"])
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            conn = client_connection()
            tls.sendall(conn.data_to_send())
            time.sleep(0.5)
            before = rss_bytes(pid)
            sent = flood(tls, block, 200 * 1024 * 1024, 20)
            time.sleep(0.5)
            return sent, rss_bytes(pid) - before

    async with gateway_process(args, port, {"GATEWAY_STATE_DIR": str(tmp_path)}) as process:
        sent, grown = await asyncio.to_thread(attack, process.pid)
        async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
            served = await client.get(f"https://localhost:{port}/echo")
    print(f"\n{kind} flood: {sent / 2**20:.1f} MiB sent, gateway RSS +{grown / 2**20:.1f} MiB")
    assert grown < 16 * 1024 * 1024, (sent, grown)
    assert served.status_code == 200


async def test_a_client_gone_before_its_response_leaves_no_task_behind(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """The client closes its connection while the backend works: once the response is
    ready the stream's task ends, and the connection's after the idle timeout. On main
    the stream waited for ever for its body to drain through a connection that was gone
    (one task and backend response per disconnect, until shutdown)."""

    def request_and_leave(port: int) -> None:
        with h2_socket(port, client_ssl) as tls:
            conn = client_connection()
            conn.send_headers(1, request_headers(port, "/slow/0.3"), end_stream=True)
            tls.sendall(conn.data_to_send())
            deadline = time.monotonic() + 10
            while not backend.requests and time.monotonic() < deadline:
                time.sleep(0.01)  # the backend has it: now the client leaves

    def connections() -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks() if task.get_name() == "HTTP/2"]

    sections = {**HTTP2, "http2": {"idle_timeout_s": 0.5}}
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        await asyncio.to_thread(request_and_leave, port_of(url))
        assert len(backend.requests) == 1
        assert connections()
        await eventually(lambda: not connections(), 10)


async def test_clients_leaving_and_floods_again_and_again_leave_nothing_behind(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """What users and attackers repeat: 20 clients gone before their responses and 20
    connections ended by the control-frame budget. Afterwards no HTTP/2 connection task
    is left and the process holds the file descriptors it held before."""

    def leave(port: int) -> None:
        started = backend.started
        with h2_socket(port, client_ssl) as tls:
            conn = client_connection()
            conn.send_headers(1, request_headers(port, "/slow/0.2"), end_stream=True)
            tls.sendall(conn.data_to_send())
            deadline = time.monotonic() + 10
            while backend.started == started and time.monotonic() < deadline:
                time.sleep(0.01)

    def flood(port: int) -> int | None:
        with h2_socket(port, client_ssl) as tls:
            tls.sendall(client_connection().data_to_send())
            tls.sendall(b"".join(FLOODS["ping"](i) for i in range(100)))
            received = b""
            tls.settimeout(10)
            with contextlib.suppress(OSError):
                while goaway_code(received) is None and (data := tls.recv(65536)):
                    received += data
            return goaway_code(received)

    def connections() -> int:
        return sum(task.get_name() == "HTTP/2" for task in asyncio.all_tasks())

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    sections = {**HTTP2, "http2": {"idle_timeout_s": 0.5, "max_control_frames_per_s": 10}}
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        port = port_of(url)
        async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
            assert (await client.get(f"{url}/echo")).status_code == 200  # warm: backend pool
        await eventually(lambda: connections() == 0, 10)
        before = fds()
        codes = []
        for _ in range(20):
            await asyncio.to_thread(leave, port)
            codes.append(await asyncio.to_thread(flood, port))
        await eventually(lambda: connections() == 0, 20)
        await eventually(lambda: fds() <= before + 2, 10)
    assert codes == [h2_errors.ErrorCodes.ENHANCE_YOUR_CALM] * 20
    assert backend.started >= 21


async def test_shutdown_past_the_grace_ends_the_streams_still_open(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """A stream still open when timeouts.shutdown_grace_s runs out is cancelled and the
    gateway stops (see the next test for the case where one cancel is not enough)."""
    sections = {**HTTP2, "timeouts": {"shutdown_grace_s": 0.2}}
    gateway = gateway_factory(f"http://127.0.0.1:{backend.port}", **sections)
    url = await gateway.__aenter__()
    async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
        request = asyncio.create_task(client.get(f"{url}/slow/3"))
        await eventually(lambda: backend.started >= 1)
        stopped = asyncio.create_task(gateway.__aexit__(None, None, None))
        done, _ = await asyncio.wait({stopped}, timeout=30)  # not a measure: a hang guard
        assert done, "the gateway did not stop"
        with pytest.raises(httpx.HTTPError):
            await request


async def test_shutdown_cancels_again_a_connection_that_waits_in_its_finally() -> None:
    """Cancelled, a hypercorn stream task answers 500 in its ``finally`` and can wait there
    for a send task that was cancelled too (seen after a flood: the gateway never
    stopped). Shutdown cancels such a connection again until it ends."""
    from gateway.http2 import H2Limits, Http2Server

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    server = Http2Server(app, {}, H2Limits())
    entered = asyncio.Event()

    async def stubborn() -> None:
        try:
            entered.set()
            await asyncio.Event().wait()
        finally:
            await asyncio.Event().wait()  # as hypercorn's send(None) after a cancel

    class Connection:  # hypercorn's TCPServer, as far as shutdown uses it
        async def _initiate_server_close(self) -> None:
            pass  # closes nothing: this connection's stream ignores it

    task = asyncio.create_task(stubborn())
    server.connections[task] = Connection()
    await entered.wait()
    await server.shutdown(0.01)
    assert task.cancelled()


async def test_a_client_that_never_opens_its_window_is_cut_off(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """Slow read: the response waits for a window that never opens; after
    ``timeouts.send_s`` the stream ends and the backend connection is let go."""
    sections = {**HTTP2, "timeouts": {"send_s": 1}}
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        port = port_of(url)

        def slow_reader() -> list[Any]:
            with h2_socket(port, client_ssl) as tls:
                conn = client_connection()
                conn.update_settings({h2_settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
                tls.sendall(conn.data_to_send())
                stream = conn.get_next_available_stream_id()
                conn.send_headers(stream, request_headers(port, "/bytes/50000000"), end_stream=True)
                tls.sendall(conn.data_to_send())
                return read_events(
                    tls,
                    conn,
                    lambda ev: any(
                        isinstance(e, h2_events.StreamReset | h2_events.ConnectionTerminated)
                        for e in ev
                    ),
                    limit_s=15,
                )

        events = await asyncio.to_thread(slow_reader)
        await eventually(lambda: backend.disconnects >= 1, 10)
    ended = [
        e for e in events if isinstance(e, h2_events.StreamReset | h2_events.ConnectionTerminated)
    ]
    assert ended, events
    assert backend.bytes_sent < 50_000_000


async def test_h2c_is_never_served(
    h2_gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """No cleartext-style HTTP/2 on a connection that did not choose h2 by ALPN: the
    prior-knowledge preface gets an HTTP/1.1 error, ``Upgrade: h2c`` is not performed."""
    port = port_of(h2_gateway)

    def preface_over_http11() -> bytes:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=_ca_pem(client_ssl))
        context.set_alpn_protocols(["http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return tls.recv(4096)

    answer = await asyncio.to_thread(preface_over_http11)
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 505")), answer
    async with httpx.AsyncClient(http2=False, verify=client_ssl) as client:
        upgraded = await client.get(
            f"https://localhost:{port}/echo",
            headers={
                "connection": "Upgrade, HTTP2-Settings",
                "upgrade": "h2c",
                "http2-settings": "AAMAAABkAARAAAAAAAIAAAAA",
            },
        )
    assert (upgraded.status_code, upgraded.http_version) == (200, "HTTP/1.1")
    names = {name for name, _ in upgraded.json()["headers"]}
    assert not names & {"upgrade", "http2-settings"}


async def test_requests_per_connection_end_with_a_graceful_goaway(
    gateway_factory: GatewayFactory, backend: Backend, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    """After max_requests_per_connection streams the streams in flight still get their
    responses and later ones are refused (REFUSED_STREAM: never processed, safe to retry);
    hypercorn's own limit lost the streams in flight (h2load: a failure per connection).
    nghttp (nghttp2's client) sends three requests at once on one connection; the h2
    library's client cannot receive frames after a GOAWAY."""
    nghttp = require_command("nghttp")
    ca = tmp_path / "ca.pem"
    ca.write_text(_ca_pem(client_ssl))
    sections = {**HTTP2, "http2": {"max_requests_per_connection": 2}}
    async with gateway_factory(f"http://127.0.0.1:{backend.port}", **sections) as url:
        shown = await asyncio.to_thread(
            subprocess.run,
            [nghttp, "-nv", "-m", "3", f"{url}/slow/0.3"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "SSL_CERT_FILE": str(ca)},
        )
    out = shown.stdout + shown.stderr
    assert out.count(":status: 200") == 2, out  # both in flight: answered
    assert "error_code=REFUSED_STREAM" in out, out
    assert "total=3, processed=2" in out, out
    assert len(backend.requests) == 2


async def test_many_h2_connections_and_reloads_leave_nothing_behind(
    tmp_path: Path, cert_pair: CertificatePair, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """Users reconnect and operators reload, again and again: after 50 HTTP/2 connections
    and 10 SIGHUP reloads the gateway holds the file descriptors it held before."""
    port = free_port()
    config, pid_file = tmp_path / "gateway.toml", tmp_path / "gateway.pid"
    config.write_text(run_toml(port, cert_pair, backend.port, "0"))
    args = [sys.executable, "-m", "gateway", "run", "-c", str(config), "--pid-file", str(pid_file)]
    url = f"https://localhost:{port}/echo"

    def fds(pid: int) -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    async with gateway_process(args, port, {"GATEWAY_STATE_DIR": str(tmp_path)}) as process:
        async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
            assert (await client.get(url)).http_version == "HTTP/2"  # warm: backend pool
        before = fds(process.pid)
        for round_ in range(10):
            for _ in range(5):
                async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
                    assert (await client.get(url)).status_code == 200
            config.write_text(run_toml(port, cert_pair, backend.port, str(round_ + 1)))
            await reload_and_wait(process.pid, pid_file)
        async with httpx.AsyncClient(http2=True, verify=client_ssl) as client:
            last = await client.get(url)
        await eventually(lambda: fds(process.pid) <= before + 2, 10)
    assert last.headers["x-config"] == "10"
