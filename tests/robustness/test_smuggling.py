"""Request smuggling: hostile framing sent byte for byte over TLS to the gateway.

For every case the gateway either refuses the message with a 4xx, or the backend sees
exactly one well-formed request whose body is the body the strict (RFC 9112) reading
of the message gives, and the client gets exactly one answer for it. A request hidden
in the bytes (``/smuggled``) must never reach the backend, and no second 2xx may come
back from one client message.
"""

from __future__ import annotations

import hashlib
import json
import ssl

import pytest

from tests.robustness.helpers import converse, parse_responses, port_of
from tests.servers import Backend

pytestmark = pytest.mark.timeout(60)

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
REJECT = None  # the only acceptable outcome is a 4xx


def post(headers: bytes, body: bytes) -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n" + body


CASES: dict[str, tuple[bytes, bytes | None]] = {
    # CL.TE: a front end trusting Content-Length would forward the smuggled request as body.
    "cl_then_te": (
        post(b"Content-Length: 48\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
        REJECT,
    ),
    # TE.CL: a parser trusting Content-Length would take the chunk data as a new request.
    "te_then_cl": (
        post(
            b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            b"2b\r\n" + SMUGGLED + b"\r\n0\r\n\r\n",
        ),
        REJECT,
    ),
    "duplicate_equal_cl": (post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), b"hello"),
    "conflicting_cl": (
        post(b"Content-Length: 5\r\nContent-Length: 48\r\n", b"hello" + SMUGGLED),
        REJECT,
    ),
    "cl_list": (post(b"Content-Length: 5, 48\r\n", b"hello" + SMUGGLED), REJECT),
    "cl_plus_sign": (post(b"Content-Length: +5\r\n", b"hello" + SMUGGLED), REJECT),
    "cl_negative": (post(b"Content-Length: -1\r\n", b"hello" + SMUGGLED), REJECT),
    "cl_hex": (post(b"Content-Length: 0x5\r\n", b"hello" + SMUGGLED), REJECT),
    "cl_space_inside": (post(b"Content-Length: 1 0\r\n", b"helloworld" + SMUGGLED), REJECT),
    "cl_space_before_colon": (post(b"Content-Length : 5\r\n", b"hello" + SMUGGLED), REJECT),
    "te_xchunked": (
        post(b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED),
        REJECT,
    ),
    "te_xchunked_alone": (
        post(b"Transfer-Encoding: xchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        REJECT,
    ),
    # Leading whitespace is optional whitespace in the grammar: this is plain chunked.
    "te_leading_space": (
        post(b"Transfer-Encoding:  chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        b"hello",
    ),
    "te_tab_value": (
        post(b"Transfer-Encoding:\tchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        b"hello",
    ),
    "te_chunked_identity": (
        post(b"Transfer-Encoding: chunked, identity\r\n", b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        REJECT,
    ),
    "te_identity_chunked": (
        post(b"Transfer-Encoding: identity, chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        b"hello",
    ),
    "te_twice": (
        post(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        ),
        REJECT,
    ),
    "te_vertical_tab_name": (
        post(b"Transfer-Encoding\x0b: chunked\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED),
        REJECT,
    ),
    "te_tab_before_colon": (
        post(b"Transfer-Encoding\t: chunked\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED),
        REJECT,
    ),
    "te_space_before_colon": (
        post(b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED),
        REJECT,
    ),
    "te_obs_fold": (
        post(
            b"X-Pad: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED
        ),
        REJECT,
    ),
    "te_uppercase": (post(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"), b"hello"),
    "chunk_size_overflow": (
        post(b"Transfer-Encoding: chunked\r\n", b"1" + b"0" * 20 + b"5\r\nhello\r\n0\r\n\r\n"),
        REJECT,
    ),
    "chunk_size_0x": (
        post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"),
        REJECT,
    ),
    "chunk_bare_lf": (
        post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n" + SMUGGLED),
        REJECT,
    ),
    "chunk_data_overrun": (
        post(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n"),
        REJECT,
    ),
    "bare_lf_head": (
        b"POST /echo HTTP/1.1\nHost: localhost\nContent-Length: 5\n\nhello",
        b"hello",
    ),
    "bare_cr_head": (
        b"POST /echo HTTP/1.1\rHost: localhost\rContent-Length: 5\r\r\nhello",
        REJECT,
    ),
    "nul_in_value": (post(b"Content-Length: 5\r\nX-Test: a\x00b\r\n", b"hello"), REJECT),
    "cr_in_value": (post(b"Content-Length: 5\r\nX-Test: a\rb\r\n", b"hello"), REJECT),
    "lf_in_value_injects_te": (
        post(
            b"X-Test: a\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"hello" + SMUGGLED
        ),
        REJECT,
    ),
    "nul_in_name": (post(b"Content-Length: 5\r\nX-T\x00est: a\r\n", b"hello"), REJECT),
    "empty_header_name": (post(b"Content-Length: 5\r\n: a\r\n", b"hello"), REJECT),
    "space_in_method": (
        b"PO ST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
        REJECT,
    ),
    "bad_version": (
        b"POST /echo HTTP/1.7\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
        REJECT,
    ),
    # httptools takes a request line without a version as HTTP/0.9 (one request, then
    # the connection ends): the bytes after it are never read as a second request.
    "http09_style": (b"GET /echo\r\n\r\n" + SMUGGLED, b""),
    "oversized_request_line": (
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
        REJECT,
    ),
    "oversized_header": (
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n",
        REJECT,
    ),
    "too_many_headers": (
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
        + b"\r\n",
        REJECT,
    ),
    # A whole request inside a correctly framed body stays body.
    "request_hidden_in_body": (post(b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED), SMUGGLED),
    "request_hidden_in_chunk": (
        post(
            b"Transfer-Encoding: chunked\r\n",
            b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
        ),
        SMUGGLED,
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_smuggling_case(
    case: str, gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    data, expected_body = CASES[case]
    raw, _ = await converse(port_of(gateway), data, client_ssl)
    responses = parse_responses(raw)
    paths = [r["raw_path"] for r in backend.requests]
    # Never: the hidden request reaches the backend, or one message becomes two requests.
    assert "/smuggled" not in paths, f"{case}: smuggled request forwarded: {paths}"
    assert len(backend.requests) <= 1, f"{case}: backend saw {paths}"
    assert all(status >= 400 for status, _, _ in responses[1:]), (
        f"{case}: second answer {responses}"
    )
    if not responses:
        # A silent close is a refusal too, as long as nothing was forwarded.
        assert backend.requests == [], f"{case}: forwarded but no answer"
        return
    status, _, body = responses[0]
    if expected_body is REJECT or 400 <= status < 500:
        assert 400 <= status < 500, f"{case}: accepted with {status}: {backend.requests}"
        assert backend.requests == [], f"{case}: refused with {status} but forwarded"
        return
    assert status == 200, f"{case}: {status} {body!r}"
    assert len(backend.requests) == 1
    seen = backend.requests[0]
    answered = json.loads(body)
    assert answered["body_sha256"] == seen["body_sha256"]
    assert seen["body_sha256"] == hashlib.sha256(expected_body).hexdigest(), (
        f"{case}: backend got {seen['body_bytes']} bytes"
    )
    # Framing headers the client sent never reach the backend as-is next to a new framing.
    names = [name for name, _ in seen["headers"]]
    assert not ("content-length" in names and "transfer-encoding" in names)


async def test_endless_header_is_cut_before_it_is_buffered(
    gateway: str, backend: Backend, client_ssl: ssl.SSLContext
) -> None:
    """httptools would buffer a header field of any size; the server stops reading at a
    bound (a few hundred KiB with default limits), answers 431 and closes."""
    import asyncio

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port_of(gateway), ssl=client_ssl, server_hostname="localhost"
    )
    writer.write(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Endless: ")
    sent = 0
    try:
        async with asyncio.timeout(20):
            while sent < 50_000_000:  # far more than the bound: must be cut well before
                writer.write(b"e" * 65536)
                await writer.drain()
                sent += 65536
    except (ConnectionError, ssl.SSLError):
        pass
    answer = b""
    try:
        async with asyncio.timeout(5):
            answer = await reader.read(65536)
    except (ConnectionError, ssl.SSLError):
        pass  # the server closed with our unread bytes pending: TCP resets, 431 may be lost
    writer.transport.abort()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert sent < 10_000_000, sent
    assert backend.requests == []
