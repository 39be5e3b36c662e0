"""The generated TOML: reads back as the same settings and loads with load_settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.nginx import ImportResult, Note, render_toml
from gateway.nginx.render import toml_value
from tests.nginx.helpers import CONFIGS, load_translated, translate

FIXTURE_PATHS = [*CONFIGS.glob("*.conf"), CONFIGS / "includes/nginx.conf"]
FIXTURES = [
    *sorted(str(path.relative_to(CONFIGS)) for path in FIXTURE_PATHS),
    "debian/etc/nginx/nginx.conf",
]


@pytest.mark.parametrize("name", FIXTURES)
def test_every_note_and_route_source_is_written(name: str) -> None:
    result = translate(name)
    text = render_toml(result)
    comments = [line for line in text.splitlines() if line.startswith("#")]
    # Every note, as "#   FILE:LINE: directive: reason", under its kind's heading...
    for note in result.notes:
        assert f"#   {note.file}:{note.line}: {note.directive}: {note.reason}" in comments
    # ... and each route led by the nginx location it came from.
    for source in result.sources:
        if source:
            assert f"# {source}\n[[routes]]" in text
    assert text.startswith("# Translated from the nginx configuration ")


@pytest.mark.parametrize("name", FIXTURES)
def test_toml_reads_back_as_the_settings(name: str) -> None:
    result = translate(name)
    assert tomllib.loads(render_toml(result)) == result.settings


@pytest.mark.parametrize("name", FIXTURES)
def test_toml_loads_with_load_settings(name: str, tmp_path: Path) -> None:
    result = translate(name)
    settings = load_translated(result, tmp_path)
    assert len(settings.routes) == len(result.settings["routes"])
    assert settings.listen.port == result.settings["listen"]["port"]
    assert settings.listen.tls == result.settings["listen"]["tls"]


def test_notes_are_comments_grouped_by_kind() -> None:
    text = render_toml(translate("regex.conf"))
    head = text.split("\n[listen]")[0]
    assert all(line.startswith("#") for line in head.splitlines() if line)
    assert "# Not translated (nginx does this, the gateway will not):" in head
    assert r"regex.conf:16: location ~ \.php$: regex locations are not supported" in head
    assert head.index("Not translated") < head.index("How it was translated")


def test_route_tables_and_their_sections() -> None:
    text = render_toml(translate("multi_server.conf"))
    assert '[[routes]]\nprefix = "/api"' in text
    assert '[routes.headers]\nrequest_set = { X-Api = "yes" }' in text
    assert "# " + str(CONFIGS / "multi_server.conf") + ":22: location /api/\n[[routes]]" in text


def test_pools_are_tables_with_inline_targets() -> None:
    text = render_toml(translate("upstreams.conf"))
    assert (
        '[upstreams.app]\ntargets = [{ url = "http://10.0.0.1:8080", weight = 3 }, '
        '{ url = "http://10.0.0.2:8080" }, { url = "http://10.0.0.3:8080" }]\n'
        'balance = "least_conn"'
    ) in text


def test_strings_are_escaped_for_toml() -> None:
    value = 'a "quoted" \\ back\tslash\x01\x7f é'
    assert tomllib.loads(f"x = {toml_value(value)}")["x"] == value
    assert tomllib.loads(f"x = {toml_value({'X-Odd Name': ['a', 1, 2.5, True]})}")["x"] == {
        "X-Odd Name": ["a", 1, 2.5, True]
    }


def test_render_without_notes_or_sources() -> None:
    result = ImportResult({"listen": {"port": 8443}}, [Note("f", 1, "x", "y")], "f")
    assert tomllib.loads(render_toml(result)) == {"listen": {"port": 8443}}
