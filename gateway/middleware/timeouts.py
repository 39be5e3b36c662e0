"""Client-side deadlines of an HTTP request: a stalled request body, a too-long request.

- ``body_timeout_s``: the longest the app may wait for the *next piece* of the request
  body (nginx ``client_body_timeout``: between two successive reads, not for the
  whole body, so a large upload over a slow but steady link passes).  Only time the
  app spends waiting on the client counts: a slow backend that reads the body late
  does not make the client late.  Expiry -> 408.
- ``request_timeout_s``: the whole exchange, from the request start until the app
  returns (request body, backend, response body).  Expiry -> 504.
- ``send_timeout_s``: the longest one piece of the response body may wait for the
  client to take it (nginx ``send_timeout``: between two successive writes), so a
  client that stops reading a large response does not hold the backend connection
  and the task for ever.  Expiry cuts the connection (the response has started).

On expiry the app is cancelled (the proxy drops its backend connection, so the
backend sees a disconnect).  If no response has started, the client gets the status
with ``Connection: close``; otherwise the response is left incomplete, which makes
the server cut the connection - the only honest signal left.

A request arms no loop timer of its own: the deadlines are checked on the ticks of
one ``Watchdog`` per middleware (a quarter of the shortest timeout, at most 0.5 s),
so a deadline fires at most one tick late and a request only costs a set insertion
and a clock read per wait.  A request with only the send deadline to keep (no body,
no ``request_timeout_s``) is watched only while a send waits; a server that offers
its write flow control as the ``gateway.flow`` scope extension (``gateway run``
does) spares it even the clock reads while the client takes what is sent.
WebSocket scopes pass through: the bridge has its own idle timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.logs import get_logger
from gateway.request_rules import declared_body_bytes
from gateway.responses import send_text
from gateway.watchdog import Watchdog, tick_for

__all__ = ["FLOW_EXTENSION", "TimeoutsMiddleware", "check_deadlines", "has_request_body"]

# A scope extension, ``{"flow": object}``: the object's ``write_paused`` is true while
# the server holds response bytes the client has not taken (uvicorn's FlowControl); a
# send made while it is false does not wait.
FLOW_EXTENSION = "gateway.flow"


def _flow(scope: Scope) -> Any:
    extension = scope.get("extensions", {}).get(FLOW_EXTENSION)
    return None if extension is None else extension.get("flow")


logger = get_logger("gateway.timeouts")

# asyncio runs a timer (the watchdog's tick) up to one clock tick early
# (BaseEventLoop._run_once): a deadline that close counts as passed.
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


def check_deadlines(
    now: float,
    *,
    body_deadline: float | None,
    request_deadline: float | None,
    send_deadline: float | None = None,
) -> tuple[int | None, float | None]:
    """``(status, None)`` once a deadline has passed, else ``(None, next deadline)``.

    ``body_deadline`` is when the current wait for the request body expires (None when
    the app is not waiting for it), ``request_deadline`` when the request does.  When
    both have passed, the earlier one decides: 408 for the body, 504 for the request.
    ``send_deadline`` is when the current wait for the client to take a piece of the
    response expires (408: the client is too slow).
    """
    pending = [
        (deadline, status)
        for deadline, status in (
            (body_deadline, 408),
            (request_deadline, 504),
            (send_deadline, 408),
        )
        if deadline is not None
    ]
    if not pending:
        return None, None
    deadline, status = min(pending)
    if deadline <= now:
        return status, None
    return None, deadline


def has_request_body(headers: list[tuple[bytes, bytes]], http_version: str = "1.1") -> bool:
    """True if the request may have a body: chunked, a non-zero Content-Length, or an
    HTTP/2 or 3 request without Content-Length (its body ends with the stream)."""
    return declared_body_bytes(headers, http_version) != 0


def _check_timeout(key: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{key}: {value!r} is not a number of seconds > 0 (or None)")
    return float(value)


class TimeoutsMiddleware:
    """Answer 408 for a stalled request body and 504 past the request deadline.

    ``None`` turns a deadline off; see the module doc for what each one measures.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_timeout_s: float | None = 60,
        request_timeout_s: float | None = None,
        send_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.body_timeout_s = _check_timeout("body_timeout_s", body_timeout_s)
        self.request_timeout_s = _check_timeout("request_timeout_s", request_timeout_s)
        self.send_timeout_s = _check_timeout("send_timeout_s", send_timeout_s)
        self.watchdog = Watchdog(
            tick_for(self.body_timeout_s, self.request_timeout_s, self.send_timeout_s)
        )

    def __repr__(self) -> str:
        return (
            f"TimeoutsMiddleware(body_timeout_s={self.body_timeout_s!r}, "
            f"request_timeout_s={self.request_timeout_s!r}, "
            f"send_timeout_s={self.send_timeout_s!r})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_timeout_s = self.body_timeout_s
        if body_timeout_s is not None and not has_request_body(
            scope["headers"], scope.get("http_version", "1.1")
        ):
            body_timeout_s = None
        if (
            body_timeout_s is None
            and self.request_timeout_s is None
            and self.send_timeout_s is None
        ):
            await self.app(scope, receive, send)
            return
        if body_timeout_s is None and self.request_timeout_s is None:
            await self._send_deadline_only(scope, receive, send)
            return
        deadlines = _Deadlines(
            scope,
            receive,
            send,
            body_timeout_s,
            self.request_timeout_s,
            self.send_timeout_s,
            self.watchdog,
        )
        self.watchdog.watch(deadlines)
        try:
            await deadlines.run(self.app)
        finally:
            self.watchdog.unwatch(deadlines)

    async def _send_deadline_only(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Only the send deadline to keep: the request's deadlines are made, and watched,
        once a piece of the response may have to wait for the client."""
        flow = _flow(scope)
        deadlines: _Deadlines | None = None

        def timed_send(message: Message) -> Awaitable[None]:
            nonlocal deadlines
            if deadlines is None:
                if message["type"] != "http.response.body" or (
                    flow is not None and not flow.write_paused  # it will not wait
                ):
                    return send(message)
                deadlines = _Deadlines(
                    scope, receive, send, None, None, self.send_timeout_s, self.watchdog
                )
                deadlines.response_started = True  # a piece of its body is being sent
            return deadlines.send(message)

        task = asyncio.current_task()
        assert task is not None  # an ASGI app always runs in a task
        cancelling = task.cancelling()
        try:
            await self.app(scope, receive, timed_send)
        except asyncio.CancelledError:
            if deadlines is None or not await deadlines.settle(cancelling):
                raise
        else:
            if deadlines is not None:
                await deadlines.settle(cancelling, cancelled=False)


class _Deadlines:
    """One request's deadlines, checked on the middleware's watchdog ticks."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body_timeout_s: float | None,
        request_timeout_s: float | None,
        send_timeout_s: float | None,
        watchdog: Watchdog,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.watchdog = watchdog
        # Only the send deadline: watched while a send waits, not for the whole request.
        self.lazy = body_timeout_s is None and request_timeout_s is None
        self.flow = _flow(scope)
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # an ASGI app always runs in a task
        self.task = task
        self.body_timeout_s = body_timeout_s
        self.body_done = body_timeout_s is None
        self.waiting_since: float | None = None
        self.send_timeout_s = send_timeout_s
        self.sending_since: float | None = None
        self.request_deadline = (
            None if request_timeout_s is None else self.loop.time() + request_timeout_s
        )
        self.expired: int | None = None
        self.expired_what = "request"
        self.response_started = False

    async def run(self, app: ASGIApp) -> None:
        cancelling = self.task.cancelling()
        try:
            await app(self.scope, self._receive if self.body_done else self.receive, self.send)
        except asyncio.CancelledError:
            if not await self.settle(cancelling):
                raise
        else:
            await self.settle(cancelling, cancelled=False)

    async def settle(self, cancelling: int, *, cancelled: bool = True) -> bool:
        """After the app: True if a cancellation was ours (then answered), so that the
        caller swallows it. ``cancelling`` is the task's count before the app ran."""
        if self.expired is None:
            return False
        if not cancelled:  # the app swallowed our cancellation
            self.task.uncancel()
            return False
        # Ours only if nobody else cancelled too (the asyncio.timeout protocol).
        if self.task.uncancel() > cancelling:
            return False
        await self._answer(self.expired)
        return True

    async def receive(self) -> Message:
        if self.body_done:
            return await self._receive()
        self.waiting_since = self.loop.time()
        try:
            message = await self._receive()
        finally:
            self.waiting_since = None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self.expired is not None:
            return  # the answer is ours now
        if message["type"] == "http.response.start":
            self.response_started = True
        if (
            self.send_timeout_s is None
            or message["type"] != "http.response.body"
            or (self.flow is not None and not self.flow.write_paused)  # it will not wait
        ):
            await self._send(message)
            return
        self.sending_since = self.loop.time()
        if self.lazy:
            self.watchdog.watch(self)
        try:
            await self._send(message)
        finally:
            self.sending_since = None
            if self.lazy:
                self.watchdog.unwatch(self)

    def check(self, now: float) -> bool:
        """The watchdog's tick: cancel the app once a deadline has passed (then True)."""
        body_deadline = None
        if self.waiting_since is not None and self.body_timeout_s is not None:
            body_deadline = self.waiting_since + self.body_timeout_s
        send_deadline = None
        if self.sending_since is not None and self.send_timeout_s is not None:
            send_deadline = self.sending_since + self.send_timeout_s
        status, _ = check_deadlines(
            now + _CLOCK_RESOLUTION,
            body_deadline=body_deadline,
            request_deadline=self.request_deadline,
            send_deadline=send_deadline,
        )
        if status is None:
            return False
        self.expired = status
        sending = send_deadline is not None and (
            body_deadline is None or send_deadline <= body_deadline
        )
        self.expired_what = (
            "request" if status == 504 else "response send" if sending else "request body"
        )
        self.task.cancel()
        return True

    async def _answer(self, status: int) -> None:
        client = self.scope.get("client")
        logger.info(
            "%s %s: %s timed out (%s): client=%s",
            self.scope["method"],
            self.scope["path"],
            self.expired_what,
            "answered" if not self.response_started else "connection cut",
            client[0] if client else "-",
        )
        if not self.response_started:
            self.response_started = True
            await send_text(self.scope, self._send, status, headers=[(b"connection", b"close")])
