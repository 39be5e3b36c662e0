"""Pure rules for request paths that backends read in other ways than the router does.

The router matches the percent-decoded path as it is. A backend may normalise it
first - resolve dot segments, cut ``;`` parameters (Tomcat, Jetty), treat ``\\`` as ``/``
(Windows, some Node frameworks), trim trailing dots or spaces (IIS), fold case (Express
by default), map fullwidth letters to ASCII (NFKC) - and reach a path that a stricter
route guards: ``/admin;x/secret`` routed to ``/`` is ``/admin/secret`` to Tomcat.
Browsers and curl never send such paths, so refusing them (400) costs no real client.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote_to_bytes

__all__ = ["ambiguous_path", "has_dot_segment"]

# What may follow "." or ".." and still make a dot segment for some backend.
_DOT_SEGMENT_TAIL = b" \t\x00:"


def has_dot_segment(raw_path: bytes) -> bool:
    """True if ``raw_path`` has a ``.`` or ``..`` segment once percent-decoded.

    Segments are separated by ``/`` and ``\\`` (some backends treat a backslash as one),
    literal or encoded (``%2F``, ``%5C``); ``%2e`` is a dot in any case. A segment is
    judged by its part before ``;`` (``..;x`` is ``..`` to Tomcat and Jetty) and without
    trailing spaces, tabs, NULs or colons (``..%00``, ``..%20``, ``..:``). Decoded once,
    as the router decodes: ``%252e`` is the ordinary segment ``%2e``.

    ``/a/../b``, ``/a/%2E%2e/b``, ``/a/.%2e``, ``/a%2F..%2Fb``, ``/a\\..\\b``, ``/./a``,
    ``/..;/a``, ``/..%00/a`` -> True; ``/a/b.txt``, ``/.well-known/x``, ``/...``,
    ``/a..b`` -> False.
    """
    if b"%" in raw_path:
        path = unquote_to_bytes(raw_path)
    elif b"." in raw_path:
        path = raw_path
    else:
        return False
    if b"\\" in path:
        path = path.replace(b"\\", b"/")
    # Most paths with a dot have it inside a name (app.js): no segment starts with one.
    if b"/." not in path and not path.startswith(b"."):
        return False
    for segment in path.split(b"/"):
        if segment[:1] == b"." and segment.partition(b";")[0].rstrip(_DOT_SEGMENT_TAIL) in (
            b".",
            b"..",
        ):
            return True
    return False


def ambiguous_path(raw_path: bytes) -> str | None:
    """Why ``raw_path`` may mean another path to a backend than to the router, or None.

    Refused: ``;`` parameters (also ``%3b``), backslashes (also ``%5c``), encoded control
    characters (``%00``, ``%09``...), a segment ending in whitespace or a dot
    (``/admin%20/``, ``/admin./``), bytes that are not UTF-8 (overlong ``%c0%ae``), and
    characters that Unicode normalisation (NFKC) turns into others (fullwidth letters
    ``%ef%bd%81`` or dots ``%ef%bc%8e``). Dot segments are ``has_dot_segment``'s.
    """
    # The common path: plain ASCII without any of the characters the rules look at.
    if (
        b"%" not in raw_path
        and b";" not in raw_path
        and b"\\" not in raw_path
        and b"./" not in raw_path
        and not raw_path.endswith(b".")
        and raw_path.isascii()
    ):
        return None
    if b";" in raw_path:
        return "';' parameters in the path"
    path = unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path
    if b";" in path:
        return "an encoded ';' in the path"
    if b"\\" in path:
        return "a backslash in the path"
    if any(byte < 0x20 or byte == 0x7F for byte in path):
        return "an encoded control character in the path"
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return "a path that is not UTF-8 (overlong or invalid sequences)"
    if not text.isascii() and unicodedata.normalize("NFKC", text) != text:
        return "characters that Unicode normalisation changes (fullwidth forms...)"
    for segment in text.split("/"):
        if segment and segment not in (".", "..") and segment[-1] in " .":
            return "a path segment that ends in a space or a dot"
    return None
