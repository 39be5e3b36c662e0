"""The gateway's exceptions, under one base class.

::

    GatewayError
     +-- ConfigError        invalid configuration; ``problems`` holds one line per problem
     +-- MissingExtra       an optional feature's package is not installed (names the extra)

Backend failures are not exceptions of the gateway: they are answered (502/503/504, a
close code) where they happen, by the map in ``gateway.failures``.
"""

from __future__ import annotations

__all__ = ["ConfigError", "GatewayError", "MissingExtra"]


class GatewayError(Exception):
    """Base class of the gateway's own exceptions."""


class ConfigError(GatewayError, ValueError):
    """Invalid configuration; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class MissingExtra(GatewayError, ImportError):
    """A feature needs a package that is installed with ``pip install 'gateway[EXTRA]'``."""

    def __init__(self, feature: str, extra: str, package: str) -> None:
        super().__init__(f"{feature} needs the {package!r} package: pip install 'gateway[{extra}]'")
        self.extra = extra
