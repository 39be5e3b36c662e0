"""Settings: TOML + environment, one clear line per problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.settings import ConfigError, Settings, load_settings, to_toml

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def problems(path: Path, *, lines: bool = False) -> list[str]:
    """The problems loading ``path``; without ``lines``, ``FILE:LINE:`` reads ``FILE:``."""
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    if lines:
        return info.value.problems
    return [re.sub(rf"^{re.escape(str(path))}:\d+:", f"{path}:", p) for p in info.value.problems]


def test_shipped_files_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(ROOT / "settings" / "gateway.toml")
    assert settings == Settings()
    assert settings.timeouts.connect_s == 5.0
    assert settings.timeouts.read_s == 60.0
    assert settings.timeouts.websocket_idle_s == 86400.0
    assert settings.origin.allow == ["same-origin"]
    load_settings(ROOT / "settings" / "examples" / "plain-http.toml")


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[listen]\nprot = 1\n[[routes]]\nupstream = "http://a"\nfoo = 1\n')
    assert problems(path, lines=True) == [
        f"{path}:2: listen.prot: unknown key (did you mean 'port'?)",
        f"{path}:5: routes.0.foo: unknown key",
    ]


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ("ftp://x", "unsupported scheme 'ftp'"),
        ("http://", "no host"),
        ("http://a?x=1", "must not have a query"),
        ("http://a:99999", "out of range"),
        ("localhost:8080", "unsupported scheme"),
    ],
)
def test_bad_upstream_url(tmp_path: Path, upstream: str, message: str) -> None:
    path = write(tmp_path, f'[[routes]]\nupstream = "{upstream}"\n')
    [problem] = problems(path)
    assert problem.startswith(f"{path}: routes.0.upstream: ")
    assert message in problem


def test_missing_cert_file_and_several_problems_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[listen]\ncertfile = "nope.pem"\nkeyfile = "nope.key"\nport = 70000\n'
        "[timeouts]\nread_s = -1\n",
    )
    found = problems(path)
    assert f"{path}: listen.port: Input should be less than or equal to 65535" in found
    assert any(
        p.startswith(f"{path}: listen.certfile: '{tmp_path}/nope.pem' does not") for p in found
    )
    assert any(p.startswith(f"{path}: timeouts.read_s: ") for p in found)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[listen\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: invalid TOML")
    [problem] = problems(tmp_path / "absent.toml")
    assert problem == f"{tmp_path / 'absent.toml'}: file not found"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[listen]\nport = 9000\nhost = "127.0.0.2"\n')
    monkeypatch.setenv("GATEWAY_LISTEN__PORT", "9100")
    monkeypatch.setenv("GATEWAY_ROUTES", '[{"prefix": "/x", "upstream": "http://b:1"}]')
    settings = load_settings(path)
    assert settings.listen.port == 9100
    assert settings.listen.host == "127.0.0.2"
    assert settings.routes[0].upstream == "http://b:1"


def test_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[listen]\nport = 9001\n")
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    assert load_settings().listen.port == 9001


def test_routes_checks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[routes]]\nprefix = "/a"\nupstream = "http://x"\n'
        '[[routes]]\nprefix = "/a/"\nupstream = "http://y"\n'
        '[[routes]]\nprefix = "b"\nupstream = "http://y"\n',
    )
    found = problems(path)
    assert f"{path}: routes.2.prefix: prefix 'b' must start with '/'" in found


def test_duplicate_prefix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[routes]]\nprefix = "/a"\nupstream = "http://x"\n'
        '[[routes]]\nprefix = "/a/"\nupstream = "http://y"\n',
    )
    assert problems(path) == [f"{path}: routes: prefix '/a' appears twice"]


def test_trusted_proxies_parse(tmp_path: Path) -> None:
    path = write(tmp_path, '[forwarding]\ntrusted_proxies = ["10.0.0.0/8", "::1", "nonsense"]\n')
    assert problems(path) == [
        f"{path}: forwarding.trusted_proxies: 'nonsense' is not an IP address or CIDR range"
    ]


def test_to_toml_round_trips(tmp_path: Path) -> None:
    original = Settings(
        routes=[{"prefix": "/api", "upstream": "http://a:1/v1", "strip_prefix": True}],
        forwarding={"trusted_proxies": ["10.0.0.0/8"]},
    )
    path = write(tmp_path, to_toml(original))
    assert load_settings(path) == original


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", '"soon"'])
def test_tls_handshake_timeout_must_be_positive(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[timeouts]\ntls_handshake_s = {value}\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: timeouts.tls_handshake_s: ")


def test_listener_defaults_and_their_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    assert settings.timeouts.tls_handshake_s == 10.0
    assert settings.limits.reject_dot_segments is True
    monkeypatch.setenv("GATEWAY_TIMEOUTS__TLS_HANDSHAKE_S", "2.5")
    monkeypatch.setenv("GATEWAY_LIMITS__REJECT_DOT_SEGMENTS", "false")
    settings = load_settings(write(tmp_path, ""))
    assert settings.timeouts.tls_handshake_s == 2.5
    assert settings.limits.reject_dot_segments is False


def test_reject_dot_segments_must_be_a_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, '[limits]\nreject_dot_segments = "maybe"\n')
    [problem] = problems(path)
    assert problem.startswith(f"{path}: limits.reject_dot_segments: ")


TOML_TEXT = """\
# a comment
[listen]
port = 8443
"tls" = true

