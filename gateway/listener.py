"""The TLS listener: TLS for clients that speak it, a clear answer for plain HTTP.

A plain HTTP request sent to a TLS port fails the TLS handshake, and the client sees
an empty reply (curl error 52, Chromium ``ERR_EMPTY_RESPONSE``) with nothing logged.
Like nginx ("The plain HTTP request was sent to HTTPS port") this listener looks at the
first byte of each connection before TLS starts: a TLS record (``0x16``) or anything
that is not an HTTP method goes to TLS as usual; an ASCII letter is a plain HTTP
request, answered with 400 and a one-line explanation, or - ``plain_http="redirect"`` -
with a 308 to the https URL.  Both are logged once per client address per minute.

It uses only public asyncio calls (``add_reader``, ``connect_accepted_socket``), on
asyncio's loop and uvloop alike: the first byte is read with ``MSG_PEEK``, so TLS
still gets every byte of the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Literal, cast

from gateway.certificates import ACME_TLS_ALPN, CertificateStore, read_hello
from gateway.logs import get_logger
from gateway.refusals import refused
from gateway.tls import https_url

__all__ = ["PlainHTTP", "TLSListener", "plain_http_answer"]

logger = get_logger("gateway.listener")

PlainHTTP = Literal["reject", "redirect"]

_TLS_HANDSHAKE_RECORD = 0x16
# A TLS alert record (type 21, version 3.1, length 2): fatal (2), unrecognized_name (112).
_UNRECOGNIZED_NAME_ALERT = bytes([21, 3, 1, 0, 2, 2, 112])
_MAX_PLAIN_HEAD_BYTES = 8192
_ACCEPTS_PER_WAKEUP = 64
_EMFILE_PAUSE_S = 1.0


def plain_http_answer(head: bytes, mode: PlainHTTP, https_port: int) -> tuple[int, bytes]:
    """The status and full response for a plain HTTP request ``head`` on the TLS port."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    target = parts[1].decode("latin-1") if len(parts) == 3 else ""
    host = ""
    for header in rest.split(b"\r\n"):
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"host":
            host = value.strip().decode("latin-1")
            break
    url = https_url(host, https_port, target) if mode == "redirect" and host else None
    if url is not None:
        body = f"This port speaks HTTPS: moved to {url}\n".encode()
        status, reason = 308, b"Permanent Redirect"
        extra = b"location: " + url.encode("latin-1") + b"\r\n"
    else:
        body = (
            b"400 Bad Request: the plain HTTP request was sent to an HTTPS port; "
            b"use https:// (and wss:// for WebSockets)\n"
        )
        status, reason = 400, b"Bad Request"
        extra = b""
    response = (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\n%sconnection: close\r\n\r\n%s"
        % (status, reason, len(body), extra, body)
    )
    return status, response


class _PlainHTTPAnswer(asyncio.Protocol):
    """Reads a plain HTTP request head (bounded in size and time) and answers it."""

    def __init__(self, listener: TLSListener, address: str) -> None:
        self.listener = listener
        self.address = address
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.listener.handshake_timeout_s, self.answer)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer or len(self.buffer) >= _MAX_PLAIN_HEAD_BYTES:
            self.answer()

    def eof_received(self) -> bool:
        self.answer()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def answer(self) -> None:
        if self.answered or self.transport is None or self.transport.is_closing():
            return
        self.answered = True
        listener = self.listener
        head = bytes(self.buffer[:_MAX_PLAIN_HEAD_BYTES])
        status, response = plain_http_answer(head, listener.plain_http, listener.https_port)
        self.transport.write(response)
        self.transport.close()
        refused(
            "plain_http",
            self.address,
            "plain HTTP request on the TLS port from %s: answered %d (clients must use"
            " https://; logged once a minute per client)",
            self.address,
            status,
            level=logging.WARNING,
        )


