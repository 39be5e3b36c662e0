"""``gateway import-nginx FILE`` and the settings behind ``gateway run --nginx FILE``.

``gateway.cli`` hooks these up: `add_arguments` registers the ``import-nginx`` command,
`settings_from_nginx` gives ``run --nginx`` its settings.  Problems are raised as
``gateway.settings.ConfigError`` so that ``gateway.cli.main`` prints them like any other
configuration error (one ``gateway: ...`` line each, exit status 1).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from gateway.nginx import (
    APPROXIMATED,
    UNSUPPORTED,
    ImportResult,
    NginxConfigError,
    Note,
    import_nginx,
    render_toml,
)
from gateway.settings import ConfigError, Settings

__all__ = ["add_arguments", "cmd_import_nginx", "print_notes", "settings_from_nginx"]


def add_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``import-nginx`` on ``subparsers`` (from ``add_subparsers()``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "import-nginx",
        help="translate an nginx configuration into gateway settings (TOML)",
        description=(
            "Translate nginx's reverse-proxy configuration into gateway settings. The TOML "
            "goes to stdout (or -o), one note per directive that was not translated one to "
            "one goes to stderr as FILE:LINE: directive: kind: reason."
        ),
    )
    parser.add_argument("file", help="nginx configuration file, e.g. /etc/nginx/nginx.conf")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit status 1, no output) if any directive cannot be translated",
    )
    parser.add_argument("-o", "--output", help="write the TOML to this file instead of stdout")
    parser.add_argument(
        "--sysroot",
        help="read absolute include paths below this folder (a copy of another machine's /etc)",
    )
    parser.set_defaults(func=cmd_import_nginx)
    return parser


def cmd_import_nginx(args: argparse.Namespace) -> int:
    """Print (or write) the translated TOML, notes to stderr; 1 if --strict finds unsupported."""
    result = _import(args.file, getattr(args, "sysroot", None))
    print_notes(result.notes, sys.stderr)
    unsupported = result.unsupported
    if args.strict and unsupported:
        print(
            f"gateway: {args.file}: {len(unsupported)} directive(s) cannot be translated "
            "(--strict); nothing written",
            file=sys.stderr,
        )
        return 1
    text = render_toml(result)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"gateway: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def settings_from_nginx(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    sysroot: str | None = None,
    show_notes: bool = True,
) -> Settings:
    """Validated settings translated from the nginx file at ``path``, for ``run --nginx``.

    Unsupported and approximated notes are printed to stderr unless ``show_notes`` is false.
    Raises ConfigError: unreadable or malformed file, anything unsupported with
    ``strict``, or settings the gateway refuses (a missing certificate, ...).
    """
    result = _import(path, sysroot)
    if show_notes:
        print_notes([n for n in result.notes if n.kind in (UNSUPPORTED, APPROXIMATED)], sys.stderr)
    where = os.fspath(path)
    if strict and result.unsupported:
        raise ConfigError([f"{note} (--strict)" for note in result.unsupported])
    if "routes" not in result.settings:
        raise ConfigError([f"{where}: no location could be translated into a route"])
    try:
        return Settings(**copy.deepcopy(result.settings))
    except ValidationError as exc:
        raise ConfigError(_describe(f"{where} (translated)", exc)) from None


def print_notes(notes: list[Note], stream: TextIO) -> None:
    """One line per note: ``FILE:LINE: directive: kind: reason``."""
    for note in notes:
        print(note, file=stream)


def _import(path: str | os.PathLike[str], sysroot: str | None) -> ImportResult:
    try:
        return import_nginx(path, sysroot=sysroot)
    except NginxConfigError as exc:
        raise ConfigError([str(exc)]) from None


def _describe(where: str, exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        problems.append(f"{where}: {key}: {message.removeprefix('Value error, ')}")
    return problems
