"""Translation of the fixture configurations: expected settings and notes (file + line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.nginx import (
    APPROXIMATED,
    INFO,
    NOT_NEEDED,
    UNSUPPORTED,
    UnsupportedDirectivesError,
    import_nginx,
)
from tests.nginx.helpers import CONFIGS, cert, kinds_at, notes_at, translate

LISTEN_443 = {
    "host": "0.0.0.0",
    "port": 443,
    "tls": True,
    "certfile": cert("example.com.crt"),
    "keyfile": cert("example.com.key"),
}


def proxy(prefix: str, upstream: str, **extra: object) -> dict[str, object]:
    route: dict[str, object] = {"prefix": prefix, "upstream": upstream, "strip_prefix": False}
    route.update(extra)
    route.setdefault("websocket", False)
    return route


def test_classic_block() -> None:
    result = translate("classic.conf")
    assert result.settings == {
        "listen": {
            "host": "0.0.0.0",
            "port": 443,
            "tls": True,
            "certfile": str(CONFIGS / "algo.crt"),
            "keyfile": str(CONFIGS / "algo.key"),
        },
        "routes": [
            {
                "prefix": "/",
                "upstream": "http://localhost:8080",
                "strip_prefix": False,
                "websocket": True,
            }
        ],
        "headers": {"request_set": {"X-Frame-Options": "SAMEORIGIN"}},
        "timeouts": {"read_s": 86400.0, "websocket_idle_s": 86400.0},
    }
    assert result.unsupported == []
    assert kinds_at(result, "classic.conf", 1) == {NOT_NEEDED}  # the map
    assert kinds_at(result, "classic.conf", 4) == {INFO}  # server_name: default server
    assert kinds_at(result, "classic.conf", 9) == {NOT_NEEDED}  # proxy_http_version 1.1
    assert kinds_at(result, "classic.conf", 10) == {INFO}  # Upgrade: the idiom
    assert kinds_at(result, "classic.conf", 11) == {INFO}  # Connection: the idiom
    for line in (12, 13, 14, 15):  # Host $http_host, X-Real-IP, X-Forwarded-*
        assert kinds_at(result, "classic.conf", line) == {NOT_NEEDED}
    assert result.sources == [f"{CONFIGS / 'classic.conf'}:7: location /"]


def test_debian_default_nginx_conf() -> None:
    result = translate("debian/etc/nginx/nginx.conf")
    assert result.settings == {
        "listen": {"host": "0.0.0.0", "port": 80, "tls": False},
        "routes": [
            {
                "prefix": "/",
                "root": "/var/www/html",
                "index": ["index.html", "index.htm", "index.nginx-debian.html"],
                "strip_prefix": False,
            }
        ],
        "log": {"access_log": True},
    }
    conf = "debian/etc/nginx/nginx.conf"
    expected = {
        1: NOT_NEEDED,  # user
        2: NOT_NEEDED,  # worker_processes
        3: NOT_NEEDED,  # pid
        4: APPROXIMATED,  # error_log
        7: NOT_NEEDED,  # events
        18: NOT_NEEDED,  # sendfile
        19: NOT_NEEDED,  # tcp_nopush
        20: NOT_NEEDED,  # types_hash_max_size
        27: NOT_NEEDED,  # default_type
        33: NOT_NEEDED,  # ssl_protocols: no TLS server
        34: NOT_NEEDED,  # ssl_prefer_server_ciphers
        40: APPROXIMATED,  # access_log
        46: APPROXIMATED,  # gzip on: the gateway does not compress
    }
    for line, kind in expected.items():
        assert kinds_at(result, conf, line) == {kind}, line
    site = "debian/etc/nginx/sites-enabled/default"
    assert kinds_at(result, site, 22) == {INFO}  # listen 80 default_server: plain HTTP
    assert APPROXIMATED in kinds_at(result, site, 23)  # listen [::]:80: one address
    assert kinds_at(result, site, 51) == {NOT_NEEDED}  # try_files $uri $uri/ =404
    assert kinds_at(result, "debian/etc/nginx/mime.types", 2) == {NOT_NEEDED}
    assert kinds_at(result, "debian/etc/nginx/modules-enabled/50-mod-http-echo.conf", 1) == {
        NOT_NEEDED
    }
    assert result.unsupported == []


def test_several_servers_with_server_names() -> None:
    result = translate("multi_server.conf")
    ten_mib = {"max_body_bytes": 10 * 1024 * 1024}
    assert {key: value for key, value in result.settings.items() if key != "certificates"} == {
        "listen": LISTEN_443,
        "routes": [
            # The default server catches every host, as in nginx.
            proxy("/", "http://127.0.0.1:3000", limits=ten_mib),
            # proxy_set_header here replaces the inherited ones: nginx sends its own Host.
            proxy(
                "/api",
                "http://127.0.0.1:4000",
                strip_prefix=True,
                host_header="127.0.0.1:4000",
                headers={"request_set": {"X-Api": "yes"}},
                limits=ten_mib,
            ),
            proxy(
                "/",
                "http://127.0.0.1:5000",
                hosts=["api.example.com"],
                limits={"max_body_bytes": 100 * 1024 * 1024},
            ),
            {
                "prefix": "/assets",
                "hosts": ["static.example.com", "*.static.example.com"],
                "root": "/srv/static",
                "strip_prefix": False,
                "limits": ten_mib,
            },
        ],
    }
    routes = result.settings["routes"]
    assert list(routes[2]) == ["prefix", "hosts", "upstream", "strip_prefix", "websocket", "limits"]
    # api.example.com's own certificate is chosen by SNI, as nginx does.
    assert result.settings["certificates"] == [
        {
            "hosts": ["api.example.com"],
            "certfile": cert("other.crt"),
            "keyfile": cert("other.key"),
        }
    ]
    assert notes_at(result, "multi_server.conf", 31) == []
    assert kinds_at(result, "multi_server.conf", 40) == {APPROXIMATED}  # no location /
    assert kinds_at(result, "multi_server.conf", 49) == {UNSUPPORTED}  # port 8443
    assert kinds_at(result, "multi_server.conf", 15) == {APPROXIMATED}  # http2
    # Everything inside the left-out server is covered by that one note.
    assert notes_at(result, "multi_server.conf", 53) == []


def test_upstream_pools() -> None:
    result = translate("upstreams.conf")
    app_targets: list[dict[str, Any]] = [
        {"url": "http://10.0.0.1:8080", "weight": 3},
        {"url": "http://10.0.0.2:8080"},
        {"url": "http://10.0.0.3:8080"},
    ]
    app: dict[str, Any] = {
        "targets": app_targets,
        "balance": "least_conn",
        "max_fails": 3,
        "fail_timeout_s": 30.0,
        "keepalive": 64,
        "keepalive_expiry_s": 60.0,
    }
    app_v2 = dict(app, targets=[dict(t, url=t["url"] + "/api/v2") for t in app_targets])
    assert result.settings["upstreams"] == {
        "app": app,
        "app_2": app_v2,
        "sticky": {
            "targets": [{"url": "http://app1.internal:9000"}, {"url": "http://app2.internal:9000"}],
            "balance": "ip_hash",
        },
        "sock": {"targets": [{"url": "unix:/run/app.sock"}], "balance": "round_robin"},
        "direct": {"targets": [{"url": "unix:/run/direct.sock"}], "balance": "round_robin"},
        # proxy_ssl_verify off needs a pool setting: a pool of one.
        "10_1_1_1": {
            "targets": [{"url": "https://10.1.1.1:8443"}],
            "balance": "round_robin",
            "verify": False,
        },
    }
    assert result.settings["routes"] == [
        proxy("/", "app"),
        proxy("/v2", "app_2", strip_prefix=True),
        proxy("/session", "sticky", host_header="sticky"),
        proxy("/sock", "sock", host_header="sock"),
        proxy("/direct", "direct", strip_prefix=True, host_header="localhost"),
        proxy("/tls", "10_1_1_1", host_header="10.1.1.1:8443"),
    ]
    assert kinds_at(result, "upstreams.conf", 2) == {APPROXIMATED}  # max_fails differ: took 3
    assert kinds_at(result, "upstreams.conf", 7) == {UNSUPPORTED}  # backup
    assert kinds_at(result, "upstreams.conf", 8) == {INFO}  # down
    assert kinds_at(result, "upstreams.conf", 10) == set()  # keepalive_timeout: translated
    assert kinds_at(result, "upstreams.conf", 24) == {NOT_NEEDED}  # upstream nobody uses
    assert kinds_at(result, "upstreams.conf", 37) == {NOT_NEEDED}  # Connection ""
    assert kinds_at(result, "upstreams.conf", 60) == {INFO}  # proxy_ssl_verify off


def test_static_roots_index_and_alias() -> None:
    result = translate("static.conf")
    index = ["index.html", "index.htm"]
    assert result.settings["routes"] == [
        {"prefix": "/", "root": "/srv/www", "index": index, "strip_prefix": False},
        {
            "prefix": "/images",
            "root": "/srv/images",
            "index": index,
            "strip_prefix": True,
            "headers": {"response_set": {"Cache-Control": "max-age=2592000"}},
        },
        {"prefix": "/downloads", "root": "/srv", "index": index, "strip_prefix": False},
        {"prefix": "/robots.txt", "root": "/srv/meta", "index": index, "strip_prefix": False},
        {"prefix": "/spa", "root": "/srv/www", "index": index, "strip_prefix": False},
        proxy("/api", "http://127.0.0.1:8000", host_header="127.0.0.1:8000"),
    ]
    assert kinds_at(result, "static.conf", 12) == {NOT_NEEDED}  # try_files $uri $uri/ =404
    assert kinds_at(result, "static.conf", 17) == {APPROXIMATED}  # expires
    assert kinds_at(result, "static.conf", 22) == {UNSUPPORTED}  # autoindex
    assert kinds_at(result, "static.conf", 25) == {APPROXIMATED}  # location = /robots.txt
    assert kinds_at(result, "static.conf", 30) == {UNSUPPORTED}  # try_files with a fallback


def test_http_to_https_redirect_server_as_certbot_writes_it() -> None:
    result = translate("redirect.conf")
    assert result.settings == {
        "listen": dict(LISTEN_443, redirect_port=80),
        "routes": [proxy("/", "http://127.0.0.1:8080")],
    }
    # listen [::]:443 ssl ipv6only=on: one address (IPv4 chosen), ipv6only not needed.
    assert kinds_at(result, "redirect.conf", 10) == {APPROXIMATED, NOT_NEEDED}
    assert kinds_at(result, "redirect.conf", 11) == set()  # listen 443 ssl: the listener
    assert kinds_at(result, "redirect.conf", 19) == {APPROXIMATED}  # 301 -> 308
    assert kinds_at(result, "redirect.conf", 18) == {INFO}  # if ($host = ...) dropped
    assert kinds_at(result, "redirect.conf", 29) == {INFO}  # return 404
    assert kinds_at(result, "snippets/ssl-params.conf", 2) == {NOT_NEEDED}
    assert kinds_at(result, "snippets/ssl-params.conf", 7) == {APPROXIMATED}  # ssl_ciphers
    assert result.unsupported == []


def test_scheme_redirect_in_a_server_on_both_ports() -> None:
    result = translate("redirect_scheme.conf")
    assert result.settings["listen"] == dict(
        LISTEN_443, port=8443, redirect_port=8080, public_port=443
    )
    assert result.settings["routes"] == [proxy("/", "http://127.0.0.1:3000")]
    assert kinds_at(result, "redirect_scheme.conf", 10) == {APPROXIMATED}


def test_allow_deny_and_body_sizes() -> None:
    result = translate("access.conf")
    assert "ip" not in result.settings
    assert "limits" not in result.settings
    routes = {route["prefix"]: route for route in result.settings["routes"]}
    assert routes["/"]["ip"] == {"allow": ["10.0.0.0/8", "192.168.1.0/24"]}
    assert routes["/"]["limits"] == {"max_body_bytes": 0}  # 0: no limit
    assert routes["/admin"]["ip"] == {"allow": ["10.1.0.0/16"]}
    assert routes["/admin"]["limits"] == {"max_body_bytes": 1024**3}
    assert "ip" not in routes["/public"]  # allow all: the global (empty) lists
    assert routes["/public"]["limits"] == {"max_body_bytes": 512 * 1024}
    assert routes["/blocked"]["ip"] == {"deny": ["10.0.0.0/8", "2001:db8::/32"]}
    assert routes["/mixed"]["ip"] == {"allow": ["10.0.0.0/8"], "deny": ["10.1.0.0/16"]}
    # nginx lets 10.1.x in (the allow comes first); the gateway's deny wins: noted.
    assert kinds_at(result, "access.conf", 43) == {APPROXIMATED}


def test_locations_the_gateway_cannot_express() -> None:
    result = translate("regex.conf")
    assert result.settings["routes"] == [
        proxy("/", "http://127.0.0.1:8080"),
        {"prefix": "/static", "root": "/srv", "strip_prefix": False},
        proxy("/upload", "http://127.0.0.1:8080"),
    ]
    unsupported = {note.line: note for note in result.unsupported}
    assert set(unsupported) == {12, 16, 21, 29, 33, 34, 38, 42}
    assert "exact location beside the prefix location /" in unsupported[12].reason
    assert "regex" in unsupported[16].reason
    assert unsupported[16].directive == r"location ~ \.php$"
    assert "named locations" in unsupported[29].reason
    assert unsupported[34].directive.startswith("rewrite")
    assert unsupported[38].directive == "return 200 ok"
    assert unsupported[42].directive.startswith("if ($request_method")
    # Directives inside a left-out location are covered by its note.
    assert notes_at(result, "regex.conf", 17) == []


def test_includes_with_globs_and_snippets() -> None:
    result = translate("includes/nginx.conf")
    assert result.settings == {
        "listen": LISTEN_443,
        "routes": [
            proxy("/", "http://127.0.0.1:8080"),
            proxy(
                "/ws",
                "http://127.0.0.1:8080",
                websocket=True,
                timeouts={"read_s": 3600.0, "websocket_idle_s": 3600.0},
            ),
        ],
    }
    assert kinds_at(result, "includes/proxy_params", 30) == {APPROXIMATED}  # Host $host
    assert kinds_at(result, "includes/conf.d/00-map.conf", 1) == {NOT_NEEDED}
    assert kinds_at(result, "includes/conf.d/local/websocket.conf", 3) == {INFO}


def test_time_units_and_per_route_timeouts() -> None:
    result = translate("timeouts.conf")
    common = {"connect_s": 5.0, "write_s": 60.0, "body_s": 30.0}
    routes = result.settings["routes"]
    assert routes[0]["timeouts"] == dict(common, read_s=5400.0, websocket_idle_s=5400.0)
    assert routes[1]["timeouts"] == dict(common, read_s=86400.0, websocket_idle_s=86400.0)
    assert "timeouts" not in result.settings
    assert kinds_at(result, "timeouts.conf", 7) == {NOT_NEEDED}  # keepalive_timeout
    assert kinds_at(result, "timeouts.conf", 8) == {APPROXIMATED}  # send_timeout


def test_request_and_response_headers() -> None:
    result = translate("headers.conf")
    assert result.settings["headers"] == {
        "request_set": {
            "X-Request-ID": "$request_id",
            "X-Original-URI": "$scheme://$host$request_uri",
            "X-Forwarded-Port": "443",
        },
        "request_remove": ["Accept-Encoding"],
        "hsts_max_age_s": 63072000,
        "response_set": {"Content-Security-Policy": "default-src 'self'"},
        "hide_backend": True,
        "response_remove": ["X-Runtime"],
    }
    assert result.settings["forwarding"] == {"rewrite_location": False}
    assert result.settings["routes"] == [
        proxy("/", "http://backend.internal:8080", host_header="backend.internal:8080")
    ]
    assert kinds_at(result, "headers.conf", 8) == {NOT_NEEDED}  # X-Frame-Options: the preset
    assert kinds_at(result, "headers.conf", 11) == {UNSUPPORTED}  # $hostname
    assert kinds_at(result, "headers.conf", 21) == {UNSUPPORTED}  # $ssl_client_cert
    assert "$ssl_client_cert" in notes_at(result, "headers.conf", 21)[0].reason
    assert kinds_at(result, "headers.conf", 20) == {NOT_NEEDED}  # X-Forwarded-Host $host


def test_rate_and_connection_limits_and_basic_auth() -> None:
    result = translate("ratelimit.conf")
    routes = {route["prefix"]: route for route in result.settings["routes"]}
    assert routes["/"]["rate_limit"] == {"max_concurrent_per_ip": 20}
    assert routes["/api"]["rate_limit"] == {
        "rate_per_s": 10.0,
        "burst": 20,
        "max_concurrent_per_ip": 20,
    }
    assert routes["/login"]["rate_limit"] == {
        "rate_per_s": 0.5,
        "burst": 5,
        "max_concurrent_per_ip": 20,
    }
    assert kinds_at(result, "ratelimit.conf", 5) == {UNSUPPORTED}  # keyed by a header
    assert kinds_at(result, "ratelimit.conf", 27) == {UNSUPPORTED}  # auth_basic
    assert "gateway hash-password" in notes_at(result, "ratelimit.conf", 27)[0].reason
    assert "delay" in notes_at(result, "ratelimit.conf", 26)[0].reason  # no nodelay


def test_old_ssl_on_and_protocols() -> None:
    result = translate("ssl_on.conf")
    assert result.settings == {
        "listen": LISTEN_443,
        "routes": [proxy("/app", "http://127.0.0.1:8080", strip_prefix=True)],
    }
    assert kinds_at(result, "ssl_on.conf", 4) == {NOT_NEEDED}
    (protocols,) = notes_at(result, "ssl_on.conf", 6)
    assert protocols.kind == APPROXIMATED
    assert "TLSv1, TLSv1.1 will be refused" in protocols.reason
    assert kinds_at(result, "ssl_on.conf", 9) == {UNSUPPORTED}  # a second certificate


@pytest.mark.parametrize(
    ("location", "proxy_pass", "expected"),
    [
        ("/", "http://b:8080", {"upstream": "http://b:8080", "strip_prefix": False}),
        ("/", "http://b:8080/", {"upstream": "http://b:8080", "strip_prefix": False}),
        ("/", "http://b:8080/v1/", {"upstream": "http://b:8080/v1", "strip_prefix": False}),
        ("/api/", "http://b:8080", {"upstream": "http://b:8080", "strip_prefix": False}),
        ("/api/", "http://b:8080/", {"upstream": "http://b:8080", "strip_prefix": True}),
        ("/api/", "http://b:8080/v1/", {"upstream": "http://b:8080/v1", "strip_prefix": True}),
        ("/api", "http://b:8080/v1", {"upstream": "http://b:8080/v1", "strip_prefix": True}),
        ("= /api", "http://b:8080/x", {"upstream": "http://b:8080/x", "strip_prefix": True}),
        ("^~ /api/", "https://b/", {"upstream": "https://b", "strip_prefix": True}),
    ],
)
def test_proxy_pass_uri_part_decides_prefix_handling(
    tmp_path: Path, location: str, proxy_pass: str, expected: dict[str, object]
) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"server {{ listen 443 ssl;\n location {location} {{ proxy_pass {proxy_pass}; }} }}"
    )
    (route,) = import_nginx(conf).settings["routes"]
    assert {key: route[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("location", "proxy_pass"), [("/api/", "http://b/v1"), ("/api", "http://b/v1/")]
)
def test_proxy_pass_slash_mismatch_is_noted(tmp_path: Path, location: str, proxy_pass: str) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"server {{ listen 443 ssl;\n location {location} {{\n proxy_pass {proxy_pass}; }} }}"
    )
    result = import_nginx(conf)
    assert any(n.line == 3 and n.kind == APPROXIMATED and "joins" in n.reason for n in result.notes)


def test_websocket_only_with_the_idiom(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "server { listen 443 ssl;\n"
        " location /a { proxy_pass http://b; }\n"
        " location /b { proxy_pass http://b; proxy_set_header Upgrade $http_upgrade; }\n"
        " location /c { proxy_pass http://b; proxy_set_header Upgrade $http_upgrade;\n"
        "               proxy_set_header Connection Upgrade; }\n"
        "}\n"
    )
    result = import_nginx(conf)
    assert [r["websocket"] for r in result.settings["routes"]] == [False, False, True]
    (half,) = [n for n in result.notes if n.line == 3 and "Connection upgrade" in n.reason]
    assert half.kind == APPROXIMATED
    assert half.directive == "proxy_set_header Upgrade $http_upgrade"


def test_unknown_directives_are_never_dropped_silently(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "frobnicate on;\n"
        "server {\n listen 443 ssl;\n"
        " more_set_headers 'X: y';\n"
        " custom_block { inner 1; }\n"
        " location / { proxy_pass http://b; weird_thing 1 2; }\n"
        "}\n"
    )
    result = import_nginx(conf)
    unsupported = {(n.line, n.directive.split()[0]) for n in result.unsupported}
    assert unsupported == {
        (1, "frobnicate"),
        (4, "more_set_headers"),
        (5, "custom_block"),
        (6, "weird_thing"),
    }
    assert all(n.file == str(conf) for n in result.notes)
    assert str(result.unsupported[0]) == (
        f"{conf}:1: frobnicate on: unsupported: unknown to the translator; not translated"
    )


def test_strict_raises_on_anything_unsupported() -> None:
    with pytest.raises(UnsupportedDirectivesError) as caught:
        import_nginx(CONFIGS / "regex.conf", strict=True)
    assert len(caught.value.notes) == 8
    assert import_nginx(CONFIGS / "classic.conf", strict=True).settings


def test_server_names_become_host_patterns(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "server { listen 443 ssl default_server; server_name _;\n"
        " location / { proxy_pass http://default; } }\n"
        "server { listen 443 ssl;\n"
        " server_name Example.COM .example.org *.example.net www.example.* ~^(.+)\\.dev$;\n"
        " location / { proxy_pass http://named; } }\n"
        "server { listen 443 ssl; server_name ~^only-regex$;\n"
        " location / { proxy_pass http://lost; } }\n"
    )
    result = import_nginx(conf)
    assert [route.get("hosts", []) for route in result.settings["routes"]] == [
        [],
        ["example.com", "example.org", "*.example.org", "*.example.net"],
    ]
    assert {(n.line, n.kind) for n in result.unsupported} == {(4, UNSUPPORTED), (6, UNSUPPORTED)}
