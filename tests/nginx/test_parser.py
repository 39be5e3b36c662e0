"""The parser: the directive tree, includes, and malformed files with line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.nginx import NginxConfigError, NginxSyntaxError, parse_file, parse_text

CONFIGS = Path(__file__).parent / "configs"


def test_blocks_nest_and_keep_their_positions() -> None:
    tree = parse_text("http {\n  server {\n    listen 443 ssl;\n  }\n}\n", "n.conf")
    (http,) = tree
    (server,) = http.block or ()
    (listen,) = server.block or ()
    assert (http.name, server.name, listen.name, listen.args) == (
        "http", "server", "listen", ("443", "ssl"),
    )  # fmt: skip
    assert (listen.file, listen.line, listen.column) == ("n.conf", 3, 5)
    assert listen.block is None
    assert server.args == ()


def test_map_entries_are_kept_as_directives() -> None:
    (block,) = parse_text("map $http_upgrade $connection_upgrade { default upgrade; '' close; }")
    assert [(d.name, d.args) for d in block.block or ()] == [
        ("default", ("upgrade",)), ("", ("close",)),
    ]  # fmt: skip


def test_a_directive_split_over_lines_is_fine() -> None:
    (server,) = parse_text(
        "server {\n  listen 443\n     ssl;\n  server_name a.example\n  b.example;\n}"
    )
    assert [d.args for d in server.block or ()] == [("443", "ssl"), ("a.example", "b.example")]


def test_unknown_blocks_are_kept_for_the_translator() -> None:
    (server,) = parse_text("server { my_module_block on { a b; } }")
    (custom,) = server.block or ()
    assert custom.name == "my_module_block"
    assert custom.block is not None


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("http {\n  server {\n    listen 443;\n  }\n", 1, 6, "'{' opened here is never closed"),
        ("server { listen 80; }\n}\n", 2, 1, "unexpected '}'"),
        ("server {\n  location / { proxy_pass http://x }\n}", 2, 36, "missing ';' after"),
        ("worker_processes 2", 1, 18, "missing ';' after 'worker_processes 2' (end of file)"),
        (
            "server {\n  listen 443 ssl\n  server_name a.com;\n}",
            2,
            14,
            "missing ';' after 'listen 443 ssl' (before 'server_name' on the next line)",
        ),
        ("http {\n  location / { }\n}", 2, 3, "'location' block is not allowed inside 'http'"),
        ("server { location / { server { } } }", 1, 23, "'server' block is not allowed inside"),
        ("events { http { } }", 1, 10, "'http' block is not allowed inside 'events'"),
        ("server { location /; }", 1, 10, "directive 'location' has no opening '{'"),
        ("map $a $b { x { } }", 1, 15, "no blocks are allowed inside 'map'"),
        ("server { ; }", 1, 10, "unexpected ';'"),
        ('server {\n  return 200 "ok;\n}\n', 2, 14, "unterminated"),
    ],
)
def test_malformed_files_name_line_and_column(
    text: str, line: int, column: int, message: str
) -> None:
    with pytest.raises(NginxSyntaxError) as caught:
        parse_text(text, "bad.conf")
    error = caught.value
    assert (error.file, error.line, error.column) == ("bad.conf", line, column)
    assert message in error.message


def test_a_malformed_included_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "main.conf").write_text("http {\n    include site.conf;\n}\n")
    (tmp_path / "site.conf").write_text("server {\n    listen 80;\n")
    with pytest.raises(NginxSyntaxError) as caught:
        parse_file(tmp_path / "main.conf")
    assert caught.value.file == str(tmp_path / "site.conf")
    assert caught.value.line == 1


def test_includes_globs_and_relative_paths() -> None:
    tree = parse_file(CONFIGS / "includes" / "nginx.conf")
    files = {
        Path(d.file).relative_to(CONFIGS / "includes").as_posix() for t in tree for d in t.walk()
    }
    assert files == {
        "nginx.conf",
        "conf.d/00-map.conf",  # include conf.d/*.conf, in sorted order
        "conf.d/site.conf",
        "snippets/tls.conf",  # relative to nginx.conf's folder (nginx's prefix)
        "proxy_params",
        "conf.d/local/websocket.conf",  # found relative to the including file
    }
    (http,) = [d for d in tree if d.name == "http"]
    assert [d.name for d in http.block or ()] == ["map", "server"]


def test_include_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "main.conf").write_text(
        "http {\n  include nothing/*.conf;\n  include missing.conf;\n}"
    )
    with pytest.raises(NginxConfigError) as caught:
        parse_file(tmp_path / "main.conf")
    assert (caught.value.line, caught.value.column) == (3, 3)
    assert "missing.conf: no such file" in caught.value.message


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("include b.conf;\n")
    (tmp_path / "b.conf").write_text("\ninclude a.conf;\n")
    with pytest.raises(NginxConfigError, match="includes itself") as caught:
        parse_file(tmp_path / "a.conf")
    assert caught.value.file == str(tmp_path / "b.conf")
    assert caught.value.line == 2


def test_sysroot_reads_absolute_includes_below_it() -> None:
    root = CONFIGS / "debian"
    tree = parse_file(root / "etc/nginx/nginx.conf", sysroot=str(root))
    names = {d.name for t in tree for d in t.walk()}
    assert {"load_module", "types", "server", "try_files"} <= names


def test_missing_main_file(tmp_path: Path) -> None:
    with pytest.raises(NginxConfigError, match="cannot read"):
        parse_file(tmp_path / "nope.conf")
