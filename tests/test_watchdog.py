"""The coarse-deadline watchdog: checks on ticks, one timer, nothing when idle."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from gateway.watchdog import MAX_TICK_S, MIN_TICK_S, Watchdog, tick_for
from tests.servers import eventually


class Item:
    def __init__(self, stop_after: int) -> None:
        self.checks: list[float] = []
        self.stop_after = stop_after

    def check(self, now: float) -> bool:
        self.checks.append(now)
        return len(self.checks) >= self.stop_after


@pytest.mark.parametrize(
    ("timeouts", "tick"),
    [
        ((60.0,), MAX_TICK_S),
        ((1.0, None, 60.0), 0.25),
        ((0.001,), MIN_TICK_S),
        ((None, None), MAX_TICK_S),
        ((), MAX_TICK_S),
    ],
)
def test_tick_for_the_shortest_timeout(timeouts: tuple[float | None, ...], tick: float) -> None:
    assert tick_for(*timeouts) == tick


def test_a_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tick_s"):
        Watchdog(0)


async def test_checks_each_tick_until_the_item_says_stop() -> None:
    watchdog = Watchdog(0.02)
    item = Item(stop_after=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    watchdog.watch(item)
    await eventually(lambda: len(watchdog) == 0)
    assert len(item.checks) == 3
    # Each check a tick after the last (never early; late only by the loop's load).
    assert item.checks[0] >= started + 0.02 - 0.005
    assert all(b - a >= 0.02 - 0.005 for a, b in itertools.pairwise(item.checks))
    assert watchdog._timer is None  # idle: no tick is pending


async def test_unwatched_items_are_not_checked_and_the_tick_stops() -> None:
    watchdog = Watchdog(0.02)
    kept, dropped = Item(stop_after=2), Item(stop_after=100)
    watchdog.watch(kept)
    watchdog.watch(dropped)
    watchdog.unwatch(dropped)
    watchdog.unwatch(dropped)  # twice is harmless
    await eventually(lambda: len(watchdog) == 0)
    assert len(kept.checks) == 2
    assert dropped.checks == []
    assert watchdog._timer is None


async def test_many_items_share_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_later = loop.call_later

    def counting(delay: float, callback: object, *args: object) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None) is watchdog:  # not the test's own sleeps
            armed.append(delay)
        return call_later(delay, callback, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "call_later", counting)
    watchdog = Watchdog(0.05)
    items = [Item(stop_after=1) for _ in range(100)]
    for item in items:
        watchdog.watch(item)
    assert len(armed) == 1
    await eventually(lambda: len(watchdog) == 0)
    assert all(len(item.checks) == 1 for item in items)
    assert len(armed) == 1  # one tick checked them all


def test_a_new_loop_gets_a_new_timer() -> None:
    watchdog = Watchdog(0.01)
    first, second = Item(stop_after=100), Item(stop_after=1)

    async def watch(item: Item) -> None:
        watchdog.watch(item)
        await asyncio.sleep(0.05)

    asyncio.run(watch(first))  # the loop closes with `first` still watched
    watchdog.unwatch(first)
    asyncio.run(watch(second))
    assert len(second.checks) == 1
