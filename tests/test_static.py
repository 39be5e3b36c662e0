"""Static files over real sockets: types, conditional requests, ranges, index, traversal."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.routing import Route, Router
from gateway.static import media_type, request_segments, static_app
from tests.servers import parse_response, plain_config, raw_exchange, run_server

SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT"
BLOB = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable enough


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """``tmp/site`` to serve, with secrets beside it in ``tmp`` and ``tmp/outside``."""
    (tmp_path / "secret").write_bytes(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "hello.txt").write_text("hello world\n")
    (root / "style.css").write_text("body {}")
    (root / "app.js").write_text("export {}")
    (root / "data.json").write_text("{}")
    (root / "pixel.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "module.wasm").write_bytes(b"\x00asm")
    (root / "backup.tar.gz").write_bytes(b"\x1f\x8b")
    (root / "noextension").write_bytes(b"?")
    (root / "blob.bin").write_bytes(BLOB)
    (root / "empty.txt").write_bytes(b"")
    for folder in ("docs", "empty", "evil.example", "a", "site"):
        (root / folder).mkdir()
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / "site" / "page.txt").write_text("below site")
    (root / "link-inside.js").symlink_to("hello.txt")
    (root / "link-outside.txt").symlink_to(outside / "secret.txt")
    (root / "dir-outside").symlink_to(outside)
    (root / "relative-outside").symlink_to("../secret")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture
async def base(site: Path) -> AsyncIterator[str]:
    async with run_server(plain_config(static_app(site))) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def raw_get(
    url: str, target: bytes, method: bytes = b"GET"
) -> tuple[int, dict[str, str], bytes]:
    request = method + b" " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    status, headers, body = parse_response(await raw_exchange(port_of(url), request))
    return status, dict(headers), body


# Pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("index.html", "text/html"),
        ("style.CSS", "text/css"),
        ("app.js", "text/javascript"),
        ("app.mjs", "text/javascript"),
        ("data.json", "application/json"),
        ("module.wasm", "application/wasm"),
        ("font.woff2", "font/woff2"),
        ("image.svg", "image/svg+xml"),
        ("backup.tar.gz", "application/gzip"),
        ("style.css.br", "application/octet-stream"),
        ("noextension", "application/octet-stream"),
        ("video.mp4", "video/mp4"),
    ],
)
def test_media_type(name: str, expected: str) -> None:
    assert media_type(name) == expected


@pytest.mark.parametrize(
    ("path", "raw", "segments"),
    [
        ("/", b"/", ()),
        ("", b"", ()),
        ("/a/b.txt", b"/a/b.txt", ("a", "b.txt")),
        ("//a///b.txt", b"//a///b.txt", ("a", "b.txt")),
        ("/a b", b"/a%20b", ("a b",)),
        ("/...", b"/...", ("...",)),
        ("/..", b"/..", None),
        ("/a/../b", b"/a/../b", None),
        ("/./b", b"/./b", None),
        ("/../b", b"/%2e%2e/b", None),
        ("/a/b", b"/a%2fb", None),
        ("/a/b", b"/a%2Fb", None),
        ("/a\\b", b"/a%5cb", None),
        ("/a\\b", b"/a\\b", None),
        ("/a\x00", b"/a%00", None),
        ("/a\nb", b"/a%0ab", None),
        ("/a\x7fb", b"/a%7fb", None),
    ],
)
def test_request_segments(path: str, raw: bytes, segments: tuple[str, ...] | None) -> None:
    assert request_segments(path, raw) == segments


def test_static_app_validates_its_directory_and_index(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="missing"):
        static_app(missing)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        static_app(str(tmp_path / "file"))
    for bad in ("", "..", "a/index.html", "a\\b", "x\x00"):
        with pytest.raises(ValueError, match="static index"):
            static_app(tmp_path, index=[bad])
    assert static_app(tmp_path, index="index.htm") is not None


# Content types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/hello.txt", "text/plain; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/data.json", "application/json"),
        ("/pixel.png", "image/png"),
        ("/module.wasm", "application/wasm"),
        ("/backup.tar.gz", "application/gzip"),
        ("/noextension", "application/octet-stream"),
    ],
)
async def test_content_types(
    base: str, client: httpx.AsyncClient, site: Path, path: str, content_type: str
) -> None:
    response = await client.get(base + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == (site / path[1:]).read_bytes()
    assert response.headers["content-length"] == str(len(response.content))
    assert "content-encoding" not in response.headers


# Conditional requests ----------------------------------------------------------------------


async def test_etag_and_if_none_match(base: str, client: httpx.AsyncClient) -> None:
    first = await client.get(f"{base}/hello.txt")
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    again = await client.get(f"{base}/hello.txt", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    for header in (f'"other", {etag}', f"W/{etag}", "*"):
        response = await client.get(f"{base}/hello.txt", headers={"If-None-Match": header})
        assert response.status_code == 304, header
    other = await client.get(f"{base}/hello.txt", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200
    assert other.content == b"hello world\n"


async def test_last_modified_and_if_modified_since(
    base: str, client: httpx.AsyncClient, site: Path
) -> None:
    first = await client.get(f"{base}/hello.txt")
    last_modified = first.headers["last-modified"]
    mtime = (site / "hello.txt").stat().st_mtime
    assert last_modified == formatdate(mtime, usegmt=True)
    same = await client.get(f"{base}/hello.txt", headers={"If-Modified-Since": last_modified})
    assert same.status_code == 304
    assert same.content == b""
    older = formatdate(mtime - 3600, usegmt=True)
    stale = await client.get(f"{base}/hello.txt", headers={"If-Modified-Since": older})
    assert stale.status_code == 200
    # If-None-Match decides when both are present (RFC 9110 13.2.2).
    both = {"If-None-Match": '"other"', "If-Modified-Since": last_modified}
    assert (await client.get(f"{base}/hello.txt", headers=both)).status_code == 200


async def test_changed_file_gets_new_validators(
    base: str, client: httpx.AsyncClient, site: Path
) -> None:
    first = await client.get(f"{base}/hello.txt")
    (site / "hello.txt").write_text("changed content\n")
    os.utime(site / "hello.txt", (1_000_000_000, 1_000_000_000))
    response = await client.get(
        f"{base}/hello.txt", headers={"If-None-Match": first.headers["etag"]}
    )
    assert response.status_code == 200
    assert response.content == b"changed content\n"
    assert response.headers["etag"] != first.headers["etag"]


# Ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=1000-", 1000, 1023),
        ("bytes=-5", 1019, 1023),
        ("bytes=0-5000", 0, 1023),
    ],
)
async def test_single_range(
    base: str, client: httpx.AsyncClient, header: str, start: int, end: int
) -> None:
    response = await client.get(f"{base}/blob.bin", headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{end}/1024"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.content == BLOB[start : end + 1]


async def test_ranges_are_advertised(base: str, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{base}/blob.bin")
    assert response.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("header", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
async def test_unsatisfiable_range_gets_416(
    base: str, client: httpx.AsyncClient, header: str
) -> None:
    response = await client.get(f"{base}/blob.bin", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */1024"
    assert BLOB[:16] not in response.content


async def test_several_ranges_give_multipart_byteranges(
    base: str, client: httpx.AsyncClient
) -> None:
    response = await client.get(f"{base}/blob.bin", headers={"Range": "bytes=0-1,100-103"})
    assert response.status_code == 206
    assert response.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert b"Content-Range: bytes 0-1/1024" in response.content
    assert BLOB[100:104] in response.content
    assert response.headers["content-length"] == str(len(response.content))


async def test_unknown_range_unit_is_ignored(base: str, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{base}/blob.bin", headers={"Range": "items=0-1"})
    assert response.status_code == 200
    assert response.content == BLOB


async def test_if_range(base: str, client: httpx.AsyncClient) -> None:
    etag = (await client.get(f"{base}/blob.bin")).headers["etag"]
    fresh = await client.get(f"{base}/blob.bin", headers={"Range": "bytes=0-3", "If-Range": etag})
    assert fresh.status_code == 206
    assert fresh.content == BLOB[:4]
    stale = await client.get(
        f"{base}/blob.bin", headers={"Range": "bytes=0-3", "If-Range": '"old"'}
    )
    assert stale.status_code == 200
    assert stale.content == BLOB


# Methods -----------------------------------------------------------------------------------


async def test_head_has_headers_without_body(base: str, site: Path) -> None:
    status, headers, body = await raw_get(base, b"/hello.txt", b"HEAD")
    assert status == 200
    assert headers["content-length"] == "12"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert "etag" in headers
    assert body == b""
    status, headers, body = await raw_get(base, b"/", b"HEAD")
    assert status == 200
    assert headers["content-length"] == str(len("<h1>home</h1>"))
    assert body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_get_405_with_allow(
    base: str, client: httpx.AsyncClient, method: str
) -> None:
    response = await client.request(method, f"{base}/hello.txt")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert b"hello" not in response.content


async def test_websocket_handshake_gets_404(base: str) -> None:
    request = (
        b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    status, _, body = parse_response(await raw_exchange(port_of(base), request))
    assert status == 404
    assert b"hello" not in body


# Index, listing, redirects -----------------------------------------------------------------


async def test_index_files(base: str, client: httpx.AsyncClient) -> None:
    home = await client.get(f"{base}/")
    assert home.status_code == 200
    assert home.text == "<h1>home</h1>"
    assert home.headers["content-type"] == "text/html; charset=utf-8"
    docs = await client.get(f"{base}/docs/")
    assert docs.text == "<h1>docs</h1>"


async def test_index_names_are_tried_in_order(site: Path, client: httpx.AsyncClient) -> None:
    (site / "docs" / "index.htm").write_text("htm first")
    app = static_app(site, index=["missing.html", "index.htm", "index.html"])
    async with run_server(plain_config(app)) as port:
        docs = await client.get(f"http://127.0.0.1:{port}/docs/")
        home = await client.get(f"http://127.0.0.1:{port}/")
    assert docs.text == "htm first"
    assert home.text == "<h1>home</h1>"


async def test_no_directory_listing(base: str, client: httpx.AsyncClient, site: Path) -> None:
    response = await client.get(f"{base}/empty/")
    assert response.status_code == 404
    app = static_app(site, index=())
    async with run_server(plain_config(app)) as port:
        root = await client.get(f"http://127.0.0.1:{port}/")
    assert root.status_code == 404
    assert b"hello.txt" not in root.content


@pytest.mark.parametrize(
    ("target", "location"),
    [
        (b"/docs", "/docs/"),
        (b"/docs?x=1&y=%20", "/docs/?x=1&y=%20"),
        (b"/empty", "/empty/"),
        (b"//evil.example", "/evil.example/"),
        (b"/evil.example", "/evil.example/"),
    ],
)
async def test_directory_without_slash_redirects(base: str, target: bytes, location: str) -> None:
    status, headers, body = await raw_get(base, target)
    assert status == 301
    assert headers["location"] == location
    assert b"docs" not in body


async def test_file_with_trailing_slash_is_404(base: str, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{base}/hello.txt/")).status_code == 404


async def test_missing_fifo_and_empty(base: str, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{base}/nothing.txt")).status_code == 404
    assert (await client.get(f"{base}/fifo")).status_code == 404
    empty = await client.get(f"{base}/empty.txt")
    assert empty.status_code == 200
    assert empty.content == b""


async def test_unreadable_file_is_404(
    base: str, client: httpx.AsyncClient, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (site / "hello.txt").chmod(0)
    real_access = os.access
    if os.geteuid() == 0:
        # root reads every file; make the permission bits count as for any other user.
        def access(path: object, mode: int, **kwargs: object) -> bool:
            if str(path).endswith("hello.txt") and mode & os.R_OK:
                return False
            return real_access(path, mode, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "access", access)
    assert (await client.get(f"{base}/hello.txt")).status_code == 404


# Traversal ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/../etc/passwd",
        b"/../../../../../../etc/passwd",
        b"/../secret",
        b"/%2e%2e/%2e%2e/etc/passwd",
        b"/%2e%2e/secret",
        b"/%2E%2E/secret",
        b"/.%2e/secret",
        b"/..%2fsecret",
        b"/..%2Fsecret",
        b"/docs/..%2f..%2fsecret",
        b"/a/..%5c..%5csecret",
        b"/..\\secret",
        b"/a/..\\..\\secret",
        b"/%00",
        b"/hello.txt%00.png",
        b"/%2e%2e%00/secret",
        b"/docs/../hello.txt",
        b"/./hello.txt",
        b"/%2e/hello.txt",
        b"/%252e%252e/secret",
        b"/link-outside.txt",
        b"/dir-outside/secret.txt",
        b"/dir-outside/",
        b"/relative-outside",
        b"/etc/passwd",
    ],
)
async def test_traversal_is_refused(base: str, target: bytes) -> None:
    status, _, body = await raw_get(base, target)
    assert status in (400, 404), target
    assert SECRET not in body
    assert b"root:" not in body
    assert b"hello world" not in body


async def test_symlink_inside_the_root_is_served_like_its_target(
    base: str, client: httpx.AsyncClient
) -> None:
    response = await client.get(f"{base}/link-inside.js")
    assert response.status_code == 200
    assert response.content == b"hello world\n"
    # The requested name decides the type, as nginx does.
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"


async def test_symlinked_root_is_served(site: Path, client: httpx.AsyncClient) -> None:
    link = site.parent / "current"
    link.symlink_to(site)
    async with run_server(plain_config(static_app(link))) as port:
        inside = await client.get(f"http://127.0.0.1:{port}/hello.txt")
        outside = await client.get(f"http://127.0.0.1:{port}/link-outside.txt")
    assert inside.content == b"hello world\n"
    assert outside.status_code == 404


# Mounted -------------------------------------------------------------------------------------


@pytest.fixture
async def mounted(site: Path) -> AsyncIterator[str]:
    router = Router(
        [
            Route("/assets", static_app(site), None, strip_prefix=True),
            Route("/site", static_app(site), None),
        ]
    )
    async with run_server(plain_config(router)) as port:
        yield f"http://127.0.0.1:{port}"


async def test_mounted_with_strip_prefix_like_alias(
    mounted: str, client: httpx.AsyncClient
) -> None:
    assert (await client.get(f"{mounted}/assets/hello.txt")).content == b"hello world\n"
    assert (await client.get(f"{mounted}/assets/")).text == "<h1>home</h1>"
    assert (await client.get(f"{mounted}/assets/docs/")).text == "<h1>docs</h1>"
    assert (await client.get(f"{mounted}/assetsx/hello.txt")).status_code == 404


async def test_mounted_without_strip_prefix_like_root(
    mounted: str, client: httpx.AsyncClient
) -> None:
    # Like nginx ``root``: /site/page.txt is <dir>/site/page.txt.
    assert (await client.get(f"{mounted}/site/page.txt")).content == b"below site"
    assert (await client.get(f"{mounted}/site/hello.txt")).status_code == 404


@pytest.mark.parametrize(
    ("target", "location"),
    [
        (b"/assets", "/assets/"),
        (b"/assets/docs", "/assets/docs/"),
        (b"/assets/docs?q=1", "/assets/docs/?q=1"),
        (b"/site", "/site/"),
    ],
)
async def test_mounted_redirects_keep_the_prefix(
    mounted: str, target: bytes, location: str
) -> None:
    status, headers, _ = await raw_get(mounted, target)
    assert status == 301
    assert headers["location"] == location


@pytest.mark.parametrize(
    "target",
    [
        b"/assets/../secret",
        b"/assets/%2e%2e/secret",
        b"/assets/..%2fsecret",
        b"/assets/%2e%2e/outside/secret.txt",
        b"/assets/link-outside.txt",
        b"/site/../secret",
        b"/site/%2e%2e/%2e%2e/secret",
    ],
)
async def test_mounted_traversal_is_refused(mounted: str, target: bytes) -> None:
    status, _, body = await raw_get(mounted, target)
    assert status in (400, 404), target
    assert SECRET not in body


async def test_mounted_in_a_starlette_app(site: Path, client: httpx.AsyncClient) -> None:
    app = Starlette(routes=[Mount("/static", app=static_app(site))])
    async with run_server(plain_config(app)) as port:
        base = f"http://127.0.0.1:{port}/static"
        assert (await client.get(f"{base}/hello.txt")).content == b"hello world\n"
        redirect = await client.get(f"{base}/docs")
        assert redirect.status_code == 301
        assert redirect.headers["location"] == "/static/docs/"
        assert (await client.get(f"{base}/docs/")).text == "<h1>docs</h1>"
        ranged = await client.get(f"{base}/blob.bin", headers={"Range": "bytes=2-3"})
        assert ranged.content == BLOB[2:4]