class TLSListener:
    """Serves ``sock`` (listening, already bound) with TLS, answering plain HTTP itself.

    Quacks like the ``asyncio.Server`` that uvicorn keeps in ``Server.servers``
    (``close``, ``wait_closed``).  ``protocol_factory`` makes the protocol for each TLS
    connection (uvicorn's HTTP protocol).
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext,
        *,
        handshake_timeout_s: float,
        plain_http: PlainHTTP = "reject",
        https_port: int = 443,
        certificates: CertificateStore | None = None,
    ) -> None:
        self.sock = sock
        # With unknown SNI names refused or ACME's tls-alpn-01 in use, the ClientHello
        # is read in the connection's first bytes (gateway.certificates).
        self.certificates = certificates
        reads_hello = certificates is not None and (
            certificates.reject_unknown or certificates.challenges is not None
        )
        self._peek_bytes = 16384 if reads_hello else 1
        self.protocol_factory = protocol_factory
        self.ssl_context = ssl_context
        self.handshake_timeout_s = handshake_timeout_s
        self.plain_http: PlainHTTP = plain_http
        self.https_port = https_port
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[socket.socket, asyncio.TimerHandle] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self._serving = False

    def start(self) -> None:
        """Start accepting connections."""
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._accept)
        self._serving = True

    def close(self) -> None:
        """Stop accepting; drop connections that have not started TLS yet."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self.sock.fileno())
        for conn, timer in list(self._waiting.items()):
            timer.cancel()
            self._forget(conn)
            conn.close()

    async def wait_closed(self) -> None:
        """Wait for the TLS handshakes in progress to end."""
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: stop accepting for a moment
                logger.error("TLS listener cannot accept connections: %s", exc)
                if self._serving:
                    self._loop.remove_reader(self.sock.fileno())
                    self._loop.call_later(_EMFILE_PAUSE_S, self._resume_accepting)
                return
            conn.setblocking(False)
            self._loop.add_reader(conn.fileno(), self._first_bytes, conn)
            self._waiting[conn] = self._loop.call_later(
                self.handshake_timeout_s, self._silent, conn
            )

    def _resume_accepting(self) -> None:
        if self._serving:
            self._loop.add_reader(self.sock.fileno(), self._accept)

    def _forget(self, conn: socket.socket) -> None:
        self._waiting.pop(conn, None)
        with contextlib.suppress(ValueError, OSError):  # ValueError: already closed
            self._loop.remove_reader(conn.fileno())

    def _silent(self, conn: socket.socket) -> None:
        """Nothing came within the handshake timeout."""
        self._forget(conn)
        conn.close()

    def _first_bytes(self, conn: socket.socket) -> None:
        timer = self._waiting.get(conn)
        if timer is not None:
            timer.cancel()
        self._forget(conn)
        try:
            first = conn.recv(self._peek_bytes, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            # A spurious wake-up: watch again.
            self._loop.add_reader(conn.fileno(), self._first_bytes, conn)
            self._waiting[conn] = self._loop.call_later(
                self.handshake_timeout_s, self._silent, conn
            )
            return
        except OSError:
            conn.close()
            return
        if not first:  # closed before saying anything (a port probe)
            conn.close()
            return
        if first[0] != _TLS_HANDSHAKE_RECORD and 0x41 <= first[0] <= 0x5A:  # "A".."Z"
            self._track(self._plain(conn))
            return
        context = self.ssl_context
        hello = read_hello(first) if self._peek_bytes > 1 else None
        if hello is not None and self.certificates is not None:
            if self.certificates.rejects(hello.server_name):
                self._unrecognized_name(conn, hello.server_name)
                return
            if ACME_TLS_ALPN in hello.alpn and hello.server_name:
                context = self.certificates.challenge_context(hello.server_name) or context
        self._track(self._tls(conn, context))

    def _unrecognized_name(self, conn: socket.socket, name: str | None) -> None:
        """End a handshake for a name nobody serves with a fatal unrecognized_name alert."""
        address = _peer(conn)
        with contextlib.suppress(OSError):
            conn.send(_UNRECOGNIZED_NAME_ALERT)
        conn.close()
        refused("unknown_sni", address, "TLS handshake from %s for unknown name %r", address, name)

    def _track(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _tls(self, conn: socket.socket, context: ssl.SSLContext) -> None:
        address = _peer(conn)
        try:
            await self._loop.connect_accepted_socket(
                self.protocol_factory,
                conn,
                ssl=context,
                ssl_handshake_timeout=self.handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            conn.close()
            refused(
                "tls_handshake",
                address,
                "TLS handshake with %s failed: %s",
                address,
                _describe(exc),
            )

    async def _plain(self, conn: socket.socket) -> None:
        address = _peer(conn)
        try:
            await self._loop.connect_accepted_socket(lambda: _PlainHTTPAnswer(self, address), conn)
        except OSError:
            conn.close()


def _peer(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except OSError:
        return "unknown"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "not complete in time"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__
