"""Running the gateway under uvicorn: listeners, workers, signals, reload, certificate reload.

The only module that starts servers (``cli`` parses commands and calls it).  One
process serves every listener in one event loop; ``--workers N`` runs N such processes
on the same sockets.  Signals: SIGTERM/SIGINT stop gracefully (in-flight requests get
``timeouts.shutdown_grace_s``, WebSocket sessions then close with 1001); SIGHUP reloads
the settings file and the certificate (``gateway.reload``), whose files are also
watched: new TLS handshakes use a changed certificate within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import multiprocessing
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from gateway._compat import UvicornConfig, UvicornServer
from gateway.acme import AcmeManager, AcmeOptions
from gateway.app import close_websockets, create_admin_app, create_app
from gateway.certificate_settings import acme_options, alpn_protocols, certificate_store
from gateway.certificates import CertificateStore
from gateway.control import ReloadReport, write_report
from gateway.http2 import H2Limits, Http2Server, by_alpn, require_hypercorn
from gateway.listener import PlainHTTP, TLSListener
from gateway.logs import configure_logging, get_logger, quiet_uvicorn
from gateway.protocols import HTTP_PROTOCOL, WebSocketProtocol
from gateway.proxy.websocket_rules import wire_max_size
from gateway.reload import Reloader, check_reload
from gateway.settings import Settings, load_settings
from gateway.sockets import Listener
from gateway.tls import HTTP1_ALPN, CertificatePair, RedirectToHttps, TLSProfile, harden
from gateway.watchdog import Watchdog, tick_for

__all__ = [
    "GatewayServer",
    "defer_stop_signals",
    "gateway_servers",
    "plain_server",
    "run_servers",
    "run_worker",
    "run_workers",
    "settle_collector",
    "uvicorn_config",
]

logger = get_logger("gateway")


class _Config(UvicornConfig):
    """uvicorn's Config with the TLS context hardened (a Mozilla profile, ALPN http/1.1).

    ``header_timeout_s``, ``head_watchdog`` and ``max_head_bytes`` are read by
    ``gateway.protocols.HTTPProtocol``, ``tls_handshake_timeout_s`` by ``GatewayServer``.
    """

    header_timeout_s: float | None = None
    head_watchdog: Watchdog | None = None
    max_head_bytes: int | None = None
    tls_handshake_timeout_s: float | None = None
    plain_http: PlainHTTP = "reject"
    https_port: int = 443
    tls_profile: TLSProfile = "intermediate"
    ws_send_timeout_s: float | None = None
    ws_relay: bool = False
    # Certificates by SNI name: [[certificates]] and ACME (gateway.certificates).
    certificates: CertificateStore | None = None
    acme: AcmeOptions | None = None
    # listen.http2: what the listener offers by ALPN, and HTTP/2 connections' bounds.
    alpn: tuple[str, ...] = HTTP1_ALPN
    h2_limits: H2Limits | None = None

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            harden(self.ssl, self.tls_profile, self.alpn)
            if self.certificates is not None:
                self.certificates.attach(self.ssl)


class GatewayServer(UvicornServer):
    """A uvicorn Server for gateway listeners.

    - Signal handling is left to ``_serve`` (it owns several servers).
    - TLS listeners passed as ``sockets`` (as the CLI does) are served by
      ``gateway.listener.TLSListener``: a TLS handshake must complete within the
      config's ``tls_handshake_timeout_s`` (``timeouts.tls_handshake_s``; uvicorn starts
      its listeners without one, which leaves asyncio's and uvloop's fixed 60 s), and a
      plain HTTP request gets a 400 (or a redirect) instead of an empty reply.
    - ``before_shutdown`` runs after the listeners stop accepting and before uvicorn
      closes connections itself (which would close WebSockets with 1012).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        before_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown
        self.acme: AcmeManager | None = None
        self._acme_task: asyncio.Task[None] | None = None
        self.http2: Http2Server | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        timeout_s: float | None = getattr(config, "tls_handshake_timeout_s", None)
        if sockets is None or config.ssl is None or timeout_s is None:
            await super().startup(sockets)
            return
        # uvicorn's startup with no sockets runs the lifespan (and exits if it fails)
        # and sets up the server state; the listeners are then started here.
        await super().startup(sockets=[])
        self.started = False

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        protocol_factory = create_protocol
        limits: H2Limits | None = getattr(config, "h2_limits", None)
        if limits is not None:
            self.http2 = Http2Server(config.loaded_app, self.lifespan.state, limits)
            protocol_factory = by_alpn(create_protocol, self.http2)

        store: CertificateStore | None = getattr(config, "certificates", None)
        for sock in sockets:
            listener = TLSListener(
                sock,
                protocol_factory,
                config.ssl,
                handshake_timeout_s=timeout_s,
                plain_http=getattr(config, "plain_http", "reject"),
                # 0: the port this socket was given (tests bind port 0).
                https_port=getattr(config, "https_port", 0) or sock.getsockname()[1],
                certificates=store,
            )
            listener.start()
            self.servers.append(listener)  # type: ignore[arg-type]
        acme: AcmeOptions | None = getattr(config, "acme", None)
        if acme is not None and store is not None:
            self.acme = AcmeManager(acme, store)
            self._acme_task = asyncio.create_task(self.acme.run(), name="ACME")
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._acme_task is not None:
            self._acme_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acme_task
        if self._before_shutdown is not None:
            for server in self.servers:
                server.close()
            await self._before_shutdown()
        if self.http2 is None:
            await super().shutdown(sockets)
            return
        # HTTP/2 connections are hypercorn's: drained next to uvicorn's own, and the app's
        # lifespan shutdown (which closes the backend pools) waits for both.
        grace_s = float(self.config.timeout_graceful_shutdown or 0)
        drained = asyncio.ensure_future(self.http2.shutdown(grace_s))
        lifespan_shutdown = self.lifespan.shutdown

        async def after_http2() -> None:
            await drained
            await lifespan_shutdown()

        self.lifespan.shutdown = after_http2
        try:
            await super().shutdown(sockets)
        finally:
            await drained


