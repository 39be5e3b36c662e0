"""nginx values: times (``1h30m``), sizes (``10m``) and variables in header values."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.middleware.headers import VARIABLES

__all__ = ["GATEWAY_VARIABLES", "parse_size_bytes", "parse_time_s", "translate_variables"]

GATEWAY_VARIABLES = VARIABLES

_TIME_UNITS_S = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "M": 30 * 86400,
    "y": 365 * 86400,
}
_TIME_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)")
_TIME_RE = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|M|y)\s*)+")
_SIZE_RE = re.compile(r"(\d+)([kKmMgG]?)")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_VARIABLE_RE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z0-9_]+)\}|(?P<bare>[A-Za-z0-9_]+))")
_NAME_CHAR_RE = re.compile(r"[A-Za-z0-9_]")


def parse_time_s(text: str) -> float | None:
    """nginx time (``60``, ``60s``, ``1m``, ``1h30m``, ``500ms``) in seconds; None if invalid."""
    text = text.strip()
    if text.isdigit():
        return float(text)
    if not _TIME_RE.fullmatch(text):
        return None
    return float(
        sum(int(number) * _TIME_UNITS_S[unit] for number, unit in _TIME_PART_RE.findall(text))
    )


def parse_size_bytes(text: str) -> int | None:
    """nginx size (``1024``, ``8k``, ``10m``, ``1g``) in bytes; None if invalid."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        return None
    return int(match[1]) * _SIZE_UNITS[match[2].lower()]


def translate_variables(value: str, literals: Mapping[str, str]) -> tuple[str, list[str]]:
    """``value`` as a gateway header template, and the nginx variables it cannot express.

    Variables the gateway's templates know stay (``$remote_addr``, ``$host``, ...);
    ``literals`` gives fixed text for others (``$server_port`` -> ``"443"``).
    """
    unknown: list[str] = []
    parts: list[str] = []
    position = 0
    for match in _VARIABLE_RE.finditer(value):
        name = match["braced"] or match["bare"]
        parts.append(value[position : match.start()])
        position = match.end()
        if name in GATEWAY_VARIABLES:
            following = value[position : position + 1]
            braced = bool(following) and _NAME_CHAR_RE.fullmatch(following) is not None
            parts.append(f"${{{name}}}" if braced else f"${name}")
        elif name in literals:
            parts.append(literals[name])
        else:
            unknown.append(f"${name}")
            parts.append(match[0])
    parts.append(value[position:])
    return "".join(parts), unknown
