"""Bring your nginx.conf: translate nginx's reverse-proxy configuration into gateway settings.

::

    from gateway.nginx import import_nginx, render_toml

    result = import_nginx("/etc/nginx/nginx.conf")
    print(render_toml(result))          # TOML for `gateway run -c`, notes as comments
    for note in result.notes:           # FILE:LINE: directive: kind: reason
        print(note)

The pieces: `lexer` (nginx's tokenizer), `parser` (directive tree, ``include``), and the
translation (`translate`, `servers`, `routes`, `headers`, `access`, `upstreams`), which is
pure: a directive tree in, a settings dict and notes out.  Every directive is either
translated or named in a `Note` (unsupported, approximated, not needed, info); with
``strict=True`` any unsupported one is an error.  The command line is in `cli`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from gateway.nginx.lexer import NginxConfigError, NginxSyntaxError
from gateway.nginx.notes import (
    APPROXIMATED,
    DIFFERS,
    INFO,
    KINDS,
    NOT_NEEDED,
    UNSUPPORTED,
    Note,
)
from gateway.nginx.parser import Directive, parse_file, parse_text
from gateway.nginx.render import toml_document
from gateway.nginx.translate import translate

__all__ = [
    "APPROXIMATED",
    "DIFFERS",
    "INFO",
    "KINDS",
    "NOT_NEEDED",
    "UNSUPPORTED",
    "Directive",
    "ImportResult",
    "NginxConfigError",
    "NginxSyntaxError",
    "Note",
    "UnsupportedDirectivesError",
    "import_nginx",
    "parse_file",
    "parse_text",
    "render_toml",
]


@dataclass
class ImportResult:
    """Settings as a dict (the shape of the TOML file) and the notes on the nginx file."""

    settings: dict[str, Any]
    notes: list[Note]
    # The nginx file translated, and for each route the location it came from.
    source: str = ""
    sources: list[str] = field(default_factory=list)

    @property
    def unsupported(self) -> list[Note]:
        """The notes on what nginx does and the translated settings do not."""
        return [note for note in self.notes if note.kind == UNSUPPORTED]


class UnsupportedDirectivesError(ValueError):
    """``strict=True`` and some directives could not be translated; ``notes`` lists them."""

    def __init__(self, notes: list[Note]) -> None:
        super().__init__("\n".join(str(note) for note in notes))
        self.notes = notes


def import_nginx(
    path: str | os.PathLike[str], *, strict: bool = False, sysroot: str | None = None
) -> ImportResult:
    """Translate the nginx configuration at ``path`` (includes followed).

    ``sysroot`` reads absolute include paths below that folder (a copy of another
    machine's files); paths written into the settings stay as nginx would see them.
    Raises NginxConfigError (NginxSyntaxError for malformed text) naming file, line and
    column, and UnsupportedDirectivesError when ``strict`` and anything is unsupported.
    """
    directives = parse_file(path, sysroot=sysroot)
    conf_dir = os.path.dirname(os.path.abspath(path))
    if sysroot is not None:
        relative = os.path.relpath(conf_dir, os.path.abspath(sysroot))
        conf_dir = str(PurePosixPath("/") / PurePosixPath(*relative.split(os.sep)))
    translation = translate(directives, conf_dir=conf_dir)
    result = ImportResult(
        translation.settings, translation.notes, os.fspath(path), translation.sources
    )
    if strict and result.unsupported:
        raise UnsupportedDirectivesError(result.unsupported)
    return result


def render_toml(result: ImportResult) -> str:
    """The settings as a TOML file for ``gateway run -c``, the notes as comments on top."""
    return toml_document(
        result.settings, result.notes, source=result.source, sources=result.sources
    )
