"""Where a setting came from, so that a problem names its source: ``FILE:LINE`` or the
``GATEWAY_*`` environment variable that set it.

Pure functions over the settings file's text and the environment's names; the settings
model is only read (its field names, for "did you mean").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["ENV_PREFIX", "env_variable_for", "field_names_at", "line_of", "suggestion"]

ENV_PREFIX = "GATEWAY_"
ENV_DELIMITER = "__"

Location = Sequence[str | int]

_PART = r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'"""
_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(rf"^\s*((?:{_PART})(?:\s*\.\s*(?:{_PART}))*)\s*=")


def _split_key(dotted: str) -> list[str]:
    return [part.strip("\"'") for part in re.findall(_PART, dotted)]


def env_variable_for(location: Location, environ: Mapping[str, str]) -> str | None:
    """The ``GATEWAY_*`` variable that set ``location`` or a table around it, if any.

    ``GATEWAY_LISTEN__PORTT`` sets ``listen.portt``; ``GATEWAY_ROUTES`` sets everything
    under ``routes``.  Names compare case-insensitively, as the settings loader does.
    """
    keys = [str(part).lower() for part in location if isinstance(part, str)]
    best: tuple[int, str] | None = None
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
        if path and keys[: len(path)] == path and (best is None or len(path) > best[0]):
            best = (len(path), name)
    return best[1] if best else None


def line_of(text: str, location: Location) -> int | None:
    """The 1-based line of the TOML ``text`` that sets ``location``, if it can be found.

    Understands ``[table]`` and ``[[array]]`` headers (the n-th ``[[routes]]`` is
    ``routes.n``) and plain or dotted ``key =`` lines; keys inside inline tables are
    found at the line of the inline table.  None where it cannot tell.
    """
    wanted = [str(part) for part in location]
    counts: dict[tuple[str, ...], int] = {}
    table: list[str] = []
    best: tuple[int, int] | None = None  # (matched parts, line)
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header:
            path = tuple(_split_key(header.group(2)))
            if header.group(1) == "[[":
                index = counts.get(path, -1) + 1
                counts[path] = index
                table = [*path, str(index)]
            else:
                table = _with_indices(list(path), counts)
            best = _better(best, _matched(table, wanted), number)
            continue
        key = _KEY.match(line)
        if key:
            best = _better(best, _matched([*table, *_split_key(key.group(1))], wanted), number)
    return best[1] if best and best[0] > 0 else None


def _with_indices(path: list[str], counts: Mapping[tuple[str, ...], int]) -> list[str]:
    """``[routes.headers]`` after the 2nd ``[[routes]]`` is ``routes.1.headers``."""
    for size in range(len(path), 0, -1):
        index = counts.get(tuple(path[:size]))
        if index is not None:
            return [*path[:size], str(index), *path[size:]]
    return path


def _matched(path: Sequence[str], wanted: Sequence[str]) -> int:
    """How many leading parts of ``wanted`` the line at ``path`` sets (0 unless all of it)."""
    if len(path) > len(wanted) or list(wanted[: len(path)]) != list(path):
        return 0
    return len(path)


def _better(best: tuple[int, int] | None, matched: int, line: int) -> tuple[int, int] | None:
    if matched and (best is None or matched > best[0]):
        return (matched, line)
    return best


def field_names_at(model: type[BaseModel], location: Location) -> list[str]:
    """The keys allowed in the table that holds ``location``'s last part."""
    current: Any = model
    for part in location[:-1]:
        current = _optional(current)
        origin, args = get_origin(current), get_args(current)
        if origin in (list, dict) and args:
            current = args[-1]  # ``part`` is an index or a name of the user's choosing
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
    current = _optional(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def suggestion(unknown: str, known: Iterable[str]) -> str:
    """`` (did you mean 'port'?)`` for a near miss, else ``""``."""
    close = difflib.get_close_matches(unknown, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
