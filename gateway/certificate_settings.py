"""From settings to the certificates a TLS listener serves: the default pair, the
``[[certificates]]`` by SNI name, and what ``[acme]`` asks for (gateway.certificates,
gateway.acme)."""

from __future__ import annotations

from gateway.acme import AcmeOptions, domains_of
from gateway.certificates import CertificateStore
from gateway.control import state_dir
from gateway.settings import ConfigError, Settings
from gateway.tls import HTTP1_ALPN, HTTP2_ALPN, CertificatePair, check_pair

__all__ = [
    "acme_options",
    "alpn_protocols",
    "certificate_problems",
    "certificate_store",
    "install_certificates",
]


def alpn_protocols(settings: Settings) -> tuple[str, ...]:
    """What the TLS listener offers by ALPN: h2 first with ``listen.http2``."""
    return HTTP2_ALPN if settings.listen.http2 else HTTP1_ALPN


def certificate_store(settings: Settings, pair: CertificatePair) -> CertificateStore:
    """The certificates by SNI name of ``settings`` (``[[certificates]]``; ACME adds its
    own when it runs) around the default ``pair``. Raises ConfigError for a pair that
    does not load."""
    acme = acme_options(settings)
    store = CertificateStore(
        settings.tls.profile,
        default_pair=pair,
        reject_unknown=settings.tls.unknown_sni == "reject",
        challenges=acme.storage / "tls-alpn-01" if acme is not None else None,
        alpn=alpn_protocols(settings),
    )
    install_certificates(store, settings)
    return store


def install_certificates(store: CertificateStore, settings: Settings) -> None:
    """Make ``store`` serve exactly the ``[[certificates]]`` of ``settings`` (ACME's stay).

    Raises ConfigError, naming each entry that does not load; nothing changes then.
    """
    problems = certificate_problems(settings)
    if problems:
        raise ConfigError(problems)
    wanted = {
        tuple(host.lower() for host in entry.hosts): CertificatePair(entry.certfile, entry.keyfile)
        for entry in settings.certificates
    }
    for hosts, installed in list(store.installed.items()):
        if installed.source == "file" and wanted.get(hosts) != installed.pair:
            store.remove(hosts)
    for hosts, pair in wanted.items():
        if hosts not in store.installed:
            store.install(hosts, pair)


def certificate_problems(settings: Settings) -> list[str]:
    """Why ``[[certificates]]`` entries of ``settings`` would not load (none: they do)."""
    problems = []
    for index, entry in enumerate(settings.certificates):
        problem = check_pair(CertificatePair(entry.certfile, entry.keyfile))
        if problem is not None:
            problems.append(f"certificates.{index} ({', '.join(entry.hosts)}): {problem}")
    return problems


def acme_options(settings: Settings) -> AcmeOptions | None:
    """What the ``[acme]`` section asks for, defaults filled in; None without it."""
    acme = settings.acme
    if acme is None:
        return None
    challenges = tuple(acme.challenges) or (
        ("http-01", "tls-alpn-01")
        if settings.listen.redirect_port is not None
        else ("tls-alpn-01",)
    )
    return AcmeOptions(
        directory=acme.directory,
        domains=tuple(acme.domains) or domains_of([route.hosts for route in settings.routes]),
        storage=acme.storage or state_dir() / "acme",
        email=acme.email,
        ca_bundle=acme.ca_bundle,
        challenges=challenges,
        renew_before_days=acme.renew_before_days,
        check_interval_s=acme.check_interval_s,
        retry_min_s=acme.retry_min_s,
        retry_max_s=acme.retry_max_s,
    )
