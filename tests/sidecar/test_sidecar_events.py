"""Bad events: a clear error naming the problem, counted by reason, never a crash."""

from __future__ import annotations

import pytest

from extender.sidecar.events import (
    BadEvent,
    TaskEnd,
    TaskStart,
    decode_end,
    decode_line,
    decode_start,
)
from extender.sidecar.tracker import Tracker
from tests.sidecar.support import ManualClock, make_settings


@pytest.mark.parametrize(("body", "reason", "says"), [
    (b'{"type": "fit"}', "missing_field", "`id`"),
    (b'{"id": "a"}', "missing_field", "`type`"),
    (b'{"id": "", "type": "fit"}', "invalid_field", "$.id"),
    (b'{"id": "a", "type": "fit", "expected_seconds": -1}', "invalid_field", "expected_seconds"),
    (b'{"id": "a", "type": "fit", "expected_seconds": "3"}', "invalid_field", "expected_seconds"),
    (b'{"id": 7, "type": "fit"}', "invalid_field", "$.id"),
    (b'{"id": "a", "type": "fit", "expected_second": 3}', "unknown_field", "expected_second"),
    (b'{"id": "a", "type": "fit"', "malformed", "truncated"),
    (b'["a", "fit"]', "malformed", "object"),
    (b"", "malformed", "invalid event"),
])
def test_bad_start_bodies_are_rejected_with_a_reason_and_a_readable_message(
        body: bytes, reason: str, says: str) -> None:
    with pytest.raises(BadEvent) as caught:
        decode_start(body)
    assert caught.value.reason == reason
    assert says in str(caught.value)


def test_valid_bodies_decode_to_typed_events() -> None:
    assert decode_start(b'{"id": "a", "type": "fit", "expected_seconds": 3}') == TaskStart(
        id="a", type="fit", expected_seconds=3.0)
    assert decode_end(b'{"id": "a"}') == TaskEnd(id="a")


def test_event_file_lines_are_tagged_by_their_event_field() -> None:
    assert decode_line('{"event": "end", "id": "a", "ts": 5}') == TaskEnd(id="a", ts=5.0)
    with pytest.raises(BadEvent) as missing:
        decode_line('{"id": "a"}')
    assert missing.value.reason == "missing_field" and "`event`" in str(missing.value)
    with pytest.raises(BadEvent) as wrong:
        decode_line('{"event": "stop", "id": "a"}')
    assert wrong.value.reason == "invalid_field"


def test_end_without_start_is_rejected_and_counted(tracker: Tracker) -> None:
    with pytest.raises(BadEvent, match="'ghost' is not running") as caught:
        tracker.end(TaskEnd(id="ghost"))
    assert caught.value.reason == "end_without_start"
    assert tracker.stats().bad_events["end_without_start"] == 1
    assert tracker.stats().tasks_total == 0


def test_second_end_of_the_same_task_is_an_end_without_start(
        tracker: Tracker, clock: ManualClock) -> None:
    tracker.start(TaskStart(id="a", type="fit"))
    tracker.end(TaskEnd(id="a"))
    with pytest.raises(BadEvent):
        tracker.end(TaskEnd(id="a"))
    stats = tracker.stats()
    assert (stats.tasks_total, stats.bad_events["end_without_start"]) == (1, 1)


def test_duplicated_id_is_rejected_and_the_running_task_is_kept(
        tracker: Tracker, clock: ManualClock) -> None:
    tracker.start(TaskStart(id="a", type="fit", expected_seconds=2.0))
    clock.advance(1)
    with pytest.raises(BadEvent, match="'a' is already running") as caught:
        tracker.start(TaskStart(id="a", type="fit", expected_seconds=100.0))
    assert caught.value.reason == "duplicate_id"
    clock.advance(4)
    assert tracker.end(TaskEnd(id="a")).missed  # judged against the first start
    assert tracker.stats().bad_events["duplicate_id"] == 1


def test_end_stamped_before_its_start_is_a_clock_error_and_drops_the_task(
        tracker: Tracker, clock: ManualClock) -> None:
    tracker.start(TaskStart(id="a", type="fit", expected_seconds=1.0, ts=clock.now))
    with pytest.raises(BadEvent, match="before its start") as caught:
        tracker.end(TaskEnd(id="a", ts=clock.now - 0.5))
    assert caught.value.reason == "clock_backwards"
    stats = tracker.stats()
    assert (stats.running, stats.tasks_total, stats.bad_events["clock_backwards"]) == (0, 0, 1)


def test_starts_beyond_max_running_are_rejected_to_bound_memory(clock: ManualClock) -> None:
    tracker = Tracker(make_settings(max_running=3), clock=clock)
    for i in range(3):
        tracker.start(TaskStart(id=f"t{i}", type="fit"))
    with pytest.raises(BadEvent, match="max_running") as caught:
        tracker.start(TaskStart(id="t3", type="fit"))
    assert caught.value.reason == "too_many_running"
    tracker.end(TaskEnd(id="t0"))
    tracker.start(TaskStart(id="t3", type="fit"))
    assert tracker.stats().running == 3


def test_rejected_decoding_is_counted_through_reject(tracker: Tracker) -> None:
    with pytest.raises(BadEvent) as caught:
        decode_start(b"{")
    tracker.reject(caught.value)
    assert tracker.stats().bad_events["malformed"] == 1
