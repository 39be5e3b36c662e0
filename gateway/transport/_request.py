"""Sans-IO encoding of an HTTP/1.1 request: head, framing decisions, in-memory bodies."""

from __future__ import annotations

from typing import NamedTuple

import httpx


class RequestHead(NamedTuple):
    """The encoded head (without its final CRLF) and what its headers say about the body."""

    parts: list[bytes]
    content_length: int  # -1: no Content-Length header
    chunked: bool  # Transfer-Encoding: chunked was given
    connection_close: bool  # Connection: close was given


def scan_request_headers(raw_headers: list[tuple[bytes, bytes]]) -> tuple[bool, int, bool, bool]:
    """Return `(has_host, content_length, chunked, connection_close)` of request headers.

    `content_length` is -1 when absent. Only names of a matching length are lowered,
    so the common header costs one `len()`.
    """
    has_host = chunked = close = False
    content_length = -1
    for name, value in raw_headers:
        size = len(name)
        if size == 4:
            has_host = has_host or name.lower() == b"host"
        elif size == 14 and name.lower() == b"content-length":
            if not value.strip().isdigit():
                raise httpx.LocalProtocolError(f"invalid Content-Length {value!r}")
            content_length = int(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            if b"chunked" not in value.lower():
                raise httpx.LocalProtocolError(f"unsupported Transfer-Encoding {value!r}")
            chunked = True
        elif size == 10 and name.lower() == b"connection":
            close = close or b"close" in value.lower()
    return has_host, content_length, chunked, close


def encode_request_head(request: httpx.Request) -> RequestHead:
    """Request line and headers exactly as the caller built them; `Host` only if absent.

    The target is `request.url.raw_path`, or the `"target"` extension (bytes) when
    given: httpx normalises dot segments away, the extension keeps them.
    """
    raw_headers = request.headers.raw
    has_host, content_length, chunked, close = scan_request_headers(raw_headers)
    target = request.extensions.get("target") or request.url.raw_path
    parts = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    if not has_host:
        parts += (b"Host: ", request.url.netloc, b"\r\n")
    for name, value in raw_headers:
        parts += (name, b": ", value, b"\r\n")
    return RequestHead(parts, content_length, chunked, close)


def encode_in_memory_request(head: RequestHead, content: bytes) -> bytes:
    """The whole request with an in-memory body, framed as its headers say.

    Without Content-Length or Transfer-Encoding, a non-empty body gets a Content-Length
    (the request cannot go out unframed); an empty one gets nothing.
    """
    parts = head.parts
    if head.chunked:
        if content:
            parts += (b"\r\n%x\r\n" % len(content), content, b"\r\n0\r\n\r\n")
        else:
            parts.append(b"\r\n0\r\n\r\n")
    elif head.content_length >= 0:
        if head.content_length != len(content):
            raise httpx.LocalProtocolError(
                f"Content-Length {head.content_length} but the body has {len(content)} bytes"
            )
        parts += (b"\r\n", content)
    elif content:
        parts += (b"Content-Length: %d\r\n\r\n" % len(content), content)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (`data` must not be empty: that is the terminator)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