def max_head_bytes(settings: Settings) -> int:
    """The most bytes a request head may take before the server refuses it (431).

    Generous on purpose - the exact limits are judged by ``RequestLimitsMiddleware``
    (per route, after parsing); this only bounds what the parser buffers.  Covers the
    largest route limits configured at start.
    """
    limits = [settings.limits] + [r.limits for r in settings.routes if r.limits is not None]
    largest = max(lim.max_header_bytes + lim.max_url_bytes for lim in limits)
    return 2 * largest + 16 * 1024


def uvicorn_config(
    app: object,
    settings: Settings,
    pair: CertificatePair | None,
    *,
    access_log: bool = False,
    certificates: CertificateStore | None = None,
) -> uvicorn.Config:
    """uvicorn settings for a gateway listener: fastest loop/parser available, our TLS
    (``pair`` the default certificate, ``certificates`` those by SNI name)."""
    quiet_uvicorn()
    config = _Config(
        app,  # type: ignore[arg-type]
        loop="auto",
        http=HTTP_PROTOCOL,
        ws=WebSocketProtocol,
        lifespan="on",
        ssl_certfile=str(pair.certfile) if pair else None,
        ssl_keyfile=str(pair.keyfile) if pair else None,
        # One Date and one Server per response: the gateway's (the proxy drops the
        # backend's), or with forwarding.pass_date_server the backend's alone.
        server_header=False,
        date_header=not settings.forwarding.pass_date_server,
        headers=[] if settings.forwarding.pass_date_server else [("server", "gateway")],
        # Forwarding headers are the gateway's own business (trusted_proxies).
        proxy_headers=False,
        # websockets checks the limit on compressed frames, which deflate can make a
        # little larger than the message; the bridge enforces the exact limit itself.
        ws_max_size=wire_max_size(settings.websocket.max_message_bytes),
        ws_per_message_deflate=settings.websocket.compression,
        ws_ping_interval=settings.websocket.ping_interval_s,
        ws_ping_timeout=settings.websocket.ping_timeout_s,
        h11_max_incomplete_event_size=settings.limits.max_header_bytes,
        # uvicorn's annotation says int, but any number of seconds works; 0 would mean
        # "no limit" to it, so the smallest grace is one millisecond.
        timeout_graceful_shutdown=max(settings.timeouts.shutdown_grace_s, 0.001),  # type: ignore[arg-type]
        access_log=access_log,
        log_config=None,
    )
    config.header_timeout_s = settings.timeouts.header_s
    config.head_watchdog = Watchdog(tick_for(settings.timeouts.header_s))
    config.tls_handshake_timeout_s = settings.timeouts.tls_handshake_s
    config.max_head_bytes = max_head_bytes(settings)
    config.plain_http = settings.listen.plain_http
    config.tls_profile = settings.tls.profile
    config.ws_send_timeout_s = settings.timeouts.send_s
    config.ws_relay = settings.websocket.relay
    config.https_port = settings.listen.public_port or settings.listen.port
    config.alpn = alpn_protocols(settings)
    if settings.listen.http2:
        require_hypercorn()
        config.h2_limits = H2Limits(
            max_concurrent_streams=settings.http2.max_concurrent_streams,
            max_header_list_bytes=settings.limits.max_header_bytes,
            max_frame_bytes=settings.http2.max_frame_bytes,
            max_requests=settings.http2.max_requests_per_connection,
            keep_alive_s=settings.http2.idle_timeout_s,
            max_control_frames_per_s=settings.http2.max_control_frames_per_s,
            date_and_server=not settings.forwarding.pass_date_server,
        )
    if pair is not None:
        config.certificates = certificates or certificate_store(settings, pair)
        config.acme = acme_options(settings)
    return config