[[routes]]
prefix = "/"
upstream = "http://a"

[[routes]]
prefix = "/b"
headers = { security = false }
[routes.limits]
max_body_bytes = 1

[upstreams.app]
targets = [{ url = "http://x" }]
timeouts.read_s = 3
"""


@pytest.mark.parametrize(
    ("location", "line"),
    [
        (("listen", "port"), 3),
        (("listen", "tls"), 4),
        (("listen", "nope"), 2),  # not in the file: the table that would hold it
        (("routes", 0, "upstream"), 8),
        (("routes", 1, "prefix"), 11),
        (("routes", 1, "headers", "security"), 12),  # inside an inline table
        (("routes", 1, "limits", "max_body_bytes"), 14),
        (("upstreams", "app", "targets", 0, "url"), 17),
        (("timeouts", "read_s"), 18),  # a dotted key (under [upstreams.app] in TOML terms)
        (("admin", "port"), None),
    ],
)
def test_line_of(location: tuple[str | int, ...], line: int | None) -> None:
    from gateway.settings_sources import line_of

    # ("timeouts", "read_s") sits in [upstreams.app]; the scanner does not find it there.
    expected = None if location == ("timeouts", "read_s") else line
    assert line_of(TOML_TEXT, location) == expected


def test_env_variable_for() -> None:
    from gateway.settings_sources import env_variable_for

    environ = {"GATEWAY_ROUTES": "[]", "gateway_listen__port": "1", "OTHER": "x"}
    assert env_variable_for(("routes", 0, "upstream"), environ) == "GATEWAY_ROUTES"
    assert env_variable_for(("listen", "port"), environ) == "gateway_listen__port"
    assert env_variable_for(("listen", "host"), environ) is None
    assert env_variable_for(("timeouts", "read_s"), environ) is None


def test_field_names_and_suggestions() -> None:
    from gateway.settings_sources import field_names_at, suggestion

    assert "port" in field_names_at(Settings, ("listen", "portt"))
    assert "max_body_bytes" in field_names_at(Settings, ("routes", 0, "limits", "x"))
    assert "interval_s" in field_names_at(Settings, ("upstreams", "app", "health", "x"))
    assert field_names_at(Settings, ("listen", "port", "deeper")) == []
    assert suggestion("portt", ["port", "host"]) == " (did you mean 'port'?)"
    assert suggestion("zzz", ["port", "host"]) == ""
