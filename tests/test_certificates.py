"""Certificates per host name (SNI), their settings and reloads, the pure parts of the
ACME manager, and ``gateway proxy``'s decisions. The ACME protocol itself is tested
against a real CA in tests/test_acme.py."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
import stat
import sys
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509

from gateway.acme import (
    DomainState,
    _tls_alpn_certificate,
    backoff_s,
    domains_of,
    renewal_time,
    write_private,
)
from gateway.app import create_app
from gateway.certificates import CertificateStore, choose, offers_acme_alpn
from gateway.metrics import Metrics
from gateway.proxy_command import is_public_name, parse_from, plan_proxy, upstream_url
from gateway.server import uvicorn_config
from gateway.settings import ConfigError, Settings, load_settings
from gateway.tls import ACME_CHALLENGE_PATH, CertificatePair, RedirectToHttps
from tests.acme_fixture import gateway_run, peer_certificate
from tests.conftest import GatewayFactory
from tests.servers import Backend, free_port, plain_config, run_server

GATEWAY = [sys.executable, "-m", "gateway"]


def issue(ca: trustme.CA, folder: Path, *names: str) -> CertificatePair:
    folder.mkdir(parents=True, exist_ok=True)
    issued = ca.issue_cert(*names)
    pair = CertificatePair(folder / "cert.pem", folder / "key.pem")
    issued.private_key_pem.write_to_path(str(pair.keyfile))
    issued.cert_chain_pems[0].write_to_path(str(pair.certfile))
    return pair


def names_of(certificate: x509.Certificate) -> list[str]:
    extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]


# -- choosing by SNI ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("api.example.com", "exact"),
        ("API.Example.COM.", "exact"),
        ("www.example.com", "wildcard"),
        ("a.b.example.com", "wildcard"),  # the longest suffix that has one
        ("x.deep.example.com", "deep"),
        ("example.com", None),  # *.example.com does not cover example.com itself
        ("other.test", None),
        (None, None),
        ("", None),
    ],
)
def test_choose_exact_then_longest_wildcard(name: str | None, expected: str | None) -> None:
    exact = {"api.example.com": "exact"}
    wildcard = {"example.com": "wildcard", "deep.example.com": "deep"}
    assert choose(name, exact, wildcard) == expected


def client_hello(name: str | None, alpn: list[str] | None) -> bytes:
    """The first bytes a real TLS client sends (OpenSSL through a memory BIO)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_acme_alpn_is_recognised_in_a_real_client_hello() -> None:
    hello = client_hello("gw.test", ["acme-tls/1"])
    assert offers_acme_alpn(hello) == "gw.test"
    assert offers_acme_alpn(client_hello("gw.test", ["h2", "http/1.1"])) is None
    assert offers_acme_alpn(client_hello("gw.test", None)) is None
    assert offers_acme_alpn(client_hello(None, ["acme-tls/1"])) is None
    # Cut short, or not TLS at all: no answer, no exception.
    for cut in range(0, len(hello), 7):
        offers_acme_alpn(hello[:cut])
    assert offers_acme_alpn(b"GET / HTTP/1.1\r\nacme-tls/1\r\n\r\n") is None


