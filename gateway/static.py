"""Static files served by the gateway itself, like nginx ``root html; index index.html``.

URL to file: like nginx ``root``, the request path below the app's mount point (ASGI
``root_path``) is appended to the directory. Behind a route without ``strip_prefix`` the
route prefix stays in that path (``/static/app.css`` -> ``<dir>/static/app.css``, nginx
``root``); with ``strip_prefix`` it is removed (``<dir>/app.css``, like nginx ``alias``).

What a request gets:

- a regular file: 200 with its content type, Content-Length, ETag, Last-Modified and
  ``Accept-Ranges: bytes``; If-None-Match (weak comparison, ``*``) and otherwise
  If-Modified-Since give 304; Range gives 206 (one range, or several as
  ``multipart/byteranges``), an unsatisfiable one 416 with ``Content-Range: bytes */size``,
  a malformed ``bytes=`` one 400, a range unit other than bytes is ignored (200);
  If-Range is honoured. HEAD gives the same headers without the body.
- a directory with a trailing slash: its first existing index file (``index``, in order),
  else 404: there is never a listing.
- a directory without the trailing slash: 301 to the slash form (path-absolute Location,
  query kept), as nginx does.
- a file with a trailing slash (``/a.txt/``), anything missing, unreadable or not a regular
  file (FIFO, device): 404.
- another method: 405 with ``Allow: GET, HEAD``. A WebSocket handshake: 404.

Refused with 404 before the file system is asked: any ``.`` or ``..`` segment (also from
``%2e%2e``), an encoded slash or backslash or NUL in the raw path (``%2f``, ``%5c``,
``%00``), a backslash, and any control character. Symlinks are resolved and the result
must lie inside the directory: a link to a file outside is never served (404); a link
from inside to inside is served like its target, with the content type of the requested
name (the way a site points ``latest.js`` at ``v2.js``). The directory is resolved once
at construction; whoever can write inside it is trusted not to race the check.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway._compat import NotModifiedResponse, StaticFiles
from gateway.responses import send_text

__all__ = ["MEDIA_TYPES", "StaticDirectory", "media_type", "request_segments", "static_app"]

# The web's types, fixed here so that they do not depend on the machine's mime.types
# (nginx ships its own table for the same reason); the rest comes from ``mimetypes``.
MEDIA_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".zip": "application/zip",
    ".gz": "application/gzip",
}
ALLOW = b"GET, HEAD"
_REFUSED_ESCAPES = (b"%2f", b"%5c", b"%00")


def media_type(name: str) -> str:
    """The Content-Type for a file name by its last extension (``text/*`` get a charset later)."""
    extension = os.path.splitext(name)[1].lower()
    found = MEDIA_TYPES.get(extension)
    if found is None:
        # Only the last extension counts: ``x.css.br`` is not text/css without its encoding.
        found = mimetypes.guess_type("file" + extension, strict=False)[0] if extension else None
    return found or "application/octet-stream"


def request_segments(path: str, raw_path: bytes | None = None) -> tuple[str, ...] | None:
    """The path segments below the mount to look up, or None if the request is refused.

    ``path`` is the decoded path below the mount; ``raw_path`` the bytes on the wire.
    Empty segments (``//``) are dropped, as nginx ``merge_slashes`` does.
    """
    if raw_path is not None:
        lowered = raw_path.lower()
        if any(escape in lowered for escape in _REFUSED_ESCAPES):
            return None
    if "\\" in path or not path.isprintable():
        return None
    segments = tuple(segment for segment in path.split("/") if segment)
    if any(segment in (".", "..") for segment in segments):
        return None
    return segments


@dataclass(frozen=True, slots=True)
class _Found:
    """What a lookup found: a file to send (``path`` set), a directory to redirect, or nothing."""

    path: str = ""
    stat_result: os.stat_result | None = None
    name: str = ""
    redirect: bool = False


_NOTHING = _Found()
_REDIRECT = _Found(redirect=True)


class StaticDirectory(StaticFiles):
    """Serves one directory with index files and no listing (see the module docstring).

    Starlette supplies the file response (``FileResponse``: ETag, Last-Modified, ranges)
    and the conditional-request check (``StaticFiles.is_not_modified``); path checks,
    symlink containment against the root resolved once, index files, the slash redirect,
    and errors as the gateway's own plain answers (not exceptions, so no exception
    middleware is needed) are this class's own.
    """

    def __init__(self, directory: str | os.PathLike[str], *, index: Sequence[str]) -> None:
        super().__init__(directory=directory, check_dir=False, follow_symlink=False)
        self.root = os.path.realpath(directory)
        self.index = tuple(index)
        self._inside = self.root if self.root.endswith(os.sep) else self.root + os.sep

    def __repr__(self) -> str:
        return f"StaticDirectory({self.root!r}, index={list(self.index)!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send_text(scope, send, 404)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_text(scope, send, 405, headers=[(b"allow", ALLOW)])
            return
        path = _path_below_mount(scope)
        segments = request_segments(path, scope.get("raw_path"))
        if segments is None:
            await send_text(scope, send, 404)
            return
        found = await anyio.to_thread.run_sync(self._find, segments, path.endswith("/"))
        if found.redirect:
            await send_text(scope, send, 301, headers=[(b"location", _slash_location(scope))])
        elif found.stat_result is None:
            await send_text(scope, send, 404)
        else:
            response, scope = self._file_response(found, scope)
            await response(scope, receive, send)

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        """``path`` (relative) resolved through symlinks, with its stat if inside the root."""
        try:
            full_path = os.path.realpath(os.path.join(self.root, path))
            if full_path != self.root and not full_path.startswith(self._inside):
                return "", None
            return full_path, os.stat(full_path)
        except (OSError, ValueError):
            return "", None

    def _find(self, segments: tuple[str, ...], slash: bool) -> _Found:
        # Runs in a worker thread: every file-system call of a request happens here.
        relative = os.path.join(*segments) if segments else ""
        full_path, stat_result = self.lookup_path(relative)
        if stat_result is None:
            return _NOTHING
        if stat.S_ISREG(stat_result.st_mode):
            if slash and segments:
                return _NOTHING
            return self._readable(full_path, stat_result, segments[-1] if segments else "")
        if not stat.S_ISDIR(stat_result.st_mode):
            return _NOTHING
        if not slash:
            return _REDIRECT
        for name in self.index:
            full_path, stat_result = self.lookup_path(os.path.join(relative, name))
            if stat_result is not None and stat.S_ISREG(stat_result.st_mode):
                return self._readable(full_path, stat_result, name)
        return _NOTHING

    @staticmethod
    def _readable(full_path: str, stat_result: os.stat_result, name: str) -> _Found:
        # Checked before the response starts: a failed open after the headers went out
        # could only cut the connection.
        if not os.access(full_path, os.R_OK):
            return _NOTHING
        return _Found(full_path, stat_result, name)

    def _file_response(self, found: _Found, scope: Scope) -> tuple[Response, Scope]:
        """The response for a found file, and the scope to run it with."""
        assert found.stat_result is not None
        response = FileResponse(
            found.path, stat_result=found.stat_result, media_type=media_type(found.name)
        )
        request_headers = Headers(scope=scope)
        if self.is_not_modified(response.headers, request_headers):
            return NotModifiedResponse(response.headers), scope
        range_header = request_headers.get("range")
        if range_header is not None and range_header.partition("=")[0].strip().lower() != "bytes":
            # RFC 9110 14.2: a range unit the server does not understand MUST be ignored;
            # FileResponse would answer 400.
            headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
            scope = {**scope, "headers": headers}
        return response, scope


def _path_below_mount(scope: Scope) -> str:
    # As Starlette's routing reads it: ASGI paths include root_path when mounted.
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        below = path[len(root_path) :]
        if not below or below.startswith("/"):
            return below
    return path


def _slash_location(scope: Scope) -> bytes:
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is None:
        raw_path = quote(scope["path"]).encode("ascii")
    # One leading slash: ``//evil.example/dir`` must not become a protocol-relative URL.
    location = b"/" + raw_path.lstrip(b"/") + b"/"
    query: bytes = scope.get("query_string", b"")
    return location + b"?" + query if query else location


def static_app(directory: str | Path, *, index: Sequence[str] = ("index.html",)) -> ASGIApp:
    """An ASGI app serving ``directory`` like nginx ``root`` with ``index``; see the module.

    ValueError if the directory does not exist or an index name is not a plain file name.
    """
    if not os.path.isdir(directory):
        raise ValueError(
            f"static directory {str(directory)!r} does not exist or is not a directory"
        )
    names = (index,) if isinstance(index, str) else tuple(index)
    for name in names:
        if request_segments(name) != (name,):
            raise ValueError(f"static index {name!r} must be a plain file name")
    return StaticDirectory(directory, index=names)
