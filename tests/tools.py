"""External tools the tests need (installed by scripts/setup): under CI a missing tool
fails its tests, elsewhere it skips them naming what to install."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def missing(what: str, how: str) -> None:
    """Fail under CI (the CI environment variable), else skip: ``what`` is missing."""
    message = f"{what} is missing ({how})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; scripts/setup installs it and CI must run these tests")
    pytest.skip(message)


def require_command(name: str, how: str = "scripts/setup installs it") -> str:
    """The path of the command ``name`` (on PATH or in .venv-tools/bin)."""
    found = shutil.which(name) or shutil.which(name, path=str(ROOT / ".venv-tools" / "bin"))
    if found is None:
        missing(f"the command {name!r}", how)
    assert found is not None
    return found