async def test_sni_chooses_exact_then_wildcard_then_default(
    tmp_path: Path, ca: trustme.CA, backend: Backend, gateway_factory: GatewayFactory
) -> None:
    exact = issue(ca, tmp_path / "exact", "api.example.com")
    wildcard = issue(ca, tmp_path / "wildcard", "*.example.com", "example.com")
    certificates = [
        {"hosts": ["*.example.com", "example.com"], "certfile": wildcard.certfile,
         "keyfile": wildcard.keyfile},
        {"hosts": ["api.example.com"], "certfile": exact.certfile, "keyfile": exact.keyfile},
    ]  # fmt: skip
    upstream = f"http://127.0.0.1:{backend.port}"
    async with gateway_factory(upstream, certificates=certificates) as url:
        port = int(url.rsplit(":", 1)[1])
        served = {
            name: names_of(await asyncio.to_thread(peer_certificate, port, name))
            for name in ("api.example.com", "www.example.com", "example.com", "other.test")
        }
        assert served == {
            "api.example.com": ["api.example.com"],
            "www.example.com": ["*.example.com", "example.com"],
            "example.com": ["*.example.com", "example.com"],
            "other.test": ["localhost"],  # the default certificate (conftest's)
        }
        # The chosen certificate verifies, and requests go through as usual.
        trust = ssl.create_default_context()
        ca.configure_trust(trust)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=trust, server_hostname="api.example.com"
        )
        writer.write(b"GET / HTTP/1.1\r\nhost: api.example.com\r\nconnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_unknown_sni_rejected_when_settings_say_so(
    tmp_path: Path, ca: trustme.CA, backend: Backend, cert_pair: CertificatePair
) -> None:
    known = issue(ca, tmp_path / "known", "known.test")
    settings = Settings(
        listen={"host": "127.0.0.1", "port": 0, "certfile": cert_pair.certfile,
                "keyfile": cert_pair.keyfile},
        routes=[{"prefix": "/", "upstream": f"http://127.0.0.1:{backend.port}"}],
        certificates=[{"hosts": ["known.test"], "certfile": known.certfile,
                       "keyfile": known.keyfile}],
        tls={"unknown_sni": "reject"},
    )  # fmt: skip
    config = uvicorn_config(create_app(settings), settings, cert_pair)
    async with run_server(config) as port:
        assert names_of(await asyncio.to_thread(peer_certificate, port, "known.test")) == [
            "known.test"
        ]
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            await asyncio.to_thread(peer_certificate, port, "unknown.test")
        # A client without SNI (an IP address) still gets the default certificate.
        assert names_of(await asyncio.to_thread(peer_certificate, port, None)) == ["localhost"]


def test_store_reloads_changed_files_and_keeps_a_broken_pair_out(
    tmp_path: Path, ca: trustme.CA
) -> None:
    pair = issue(ca, tmp_path / "a", "a.test")
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    store = CertificateStore(default_pair=None)
    store.attach(default)
    store.install(["a.test"], pair)
    entry = store.entry_for("a.test")
    assert entry is not None
    before = entry.not_after
    assert store.reload_changed() == []
    # A half-written pair (the key of another certificate) is kept out and retried.
    other = ca.issue_cert("a.test", not_after=datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC))
    other.cert_chain_pems[0].write_to_path(str(pair.certfile))
    assert store.reload_changed() == []
    assert entry.not_after == before
    other.private_key_pem.write_to_path(str(pair.keyfile))
    assert store.reload_changed() == ["a.test"]
    assert entry.not_after.year == 2031


def test_status_and_metrics_show_each_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    default = issue(ca, tmp_path / "default", "localhost")
    pair = issue(ca, tmp_path / "a", "a.test", "b.test")
    store = CertificateStore(default_pair=default)
    store.install(["a.test", "b.test"], pair)
    store.install(["acme.test"], issue(ca, tmp_path / "acme", "acme.test"), source="acme")
    state = DomainState("acme.test", failures=2, last_error="ConnectionError: refused")
    pending = DomainState("pending.test", failures=1, last_error="TimeoutError")
    store.renewal = lambda: {"acme.test": state.as_dict(), "pending.test": pending.as_dict()}
    entries = {tuple(entry["hosts"]): entry for entry in store.status()}
    assert list(entries) == [
        ("(default)",),
        ("a.test", "b.test"),
        ("acme.test",),
        ("pending.test",),
    ]
    assert entries[("a.test", "b.test")]["source"] == "file"
    assert entries[("a.test", "b.test")]["renewal"] is None
    assert entries[("acme.test",)]["renewal"]["failures"] == 2
    assert entries[("pending.test",)]["not_after"] is None
    metrics = Metrics(process_metrics=False)
    metrics.watch_certificates(store.status)
    text = metrics.exposition().decode()
    assert 'gateway_certificate_expiry_days{host="b.test"}' in text
    assert 'gateway_certificate_expiry_days{host="(default)"}' in text
    assert 'gateway_certificate_renewal_failures{host="acme.test"} 2.0' in text
    assert 'gateway_certificate_renewal_failures{host="pending.test"} 1.0' in text
    assert 'gateway_certificate_expiry_days{host="pending.test"}' not in text


