"""Translated settings -> TOML text, with the notes as comments at the top."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from gateway.nginx.notes import APPROXIMATED, DIFFERS, INFO, NOT_NEEDED, UNSUPPORTED, Note

__all__ = ["toml_document", "toml_value"]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_KIND_TITLES = {
    UNSUPPORTED: "Not translated (nginx does this, the gateway will not)",
    APPROXIMATED: "Translated with a difference",
    INFO: "How it was translated",
    DIFFERS: "The gateway's defaults that nginx did not have (change them here if unwanted)",
    NOT_NEEDED: "Not needed in the gateway",
}


def toml_document(
    settings: dict[str, Any], notes: Sequence[Note], *, source: str, sources: Sequence[str] = ()
) -> str:
    """TOML that ``load_settings`` reads back as ``settings``, led by the notes as comments."""
    lines = [
        f"# Translated from the nginx configuration {source} by `gateway import-nginx`.",
        "# Check it with `gateway check -c THIS_FILE`.",
    ]
    for kind in (UNSUPPORTED, APPROXIMATED, DIFFERS, INFO, NOT_NEEDED):
        selected = [note for note in notes if note.kind == kind]
        if not selected:
            continue
        lines += ["#", f"# {_KIND_TITLES[kind]}:"]
        lines += [
            f"#   {note.file}:{note.line}: {note.directive}: {note.reason}" for note in selected
        ]
    scalars = {key: value for key, value in settings.items() if not _is_table(key, value)}
    if scalars:
        lines += ["", *_pairs(scalars)]
    for key, value in settings.items():
        if key in scalars:
            continue
        if key == "routes":
            for index, route in enumerate(value):
                lines.append("")
                if index < len(sources) and sources[index]:
                    lines.append(f"# {sources[index]}")
                lines += ["[[routes]]", *_pairs(route)]
                for name, section in route.items():
                    if isinstance(section, dict) and _is_section(name):
                        lines += [f"[routes.{_key(name)}]", *_pairs(section)]
        elif key == "upstreams":
            for name, pool in value.items():
                lines += ["", f"[upstreams.{_key(name)}]", *_pairs(pool)]
        else:
            lines += ["", f"[{_key(key)}]", *_pairs(value)]
    return "\n".join(lines) + "\n"


def _is_table(key: str, value: Any) -> bool:
    return isinstance(value, dict) or (key == "routes" and isinstance(value, list))


def _pairs(table: dict[str, Any]) -> list[str]:
    return [
        f"{_key(key)} = {toml_value(value)}"
        for key, value in table.items()
        if not isinstance(value, dict) or not _is_section(key)
    ]


def _is_section(key: str) -> bool:
    # Route sections are written as [routes.NAME] tables, other dicts inline.
    return key in ("headers", "origin", "ip", "rate_limit", "auth", "timeouts", "limits")


def _key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else _string(key)


def toml_value(value: Any) -> str:
    """One TOML value: string, integer, float, boolean, array or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
