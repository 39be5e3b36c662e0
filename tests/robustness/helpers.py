"""Shared helpers for the robustness suite: raw TLS conversations and leak counters."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import ssl
from urllib.parse import urlsplit


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def converse(
    port: int, data: bytes, client_ssl: ssl.SSLContext, *, idle_s: float = 0.6, total_s: float = 10
) -> tuple[bytes, bool]:
    """Send ``data`` over TLS; read until EOF or ``idle_s`` of silence.

    Returns (bytes read, whether the server closed the connection). The connection is
    kept alive by the request itself (no ``Connection: close``), so that bytes a
    desynchronised parser left over would be taken as a second request and show.
    """
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ssl, server_hostname="localhost"
    )
    chunks: list[bytes] = []
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(total_s):
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), idle_s)
                except TimeoutError:
                    break
                if not chunk:
                    closed = True
                    break
                chunks.append(chunk)
    except (ConnectionError, ssl.SSLError):
        closed = True
    finally:
        writer.transport.abort()
    return b"".join(chunks), closed


def parse_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every HTTP/1.1 response in ``raw`` (Content-Length or chunked framing)."""
    responses = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, raw = rest[:size], rest[size:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                body += rest[:size]
                rest = rest[size + 2 :]
                if size == 0:
                    break
            raw = rest
        else:
            body, raw = rest, b""
        responses.append((status, headers, body))
    return responses


def open_fds(pid: int | None = None) -> int:
    """The open file descriptors of process ``pid`` (None: this one)."""
    return len(os.listdir(f"/proc/{'self' if pid is None else pid}/fd"))


async def settle(
    tasks_before: int, fds_before: int, *, fd_slack: int = 4, timeout_s: float = 10
) -> tuple[int, int]:
    """Wait (bounded) until task and fd counts are back to the baseline; return them."""
    tasks = fds = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while True:
                gc.collect()
                tasks, fds = len(asyncio.all_tasks()), open_fds()
                if tasks <= tasks_before and fds <= fds_before + fd_slack:
                    break
                await asyncio.sleep(0.05)
    return len(asyncio.all_tasks()), open_fds()
