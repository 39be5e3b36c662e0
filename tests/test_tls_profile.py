"""The TLS policy of a running gateway, judged by real scanners: sslyze's check of
Mozilla's server side TLS guideline (intermediate and modern), testssl.sh's full run,
and OpenSSL's client for the key exchange groups and cipher suites."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from gateway.tls import CertificatePair
from tests.servers import Backend, free_port, gateway_process
from tests.tools import require_command

GATEWAY = [sys.executable, "-m", "gateway"]

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


async def run(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(args), capture_output=True, text=True, timeout=timeout_s, check=False
    )


def gateway_args(
    tmp_path: Path, backend: Backend, pair: CertificatePair, profile: str
) -> list[str]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[listen]\ncertfile = "{pair.certfile}"\nkeyfile = "{pair.keyfile}"\n'
        f'[tls]\nprofile = "{profile}"\n'
        f'[[routes]]\nupstream = "http://127.0.0.1:{backend.port}"\n'
    )
    return [*GATEWAY, "run", "-c", str(config), "--pid-file", str(tmp_path / "pid")]


@pytest.fixture(scope="module")
def short_lived(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    """A certificate as ACME CAs issue them (60 days), so that no lifespan rule fails."""
    folder = tmp_path_factory.mktemp("short-lived")
    now = datetime.datetime.now(datetime.UTC)
    issued = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=59),
    )
    pair = CertificatePair(folder / "cert.pem", folder / "key.pem")
    issued.private_key_pem.write_to_path(str(pair.keyfile))
    pair.certfile.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return pair


def environment(tmp_path: Path, port: int) -> dict[str, str]:
    # No OPENSSL_CONF from the test runner: the gateway sets its own groups.
    return {"GATEWAY_LISTEN__PORT": str(port), "GATEWAY_STATE_DIR": str(tmp_path / "state")}


def not_compliant(output: str) -> list[str]:
    """sslyze's list of problems under "FAILED - Not compliant", one per line."""
    lines = output.splitlines()
    problems = []
    for index, line in enumerate(lines):
        if "FAILED - Not compliant" in line:
            for problem in lines[index + 1 :]:
                if not problem.strip().startswith("*"):
                    break
                problems.append(problem.strip().removeprefix("* "))
    return problems


@pytest.mark.parametrize("profile", ["intermediate", "modern"])
async def test_sslyze_finds_the_mozilla_profile(
    profile: str,
    tmp_path: Path,
    backend: Backend,
    short_lived: CertificatePair,
    ca: trustme.CA,
) -> None:
    sslyze = require_command("sslyze", "scripts/setup puts it in .venv-tools")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    args = gateway_args(tmp_path, backend, short_lived, profile)
    async with gateway_process(args, port, environment(tmp_path, port)):
        result = await run(
            sslyze,
            f"--mozilla_config={profile}",
            f"--certinfo_ca_file={ca_file}",
            f"127.0.0.1:{port}",
        )
    output = result.stdout + result.stderr
    assert "COMPLIANCE AGAINST TLS CONFIGURATION" in output, output
    # The test CA is in no trust store sslyze knows (--certinfo_ca_file is only shown);
    # everything else - versions, ciphers, curves, the certificate - must be compliant.
    problems = not_compliant(output)
    assert [p for p in problems if not p.startswith("certificate_path_validation")] == [], output
    assert "Supported curves:                  X25519, secp256r1, secp384r1" in output


async def test_testssl_reports_nothing_not_ok(
    tmp_path: Path, backend: Backend, cert_pair: CertificatePair, ca: trustme.CA
) -> None:
    testssl = require_command("testssl", "apt install testssl.sh (scripts/setup does)")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    args = gateway_args(tmp_path, backend, cert_pair, "intermediate")
    async with gateway_process(args, port, environment(tmp_path, port)):
        result = await run(
            testssl,
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--add-ca",
            str(ca_file),
            f"localhost:{port}",
        )
    output = result.stdout + result.stderr
    assert "Testing vulnerabilities" in output, output
    bad = [
        line
        for line in output.splitlines()
        if ("NOT ok" in line or "VULNERABLE" in line)
        # A test certificate carries no revocation information: the only allowed finding.
        and "neither CRL nor OCSP URI provided" not in line
    ]
    assert bad == [], output


@pytest.mark.parametrize(
    ("client_options", "accepted"),
    [
        (["-groups", "X25519"], True),
        (["-groups", "P-256"], True),
        (["-groups", "P-384"], True),
        (["-groups", "P-521"], False),
        (["-groups", "X448"], False),
        (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"], False),  # CBC: LUCKY13
        (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA384"], False),
        (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"], True),
        (["-tls1_1"], False),
    ],
)
async def test_groups_and_suites_offered(
    client_options: list[str],
    accepted: bool,
    tmp_path: Path,
    backend: Backend,
    cert_pair: CertificatePair,
) -> None:
    openssl = require_command("openssl")
    port = free_port()
    args = gateway_args(tmp_path, backend, cert_pair, "intermediate")
    async with gateway_process(args, port, environment(tmp_path, port)):
        result = await run(
            openssl, "s_client", "-connect", f"127.0.0.1:{port}", *client_options, timeout_s=30
        )
    handshake_done = "Cipher is (NONE)" not in result.stdout and "CONNECTED" in result.stdout
    handshake_done = handshake_done and "-----BEGIN CERTIFICATE-----" in result.stdout
    assert handshake_done is accepted, result.stdout + result.stderr
