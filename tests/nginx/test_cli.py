"""``gateway import-nginx`` and the settings behind ``gateway run --nginx``."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from gateway.nginx.cli import add_arguments, settings_from_nginx
from gateway.settings import ConfigError
from tests.nginx.helpers import CONFIGS


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gateway")
    add_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["import-nginx", *argv])
    result: int = args.func(args)
    return result


def test_prints_toml_to_stdout_and_notes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    conf = CONFIGS / "classic.conf"
    assert run([str(conf)]) == 0
    out, err = capsys.readouterr()
    assert tomllib.loads(out)["routes"][0]["upstream"] == "http://localhost:8080"
    lines = err.splitlines()
    assert any(line.startswith(f"{conf}:9: proxy_http_version 1.1: not needed: ") for line in lines)
    assert all(line.startswith(f"{conf}:") for line in err.splitlines())


def test_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "gateway.toml"
    assert run([str(CONFIGS / "static.conf"), "-o", str(out_file)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert tomllib.loads(out_file.read_text())["routes"][0]["root"] == "/srv/www"
    assert f"wrote {out_file}" in err


def test_strict_fails_on_unsupported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "gateway.toml"
    assert run([str(CONFIGS / "regex.conf"), "--strict", "-o", str(out_file)]) == 1
    _, err = capsys.readouterr()
    assert "8 directive(s) cannot be translated (--strict)" in err
    assert f"{CONFIGS / 'regex.conf'}:16: location ~ \\.php$: unsupported:" in err
    assert not out_file.exists()
    assert run([str(CONFIGS / "classic.conf"), "--strict"]) == 0


def test_sysroot_option(capsys: pytest.CaptureFixture[str]) -> None:
    root = CONFIGS / "debian"
    assert run([str(root / "etc/nginx/nginx.conf"), "--sysroot", str(root)]) == 0
    assert tomllib.loads(capsys.readouterr().out)["routes"][0]["root"] == "/var/www/html"


def test_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("server {\n    listen 443 ssl;\n")
    with pytest.raises(ConfigError) as caught:
        run([str(conf)])
    assert caught.value.problems == [
        f"{conf}:1:8: '{{' opened here is never closed (end of file in 'server')"
    ]


def test_settings_from_nginx(tmp_path: Path) -> None:
    settings = settings_from_nginx(CONFIGS / "classic.conf", show_notes=False)
    assert settings.routes[0].upstream == "http://localhost:8080"
    assert settings.routes[0].websocket is True
    assert settings.timeouts.read_s == 86400.0
    assert settings.listen.certfile == CONFIGS / "algo.crt"


def test_settings_from_nginx_reports_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_nginx(CONFIGS / "regex.conf", strict=True, show_notes=False)
    assert len(caught.value.problems) == 8
    assert caught.value.problems[0].endswith("(--strict)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "server { listen 443 ssl; ssl_certificate /no/such.crt;\n"
        " ssl_certificate_key /no/such.key; location / { proxy_pass http://b; } }\n"
    )
    with pytest.raises(ConfigError) as caught:
        settings_from_nginx(conf, show_notes=False)
    assert caught.value.problems[0].startswith(f"{conf} (translated): listen.certfile: ")
    conf.write_text("server { listen 443 ssl; location ~ x { proxy_pass http://b; } }\n")
    with pytest.raises(ConfigError, match="no location could be translated"):
        settings_from_nginx(conf, show_notes=False)


def test_settings_from_nginx_prints_unsupported_and_approximated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings_from_nginx(CONFIGS / "ssl_on.conf")
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[2] for line in err] == ["approximated", "unsupported", "unsupported"]


def test_settings_from_nginx_with_upstream_pools() -> None:
    settings = settings_from_nginx(CONFIGS / "upstreams.conf", show_notes=False)
    pools = settings.model_dump()["upstreams"]
    assert pools["app"]["balance"] == "least_conn"
    assert [t["weight"] for t in pools["app"]["targets"]] == [3, 1, 1]
    assert pools["10_1_1_1"]["verify"] is False
    assert [route.upstream for route in settings.routes][:2] == ["app", "app_2"]


def test_the_seed_nginx_conf_without_its_mime_types(capsys: pytest.CaptureFixture[str]) -> None:
    conf = CONFIGS / "seed" / "nginx.conf"
    assert not (conf.parent / "mime.types").exists()
    assert run([str(conf), "--strict"]) == 0
    out, err = capsys.readouterr()
    assert tomllib.loads(out)["routes"][0]["upstream"] == "http://localhost:8080"
    assert (
        f"{conf}:6: include mime.types: not needed: file not found; not needed: the gateway "
        "has its own media types"
    ) in err.splitlines()


def test_every_default_that_nginx_did_not_have_is_noted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    conf = CONFIGS / "seed" / "nginx.conf"
    assert run([str(conf)]) == 0
    out, err = capsys.readouterr()
    differs = [line for line in err.splitlines() if ": differs: " in line]
    assert all(line.startswith(f"{conf}:11: server: differs: ") for line in differs)
    text = "\n".join(differs)
    for setting in (
        'origin.allow = ["same-origin"]',
        "headers.security = false",
        "Strict-Transport-Security",
        "request_id.enabled = false",
        "limits.reject_dot_segments = false",
        "limits.max_body_bytes",
        "websocket.max_message_bytes",
        "forwarding.x_forwarded",
        "admin.enabled = false",
    ):
        assert setting in text, setting
    # proxy_read_timeout 86400 is in the file: no note about nginx's implicit 60 s.
    assert "timeouts.websocket_idle_s" not in text
    # The TOML names them too, so that whoever reads the file sees them.
    assert "# The gateway's defaults that nginx did not have" in out
