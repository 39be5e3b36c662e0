"""Coarse deadlines for many short waits: one loop timer per tick, not one per wait.

Arming and cancelling a loop timer costs about 5 us under uvloop.  Deadlines that
guard every request (a client too slow to send its body or to take the response)
almost never fire, yet a timer per request or per response message would pay that
cost every time.  A ``Watchdog`` keeps the watched objects in a set instead and looks
at them once per tick, while there are any: watching costs a set insertion, and a
deadline fires at most one tick late.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Watchdog", "Watched", "tick_for"]

MAX_TICK_S = 0.5
MIN_TICK_S = 0.01


class Watched(Protocol):
    """What a ``Watchdog`` looks at on each tick."""

    def check(self, now: float) -> bool:
        """Act on any deadline passed by ``now`` (loop time); True to stop being watched."""
        ...


def tick_for(*timeouts_s: float | None) -> float:
    """A tick fine enough for the shortest of ``timeouts_s``: a quarter of it, 10-500 ms."""
    shortest = min((t for t in timeouts_s if t is not None), default=MAX_TICK_S * 4)
    return min(MAX_TICK_S, max(MIN_TICK_S, shortest / 4))


class Watchdog:
    """Calls ``check(now)`` on each watched object every ``tick_s`` seconds.

    Only a running event loop's code may call ``watch``; the tick timer runs while
    anything is watched, so an idle watchdog costs nothing.
    """

    def __init__(self, tick_s: float = MAX_TICK_S) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick_s: {tick_s!r} is not > 0")
        self.tick_s = tick_s
        self._watched: set[Watched] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, item: Watched) -> None:
        """Check ``item`` on every tick until it is unwatched or its check returns True."""
        self._watched.add(item)
        if self._timer is None or self._loop is not asyncio.get_running_loop():
            self._start()

    def unwatch(self, item: Watched) -> None:
        """Stop checking ``item`` (no error if it was not watched)."""
        self._watched.discard(item)

    def _start(self) -> None:
        # A timer left on a loop that no longer runs (a closed test loop) is dropped.
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        for item in list(self._watched):
            if item.check(now):
                self._watched.discard(item)
        if self._watched:
            self._timer = self._loop.call_later(self.tick_s, self._tick)
