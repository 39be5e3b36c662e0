"""The one seam with other libraries' internals (``gateway._compat``): every method and
attribute the gateway relies on still exists in the installed uvicorn, Starlette and
prometheus_client, with the parameters it is called with."""

from __future__ import annotations

import inspect
import re

import pytest

from gateway import _compat
from gateway._compat import RELIES_ON, Reliance, hypercorn_reliances


def _hypercorn() -> tuple[Reliance, ...]:
    try:
        return hypercorn_reliances()
    except ImportError:  # the http2 extra is not installed (CI installs it)
        return ()


def _label(reliance: Reliance) -> str:
    owner = getattr(reliance.owner, "__qualname__", repr(reliance.owner))
    return f"{owner}.{reliance.attribute}"


@pytest.mark.parametrize("reliance", RELIES_ON + _hypercorn(), ids=_label)
def test_what_the_gateway_relies_on_still_exists(reliance: Reliance) -> None:
    owner = reliance.owner
    if reliance.setting:
        assert hasattr(owner, reliance.attribute), f"{_label(reliance)} is gone ({reliance.why})"
        return
    if reliance.instance:
        # Set on instances: look for the assignment in the class's own source.
        assert isinstance(owner, type)
        libraries = ("uvicorn", "starlette", "hypercorn")
        source = "".join(inspect.getsource(cls) for cls in owner.__mro__ if cls is not object
                         and cls.__module__.split(".")[0] in libraries)  # fmt: skip
        pattern = rf"self\.{re.escape(reliance.attribute)}\s*(:[^=\n]+)?="
        assert re.search(pattern, source), f"{_label(reliance)} no longer set ({reliance.why})"
        return
    target = owner if reliance.attribute == "__call__" else getattr(owner, reliance.attribute, None)
    assert callable(target), f"{_label(reliance)} is gone ({reliance.why})"
    if reliance.parameters is not None:
        names = [name for name in inspect.signature(target).parameters if name != "self"]
        wanted = list(reliance.parameters)
        assert names[: len(wanted)] == wanted, (
            f"{_label(reliance)}{tuple(names)} no longer takes {tuple(wanted)} ({reliance.why})"
        )


def test_the_seam_is_the_only_importer_of_those_internals() -> None:
    # The rest of the package takes these classes from gateway._compat only.
    from pathlib import Path

    package = Path(_compat.__file__).parent
    internals = re.compile(
        r"^\s*(from|import) (uvicorn\.protocols|starlette\.staticfiles|prometheus_client\.utils"
        r"|hypercorn)",
        re.M,
    )
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "_compat.py" and internals.search(path.read_text())
    ]
    assert offenders == []
