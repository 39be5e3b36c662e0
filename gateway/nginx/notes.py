"""`Note`: what the translator says about one directive it did not translate one to one."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["APPROXIMATED", "DIFFERS", "INFO", "KINDS", "NOT_NEEDED", "UNSUPPORTED", "Note"]

# nginx does something here that the translated settings do not: --strict fails on these.
UNSUPPORTED = "unsupported"
# Translated, but the gateway behaves a little differently; the reason says how.
APPROXIMATED = "approximated"
# Inert in the gateway, or what the gateway does anyway.
NOT_NEEDED = "not needed"
# How something was translated, where that is not obvious.
INFO = "info"
# Not in the nginx configuration: a default of the gateway that nginx would not have had
# (a check it adds, a limit, a header); the reason names the setting that changes it.
DIFFERS = "differs"
KINDS = (UNSUPPORTED, APPROXIMATED, NOT_NEEDED, INFO, DIFFERS)


@dataclass(frozen=True, slots=True)
class Note:
    """One remark on the directive at ``file:line``; ``kind`` is one of `KINDS`."""

    file: str
    line: int
    directive: str
    reason: str
    kind: str = UNSUPPORTED

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.directive}: {self.kind}: {self.reason}"