# -- settings, check, reload ------------------------------------------------------------


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[listen]\ntls = false\n[[certificates]]\nhosts = ["a.test"]\n'
            'certfile = "CERT"\nkeyfile = "KEY"\n',
            "certificates: served on the TLS listener",
        ),
        ('[[certificates]]\nhosts = []\ncertfile = "CERT"\nkeyfile = "KEY"\n', "certificates.0.hosts"),  # noqa: E501
        ('[[certificates]]\nhosts = ["a.test"]\ncertfile = "nope.pem"\nkeyfile = "KEY"\n', "does not exist"),  # noqa: E501
        ('[listen]\ntls = false\n[acme]\ndomains = ["a.test"]\n', "acme: certificates need listen.tls"),  # noqa: E501
        ('[acme]\ndomains = ["a.test"]\nchallenges = ["http-01"]\n', "listen.redirect_port"),
        ('[acme]\ndomains = ["*.a.test"]\n', "wildcards need dns-01"),
        ('[acme]\ndirectory = "http://ca.test/dir"\ndomains = ["a.test"]\n', "must be an https:// URL"),  # noqa: E501
        ("[acme]\n", "acme: no domains"),
        ('[acme]\ndomains = ["a.test"]\nchallenges = ["dns-01"]\n', "acme.challenges.0"),
    ],
)  # fmt: skip
def test_certificate_and_acme_settings_problems_are_named(
    tmp_path: Path, cert_pair: CertificatePair, text: str, problem: str
) -> None:
    text = text.replace("CERT", str(cert_pair.certfile)).replace("KEY", str(cert_pair.keyfile))
    with pytest.raises(ConfigError) as caught:
        load_settings(write_toml(tmp_path / "gateway.toml", text))
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_acme_domains_default_to_the_routes_exact_names(tmp_path: Path) -> None:
    settings = load_settings(
        write_toml(
            tmp_path / "gateway.toml",
            '[listen]\nredirect_port = 8080\n[acme]\nstorage = "acme"\n'
            '[[routes]]\nprefix = "/"\nupstream = "http://127.0.0.1:9"\n'
            'hosts = ["Example.com", "*.example.com", "www.example.com"]\n',
        )
    )
    from gateway.certificate_settings import acme_options

    options = acme_options(settings)
    assert options is not None
    assert options.domains == ("example.com", "www.example.com")
    assert options.challenges == ("http-01", "tls-alpn-01")
    assert options.storage == tmp_path / "acme"  # relative to the settings file
    assert options.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert domains_of([["[::1]", "a.test", "*.b.test"], ["A.test"]]) == ("a.test",)


def test_check_names_a_certificate_whose_key_does_not_match(
    tmp_path: Path, ca: trustme.CA, cert_pair: CertificatePair
) -> None:
    mine, other = issue(ca, tmp_path / "mine", "a.test"), issue(ca, tmp_path / "other", "b.test")
    config = write_toml(
        tmp_path / "gateway.toml",
        f'[listen]\ncertfile = "{cert_pair.certfile}"\nkeyfile = "{cert_pair.keyfile}"\n'
        f'[[certificates]]\nhosts = ["a.test"]\ncertfile = "{mine.certfile}"\n'
        f'keyfile = "{other.keyfile}"\n',
    )
    from gateway.cli import main

    assert main(["check", "-c", str(config)]) == 1


