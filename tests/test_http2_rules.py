"""gateway.http2_rules: which streams a connection takes and what its frames cost (pure)."""

from __future__ import annotations

from typing import Any

import pytest

h2_events = pytest.importorskip("h2.events")

from gateway.http2_rules import FrameBudget, StreamWindow, screen  # noqa: E402

WINDOW = StreamWindow(
    open_streams=0, max_streams=2, taken=0, max_requests=100, draining=False, served=()
)


def make(kind: str, **fields: Any) -> Any:
    """An h2 event: keyword arguments since h2 4.2, attributes set afterwards before."""
    cls = getattr(h2_events, kind)
    try:
        event = cls(**fields)
    except TypeError:
        event = cls()
    for name, value in fields.items():
        setattr(event, name, value)
    return event


def request(stream_id: int, priority: bool = False) -> list[Any]:
    event = make("RequestReceived", stream_id=stream_id, headers=[(b":method", b"GET")])
    if not priority:
        return [event]
    update = priority_frame(stream_id)
    event.priority_updated = update
    return [event, update]


def priority_frame(stream_id: int) -> Any:
    return make("PriorityUpdated", stream_id=stream_id, weight=16, depends_on=0, exclusive=False)


def data(stream_id: int, payload: bytes, ended: bool = False) -> list[Any]:
    event = make(
        "DataReceived", stream_id=stream_id, data=payload, flow_controlled_length=len(payload)
    )
    if not ended:
        return [event]
    end = make("StreamEnded", stream_id=stream_id)
    event.stream_ended = end
    return [event, end]


def test_the_budget_holds_one_second_and_refills_at_its_rate() -> None:
    budget = FrameBudget(per_s=10, at=0.0)
    assert budget.spend(10, 0.0)
    assert not budget.spend(1, 0.0)
    budget = FrameBudget(per_s=10, at=0.0)
    assert budget.spend(6, 0.0)
    assert budget.spend(4, 0.0)
    assert budget.spend(5, 0.5)  # half a second: five more
    assert not budget.spend(1, 0.5)
    budget = FrameBudget(per_s=10, at=0.0)
    assert budget.spend(0, 100.0)  # idle for long: never more than one second's worth
    assert budget.spend(10, 100.0)
    assert not budget.spend(1, 100.0)
    assert not budget.spend(0, 100.05)  # overdrawn: it takes time to come back
    assert budget.spend(0, 100.2)


def test_streams_over_the_limit_are_refused_and_their_data_acknowledged_unread() -> None:
    events = [*request(1), *request(3), *request(5), *data(5, b"xyz", ended=True), *request(7)]
    out = screen(events, WINDOW)
    assert [e.stream_id for e in out.events] == [1, 3]
    assert out.refused == [5, 7]
    assert out.unread == [(5, 3)]
    assert out.overhead == 2  # refused streams cost like control frames
    assert out.last_taken == 0


def test_open_streams_count_towards_the_limit() -> None:
    out = screen(request(9), StreamWindow(2, 2, 2, 100, False, served={1, 3}))
    assert out.refused == [9]
    assert out.events == []


def test_the_stream_that_reaches_max_requests_starts_the_drain() -> None:
    window = StreamWindow(
        open_streams=0, max_streams=10, taken=1, max_requests=3, draining=False, served={1}
    )
    out = screen([*request(3), *request(5), *request(7)], window)
    assert [e.stream_id for e in out.events] == [3, 5]
    assert out.last_taken == 5
    assert out.refused == [7]
    draining = StreamWindow(0, 10, 3, 3, draining=True, served={1, 3, 5})
    assert screen(request(9), draining).refused == [9]


def test_control_frames_count_and_request_frames_do_not() -> None:
    ping = make("PingReceived", ping_data=b"12345678")
    settings = make("RemoteSettingsChanged", changed_settings={})
    reset = make("StreamReset", stream_id=1, error_code=8, remote_reset=True)
    events = [
        *request(1, priority=True),  # the priority a HEADERS frame carries: free
        *data(1, b"body"),
        *data(1, b""),  # empty, stream open: counts
        *data(1, b"", ended=True),  # empty but ends the body: free
        ping,
        settings,
        reset,
        priority_frame(11),  # PRIORITY of its own: counts, and is dropped
    ]
    out = screen(events, WINDOW)
    assert out.overhead == 5
    kept = [type(e).__name__ for e in out.events]
    assert "PriorityUpdated" not in kept
    assert kept.count("DataReceived") == 3
    assert {id(ping), id(settings), id(reset)} <= {id(e) for e in out.events}


def test_data_for_a_stream_already_answered_is_acknowledged_unread() -> None:
    """An app that answered before the body ended (an early 413): its stream's DATA is
    dropped after the flow-control acknowledgement, and the stream is to be reset; DATA
    for streams still served, or opened in the same batch, goes on."""
    window = StreamWindow(0, 10, 2, 100, False, served={3})
    events = [*data(1, b"late"), *data(3, b"body"), *request(5), *data(5, b"new"), *data(1, b"")]
    out = screen(events, window)
    assert [(type(e).__name__, e.stream_id) for e in out.events] == [
        ("DataReceived", 3),
        ("RequestReceived", 5),
        ("DataReceived", 5),
    ]
    assert out.unread == [(1, 4), (1, 0)]
    assert out.answered == [1]
    assert out.overhead == 1  # the empty DATA frame that does not end its stream