ServerList = list[tuple[uvicorn.Server, list[socket.socket]]]

# SIGTERM/SIGINT that arrived while the gateway was starting (see defer_stop_signals).
_stops_while_starting: list[int] = []


def defer_stop_signals() -> None:
    """Remember SIGTERM/SIGINT until the event loop handles them, instead of dying of them.

    Call it once the listeners are bound: an orchestrator that stops a gateway still
    starting up then sees a clean stop (exit 0) as soon as it has started.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda sig, frame: _stops_while_starting.append(sig))


async def _serve(
    servers: ServerList, reloader: Reloader | None = None, after: ServerList | None = None
) -> None:
    """Serve all ``servers`` until SIGINT/SIGTERM, or until any of them stops.

    ``after`` are served too, but stopped only once ``servers`` have stopped (the demo's
    backend outlives the gateway's drain, so that clients see the gateway's 1001).
    """
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[Any]] = set()
    later = after or []

    def stop() -> None:
        for server, _ in servers:
            server.should_exit = True

    def reload() -> None:
        if reloader is not None:
            task = asyncio.create_task(reloader.reload())
            background.add(task)
            task.add_done_callback(background.discard)

    signals = {signal.SIGINT: stop, signal.SIGTERM: stop, signal.SIGHUP: reload}
    for sig, handler in signals.items():
        loop.add_signal_handler(sig, handler)
    if reloader is not None and reloader.pair is not None:
        background.add(asyncio.create_task(reloader.watch_certificates()))
    if _stops_while_starting:
        stop()
    tasks = [asyncio.create_task(server.serve(sockets=socks)) for server, socks in servers]
    later_tasks = [asyncio.create_task(server.serve(sockets=socks)) for server, socks in later]
    background.add(asyncio.create_task(_say_ready([*servers, *later], [*tasks, *later_tasks])))
    try:
        # If one listener fails, stop the others rather than serve half a gateway.
        for finished in asyncio.as_completed([*tasks, *later_tasks]):
            await finished
            stop()
            if all(task.done() for task in tasks):
                for server, _ in later:
                    server.should_exit = True
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)


async def _say_ready(servers: ServerList, tasks: list[asyncio.Task[None]]) -> None:
    """Log once when every server has started (its lifespan ran, its listener accepts)."""
    while not all(server.started for server, _ in servers):
        if any(task.done() for task in tasks):
            return
        await asyncio.sleep(0.01)
    logger.info("gateway ready (pid %d)", os.getpid())


def run_worker(
    settings: Settings,
    pair: CertificatePair | None,
    listeners: list[Listener],
    load: Callable[[], Settings] | None = None,
    where: str = "settings",
    report: Path | None = None,
) -> None:
    """Serve ``listeners`` in this process until SIGTERM/SIGINT; SIGHUP calls ``load`` again
    (and writes the outcome to ``report``)."""
    configure_logging(settings.log.level)
    reloader = Reloader(
        load or functools.partial(load_settings, None), where, settings, pair, report=report
    )
    run_servers(gateway_servers(settings, pair, listeners, reloader), reloader)


def gateway_servers(
    settings: Settings,
    pair: CertificatePair | None,
    listeners: list[Listener],
    reloader: Reloader | None = None,
) -> ServerList:
    """A uvicorn server for each listener: the gateway, the https redirect, the admin."""
    app = create_app(settings)
    certificates = certificate_store(settings, pair) if pair is not None else None
    if certificates is not None:  # on the admin listener's status page and metrics
        app.state.certificate_status = certificates.status
        app.state.metrics.watch_certificates(certificates.status)
    servers: ServerList = []
    for listener in listeners:
        if listener.kind == "redirect":
            https_port = settings.listen.public_port or settings.listen.port
            acme = acme_options(settings)
            answers = acme.storage / "http-01" if acme is not None else None
            redirect = uvicorn_config(RedirectToHttps(https_port, answers), settings, None)
            servers.append(plain_server(redirect, listener.sock))
        elif listener.kind == "admin":
            servers.append(
                plain_server(uvicorn_config(create_admin_app(app), settings, None), listener.sock)
            )
        else:
            config = uvicorn_config(app, settings, pair, certificates=certificates)
            grace_s = settings.timeouts.shutdown_grace_s
            before = functools.partial(close_websockets, app, grace_s)
            servers.append((GatewayServer(config, before_shutdown=before), [listener.sock]))
            if reloader is not None:
                reloader.apps.append(app)
                reloader.configs.append(config)
    return servers


def plain_server(
    config: uvicorn.Config, sock: socket.socket
) -> tuple[uvicorn.Server, list[socket.socket]]:
    """A server without lifespan or shutdown hooks (redirect listener, demo backend)."""
    config.lifespan = "off"
    return GatewayServer(config), [sock]


# Young collections wait for this many more tracked objects (containers, coroutines)
# allocated than freed; CPython's default is 700.
YOUNG_GC_THRESHOLD = 2_000


def settle_collector() -> None:
    """Tune the garbage collector for a long-running server; call once, after start-up.

    Everything built so far (settings, apps, imported modules) lives as long as the
    process: it is kept out of the collector's scans, whose full passes over it otherwise
    show up as tens of milliseconds of tail latency under load. A request in flight holds
    a few dozen tracked objects (its scope, messages, coroutines), freed by reference
    counting when it ends; at CPython's threshold of 700, 32 concurrent requests crossed
    it every 33 requests, and each young collection walked every object in flight (3% of
    the CPU of small GETs; 3 collections in 70,000 GETs at 2,000). Higher is not better:
    connections leave cyclic garbage (transports, TLS objects) that only a collection
    frees - at 10,000 a 30 s soak of TLS requests and WebSocket sessions grew by 30 MB,
    at 2,000 by 4 MB as at 700 (tests/robustness/test_soak.py).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


