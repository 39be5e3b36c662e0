"""The setup scripts' own logic, with a stand-in ``apt-get`` on PATH (no real apt run)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fake_apt_get(folder: Path, locked_calls: int) -> Path:
    """An ``apt-get`` that fails as a held lock does for its first ``locked_calls`` calls."""
    calls = folder / "calls"
    script = folder / "apt-get"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{calls}"\n'
        f'count=$(wc -l < "{calls}")\n'
        f"if (( count <= {locked_calls} )); then\n"
        '  echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 1'
        ' (apt-get)" >&2\n'
        "  exit 100\n"
        "fi\n"
        'echo "apt-get $1 done"\n'
    )
    script.chmod(0o755)
    return calls


def apt_install(folder: Path, wait_s: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{folder}:{os.environ['PATH']}",
        "GATEWAY_APT_WAIT_S": str(wait_s),
        "GATEWAY_APT_RETRY_S": "0.05",
    }
    return subprocess.run(
        [str(ROOT / "scripts" / "apt-install"), "chromium"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_apt_install_waits_for_a_held_lock_and_says_so(tmp_path: Path) -> None:
    calls = fake_apt_get(tmp_path, locked_calls=3)
    result = apt_install(tmp_path, wait_s=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("another apt or dpkg run holds apt's lock; waiting") == 1
    lines = calls.read_text().splitlines()
    assert len(lines) == 5  # three refused, then update and install
    assert lines[-2].endswith("update -q")
    assert lines[-1].endswith("install -y -q --no-install-recommends chromium")


def test_apt_install_gives_up_after_its_bound(tmp_path: Path) -> None:
    fake_apt_get(tmp_path, locked_calls=10**6)
    result = apt_install(tmp_path, wait_s=1)
    assert result.returncode == 1
    assert "Could not get lock" in result.stderr
    assert "apt's lock was still held after 1 s; giving up" in result.stderr


def test_apt_install_does_not_wait_on_other_errors(tmp_path: Path) -> None:
    script = tmp_path / "apt-get"
    script.write_text('#!/usr/bin/env bash\necho "E: Unable to locate package $5" >&2\nexit 100\n')
    script.chmod(0o755)
    result = apt_install(tmp_path, wait_s=30)
    assert result.returncode == 1
    assert "Unable to locate package" in result.stderr
    assert "waiting" not in result.stderr