async def test_sighup_and_file_changes_reload_certificates_by_name(
    tmp_path: Path, ca: trustme.CA, cert_pair: CertificatePair, backend: Backend
) -> None:
    a = issue(ca, tmp_path / "a", "a.test")
    b = issue(ca, tmp_path / "b", "b.test")
    port = free_port()
    base = (
        f'[listen]\nhost = "127.0.0.1"\nport = {port}\ncertfile = "{cert_pair.certfile}"\n'
        f'keyfile = "{cert_pair.keyfile}"\n[timeouts]\nshutdown_grace_s = 1\n'
        f'[[routes]]\nprefix = "/"\nupstream = "http://127.0.0.1:{backend.port}"\n'
        f'[[certificates]]\nhosts = ["a.test"]\ncertfile = "{a.certfile}"\n'
        f'keyfile = "{a.keyfile}"\n'
    )
    config = write_toml(tmp_path / "gateway.toml", base)
    pid = tmp_path / "pid"
    args = ["run", "-c", str(config), "--pid-file", str(pid)]
    async with gateway_run(args, port, tmp_path / "gateway.log") as gateway:

        async def served(name: str) -> x509.Certificate:
            return await asyncio.to_thread(peer_certificate, port, name)

        first = await served("a.test")
        assert names_of(first) == ["a.test"]
        assert names_of(await served("b.test")) == ["localhost"]
        # New files for a.test are picked up without a signal (polled every 2 s).
        issue(ca, tmp_path / "a", "a.test")
        async with asyncio.timeout(20):
            while (await served("a.test")).serial_number == first.serial_number:
                await asyncio.sleep(0.2)
        assert "certificate for a.test reloaded" in gateway.log()
        # SIGHUP adds b.test's certificate.
        write_toml(
            config,
            base + f'[[certificates]]\nhosts = ["b.test"]\ncertfile = "{b.certfile}"\n'
            f'keyfile = "{b.keyfile}"\n',
        )
        reload = await asyncio.create_subprocess_exec(*GATEWAY, "reload", "--pid-file", str(pid))
        assert await reload.wait() == 0
        assert names_of(await served("b.test")) == ["b.test"]
        # A pair that does not load is refused with its name; what is served stays.
        write_toml(
            config,
            base + f'[[certificates]]\nhosts = ["b.test"]\ncertfile = "{b.certfile}"\n'
            f'keyfile = "{a.keyfile}"\n',
        )
        reload = await asyncio.create_subprocess_exec(
            *GATEWAY, "reload", "--pid-file", str(pid), stderr=asyncio.subprocess.PIPE
        )
        _, errors = await reload.communicate()
        assert reload.returncode == 1
        assert b"certificates.1 (b.test)" in errors
        assert names_of(await served("b.test")) == ["b.test"]


# -- the ACME manager's pure parts ----------------------------------------------------


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert backoff_s(0, 60, 3600) == 0
    waits = [backoff_s(n, 60, 3600) for n in range(1, 10)]
    assert 54 <= waits[0] <= 66
    assert 108 <= waits[1] <= 132
    assert all(w <= 3600 * 1.1 for w in waits)
    assert waits[-1] >= 3600 * 0.9


def test_renewal_time_takes_the_earlier_of_ari_and_the_fixed_rule() -> None:
    end = datetime.datetime(2030, 3, 1, tzinfo=datetime.UTC)
    fixed = datetime.datetime(2030, 1, 30, tzinfo=datetime.UTC)
    assert renewal_time(end, 30, None) == fixed
    early = datetime.datetime(2029, 12, 1, tzinfo=datetime.UTC)
    assert renewal_time(end, 30, early) == early  # the CA asks for an early renewal
    assert renewal_time(end, 30, datetime.datetime(2030, 2, 20, tzinfo=datetime.UTC)) == fixed
    naive = datetime.datetime(2029, 12, 1)  # the library's times may be naive: UTC
    assert renewal_time(end, 30, naive) == early


def test_private_files_are_0600_in_0700_folders_and_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "storage" / "certs" / "a.test" / "key.pem"
    write_private(target, b"one")
    write_private(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["key.pem"]  # no temporary left


def test_tls_alpn_challenge_certificate_carries_the_key_authorization_digest() -> None:
    cert_pem, key_pem = _tls_alpn_certificate("gw.test", "token.thumbprint")
    certificate = x509.load_pem_x509_certificate(cert_pem)
    assert names_of(certificate) == ["gw.test"]
    extension = certificate.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
    )
    assert extension.critical
    digest = hashlib.sha256(b"token.thumbprint").digest()
    assert extension.value.value == b"\x04\x20" + digest  # type: ignore[attr-defined]
    assert b"PRIVATE KEY" in key_pem