def run_servers(
    servers: ServerList, reloader: Reloader | None = None, after: ServerList | None = None
) -> None:
    """Run ``servers`` (then ``after``) in one event loop (uvloop when installed) until a
    signal stops them."""
    settle_collector()
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=_loop_factory()) as runner,
    ):
        runner.run(_serve(servers, reloader, after))


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


def run_workers(
    settings: Settings,
    pair: CertificatePair | None,
    listeners: list[Listener],
    workers: int,
    load: Callable[[], Settings] | None = None,
    where: str = "settings",
    report: Path | None = None,
) -> int:
    """Run ``workers`` processes sharing the listening sockets; forward signals to them.

    SIGHUP is checked here first (and the outcome written to ``report``): a configuration
    that would not load is not sent to the workers.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=run_worker, args=(settings, pair, listeners, load, where), daemon=False
        )
        for _ in range(workers)
    ]
    for process in processes:
        process.start()

    stop_signals = (signal.SIGINT, signal.SIGTERM)
    stopping: list[int] = []

    def forward(sig: int, frame: object) -> None:
        if sig in stop_signals:
            stopping.append(sig)
        elif load is not None:
            problems = check_reload(load, where)
            for problem in problems:
                logger.error("reload rejected, configuration kept: %s", problem)
            if report is not None:
                write_report(report, ReloadReport(os.getpid(), not problems, problems))
            if problems:
                return
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, sig)

    for sig in (*stop_signals, signal.SIGHUP):
        signal.signal(sig, forward)
    for early in _stops_while_starting:
        forward(early, None)
    for process in processes:
        process.join()
    # A worker still starting up when asked to stop dies of that signal: that is a clean stop.
    clean = {0, *(-sig for sig in stopping)}
    return max((abs(p.exitcode or 0) for p in processes if p.exitcode not in clean), default=0)
