"""Helpers for the nginx import tests: fixture paths, notes lookup, loadable settings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from gateway.nginx import ImportResult, Note, import_nginx, render_toml
from gateway.settings import Settings, load_settings

CONFIGS = Path(__file__).parent / "configs"
DEBIAN = CONFIGS / "debian"


def translate(name: str, **options: Any) -> ImportResult:
    """Import the fixture ``configs/NAME`` (Debian's with its sysroot)."""
    if name.startswith("debian/"):
        options.setdefault("sysroot", str(DEBIAN))
    return import_nginx(CONFIGS / name, **options)


def cert(name: str) -> str:
    return str(CONFIGS / "certs" / name)


def notes_at(result: ImportResult, file: str, line: int) -> list[Note]:
    """The notes on ``file`` (relative to configs/) at ``line``."""
    return [
        note
        for note in result.notes
        if Path(note.file).resolve() == (CONFIGS / file).resolve() and note.line == line
    ]


def kinds_at(result: ImportResult, file: str, line: int) -> set[str]:
    return {note.kind for note in notes_at(result, file, line)}


def load_translated(result: ImportResult, tmp_path: Path) -> Settings:
    """Write the result as TOML into ``tmp_path`` and read it with ``load_settings``.

    Folders and certificates named in the nginx file belong to the machine nginx ran on:
    they are made in ``tmp_path``.  Pools are left out while the settings have no
    ``upstreams`` table yet (routes using one point at a placeholder URL instead).
    """
    data = copy.deepcopy(result.settings)
    listen = data.get("listen", {})
    for key in ("certfile", "keyfile"):
        if key in listen and not Path(listen[key]).is_file():
            stand_in = tmp_path / "certs" / Path(listen[key]).name
            stand_in.parent.mkdir(exist_ok=True)
            stand_in.write_text("placeholder\n")
            listen[key] = str(stand_in)
    pools = data.get("upstreams", {})
    if "upstreams" not in Settings.model_fields:
        data.pop("upstreams", None)
    for route in data.get("routes", []):
        if "root" in route:
            folder = tmp_path / "www" / route["root"].lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            route["root"] = str(folder)
        if route.get("upstream") in pools and "upstreams" not in Settings.model_fields:
            route["upstream"] = "http://127.0.0.1:9"
    path = tmp_path / "gateway.toml"
    path.write_text(render_toml(ImportResult(data, result.notes, result.source, result.sources)))
    return load_settings(path)