async def test_redirect_listener_answers_http01_from_storage_only(tmp_path: Path) -> None:
    answers = tmp_path / "http-01"
    answers.mkdir()
    (answers / "tok-EN_1").write_bytes(b"tok-EN_1.thumb")
    (tmp_path / "secret").write_bytes(b"not for you")
    async with run_server(plain_config(RedirectToHttps(8443, answers))) as port:
        base = f"http://127.0.0.1:{port}{ACME_CHALLENGE_PATH}"
        async with httpx.AsyncClient() as client:
            found = await client.get(base + "tok-EN_1")
            assert (found.status_code, found.content) == (200, b"tok-EN_1.thumb")
            assert (await client.get(base + "unknown")).status_code == 404
            assert (await client.get(base + "..%2Fsecret")).status_code == 404
            assert (await client.get(base)).status_code == 404
            other = await client.get(f"http://127.0.0.1:{port}/elsewhere")
            assert other.status_code == 308


# -- gateway proxy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", ("example.com", None)),
        ("Example.COM:8443", ("example.com", 8443)),
        ("[::1]:9443", ("::1", 9443)),
        ("localhost", ("localhost", None)),
    ],
)
def test_parse_from(value: str, expected: tuple[str, int | None]) -> None:
    assert parse_from(value) == expected


@pytest.mark.parametrize("value", ["https://example.com", "example.com:http", "a:70000", ":80"])
def test_parse_from_names_the_mistake(value: str) -> None:
    with pytest.raises(ConfigError, match="--from"):
        parse_from(value)


def test_public_names_and_upstream_urls() -> None:
    assert is_public_name("example.com")
    assert is_public_name("app.example.org")
    for name in ("localhost", "gw.test", "a.localhost", "host.internal", "printer", "10.0.0.1"):
        assert not is_public_name(name), name
    assert upstream_url("localhost:8080") == "http://localhost:8080"
    assert upstream_url(":8080") == "http://127.0.0.1:8080"
    assert upstream_url("https://10.0.0.2:9000") == "https://10.0.0.2:9000"


def test_plan_for_a_public_name_uses_acme_on_the_standard_ports() -> None:
    plan = plan_proxy("example.com", "localhost:8080", email="ops@example.com")
    settings = plan.settings
    assert plan.acme
    assert plan.url == "https://example.com/"
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 443)
    assert settings.listen.redirect_port == 80
    assert settings.acme is not None
    assert settings.acme.domains == ["example.com"]
    assert settings.acme.email == "ops@example.com"
    assert settings.routes[0].hosts == ["example.com"]
    assert settings.routes[0].upstream == "http://localhost:8080"


def test_plan_for_localhost_uses_the_development_certificate() -> None:
    plan = plan_proxy("localhost", ":8080")
    assert not plan.acme
    assert plan.settings.acme is None
    assert (plan.settings.listen.host, plan.settings.listen.port) == ("127.0.0.1", 8443)
    assert plan.settings.listen.redirect_port is None
    assert plan.settings.routes[0].hosts == []  # 127.0.0.1 and localhost both reach it
    assert plan.url == "https://localhost:8443/"


def test_plan_names_a_bad_upstream() -> None:
    with pytest.raises(ConfigError) as caught:
        plan_proxy("localhost", "ftp://files")
    assert caught.value.problems[0].startswith("proxy: routes.0.upstream")


async def test_gateway_proxy_localhost_serves_the_development_certificate(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    args = [
        "proxy", "--from", f"localhost:{port}", "--to", f":{backend.port}",
        "--pid-file", str(tmp_path / "pid"),
    ]  # fmt: skip
    state = {"GATEWAY_STATE_DIR": str(tmp_path / "state")}
    async with gateway_run(args, port, tmp_path / "gateway.log", state) as gateway:
        unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        async with httpx.AsyncClient(verify=unverified) as client:
            response = await client.get(f"https://127.0.0.1:{port}/hello")
        assert response.status_code == 200
        assert backend.requests[-1]["raw_path"] == "/hello"
        log = gateway.log()
        assert f"open https://localhost:{port}/" in log
        assert "development certificate" in log
