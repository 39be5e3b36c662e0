"""Reloading a running gateway: settings on SIGHUP, certificates when their files change.

A new configuration is built completely before it replaces the old one; an invalid one
is logged line by line (and reported to ``gateway reload``) and the running one kept.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from gateway.app import build_gateway, reload_app
from gateway.certificate_settings import certificate_problems, install_certificates
from gateway.certificates import CertificateStore
from gateway.control import ReloadReport, write_report
from gateway.logs import get_logger
from gateway.settings import ConfigError, Settings
from gateway.tls import CertificatePair

__all__ = ["CERT_POLL_S", "Reloader", "check_reload"]

logger = get_logger("gateway")

CERT_POLL_S = 2.0

# Read by the listeners when they start (``uvicorn_config``), not by the reloaded app.
_LISTENER_TIMEOUTS = ("header_s", "tls_handshake_s")


@dataclass
class Reloader:
    """Re-reads settings (SIGHUP) and certificates (on change) for this process's apps.

    A new configuration is built completely before it replaces the old one; an invalid
    file is logged line by line and the running configuration kept.  Requests and
    WebSocket sessions in flight finish on the configuration they started with.
    """

    load: Callable[[], Settings]
    where: str
    settings: Settings
    pair: CertificatePair | None
    apps: list[Starlette] = field(default_factory=list)
    configs: list[uvicorn.Config] = field(default_factory=list)
    # Where to publish each reload's outcome for ``gateway reload`` (None: nowhere).
    report: Path | None = None
    _stamp: tuple[int, int, int, int] | None = None

    async def reload(self) -> bool:
        """Apply the settings file again; False (and errors logged) if it is invalid."""
        where = self.where
        try:
            settings = self.load()
            try:
                problems = certificate_problems(settings)
                if problems:
                    raise ConfigError(problems)
                for app in self.apps:
                    await reload_app(app, settings)
            except ConfigError as exc:
                raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
        except ConfigError as exc:
            for problem in exc.problems:
                logger.error("reload rejected, configuration kept: %s", problem)
            self._publish(False, exc.problems)
            return False
        if settings.listen != self.settings.listen:
            logger.warning("reload: [listen] changes take effect after a restart")
        if settings.acme != self.settings.acme:
            logger.warning("reload: [acme] changes take effect after a restart")
        if settings.http2 != self.settings.http2:
            logger.warning("reload: [http2] changes take effect after a restart")
        for store in self.stores():
            install_certificates(store, settings)
        for key in _LISTENER_TIMEOUTS:
            if getattr(settings.timeouts, key) != getattr(self.settings.timeouts, key):
                logger.warning("reload: timeouts.%s takes effect after a restart", key)
        self.settings = settings
        logger.info("reloaded settings from %s", where)
        self.reload_certificate()
        self._publish(True, [])
        return True

    def _publish(self, ok: bool, problems: list[str]) -> None:
        if self.report is not None:
            write_report(self.report, ReloadReport(os.getpid(), ok, problems))

    def stores(self) -> list[CertificateStore]:
        """The certificates by SNI name of this process's TLS listeners."""
        stores = (getattr(config, "certificates", None) for config in self.configs)
        return [store for store in stores if store is not None]

    def _certificate_stamp(self) -> tuple[int, int, int, int] | None:
        if self.pair is None:
            return None
        try:
            cert, key = self.pair.certfile.stat(), self.pair.keyfile.stat()
        except OSError:
            return None
        return (cert.st_mtime_ns, cert.st_size, key.st_mtime_ns, key.st_size)

    def reload_certificate(self) -> bool:
        """Load the certificate files into the live TLS contexts if they changed and load."""
        stamp = self._certificate_stamp()
        if self.pair is None or stamp is None or stamp == self._stamp:
            return False
        contexts = [config.ssl for config in self.configs if config.ssl is not None]
        try:
            # A trial context first: a half-written or mismatched pair must not go live.
            trial = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            trial.load_cert_chain(self.pair.certfile, self.pair.keyfile)
            for context in contexts:
                # New handshakes use the new chain; open connections keep theirs.
                context.load_cert_chain(self.pair.certfile, self.pair.keyfile)
        except (ssl.SSLError, OSError) as exc:
            logger.warning("certificate not reloaded (will retry): %s", exc)
            return False
        first = self._stamp is None
        self._stamp = stamp
        if not first:
            logger.info("certificate reloaded from %s", self.pair.certfile)
        return True

    async def watch_certificates(self, interval_s: float = CERT_POLL_S) -> None:
        """Poll the certificate files and reload them when they change."""
        self._stamp = self._certificate_stamp()
        while True:
            await asyncio.sleep(interval_s)
            self.reload_certificate()
            for store in self.stores():
                for hosts in store.reload_changed():
                    logger.info("certificate for %s reloaded", hosts)


def check_reload(load: Callable[[], Settings], where: str) -> list[str]:
    """The problems a reload with ``load`` would meet (none: it would go live)."""
    try:
        settings = load()
        try:
            problems = certificate_problems(settings)
            if problems:
                raise ConfigError(problems)
            build_gateway(settings)
        except ConfigError as exc:
            raise ConfigError([f"{where}: {problem}" for problem in exc.problems]) from None
    except ConfigError as exc:
        return exc.problems
    return []
