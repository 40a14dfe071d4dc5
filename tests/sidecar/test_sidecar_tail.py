"""The JSON-lines event file: appends, partial lines, truncation, rotation, bad lines."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from extender.sidecar.tail import LOGGED_BAD_LINES, MAX_LINE_BYTES, EventFileTailer
from extender.sidecar.tracker import Tracker
from tests.sidecar.support import ManualClock


def line(event: str, task_id: str, **fields: object) -> str:
    return json.dumps({"event": event, "id": task_id, **fields}) + "\n"


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


@pytest.fixture
def tailer(events: Path, tracker: Tracker) -> Iterator[EventFileTailer]:
    tailer = EventFileTailer(events, tracker)
    yield tailer
    tailer.stop()


def test_waits_for_a_missing_file_then_reads_it_from_the_start(
        events: Path, tracker: Tracker, tailer: EventFileTailer) -> None:
    assert tailer.poll() == 0
    append(events, line("start", "a", type="fit") + line("start", "b", type="fit"))
    assert tailer.poll() == 2
    assert tracker.stats().running == 2


def test_partial_line_waits_for_its_newline(events: Path, tailer: EventFileTailer) -> None:
    full = line("start", "a", type="fit")
    append(events, full[:10])
    assert tailer.poll() == 0
    append(events, full[10:])
    assert tailer.poll() == 1


def test_timestamps_in_the_file_give_the_durations(
        events: Path, tracker: Tracker, tailer: EventFileTailer, clock: ManualClock) -> None:
    t0 = clock.now - 60
    append(events, line("start", "a", type="fit", expected_seconds=2, ts=t0)
           + line("end", "a", ts=t0 + 3.5))
    tailer.poll()
    stats = tracker.stats()
    assert (stats.tasks_total, stats.missed_total) == (1, 0)


def test_truncation_is_followed_from_the_start(
        events: Path, tracker: Tracker, tailer: EventFileTailer) -> None:
    append(events, line("start", "a", type="fit") + line("start", "b", type="fit"))
    tailer.poll()
    events.write_text("")  # copytruncate
    append(events, line("end", "a"))
    assert tailer.poll() == 1
    assert tracker.stats().running == 1


def test_rotation_drains_the_old_file_then_follows_the_new_one(
        events: Path, tracker: Tracker, tailer: EventFileTailer) -> None:
    append(events, line("start", "a", type="fit"))
    tailer.poll()
    append(events, line("end", "a"))  # written just before the rotation, not read yet
    os.rename(events, events.with_suffix(".1"))
    append(events, line("start", "b", type="fit"))
    assert tailer.poll() == 2
    stats = tracker.stats()
    assert (stats.tasks_total, stats.running) == (1, 1)


def test_bad_lines_are_counted_logged_a_bounded_number_of_times_and_skipped(
        events: Path, tracker: Tracker, tailer: EventFileTailer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="extender.sidecar.tail")
    bad = ["not json\n", line("end", "ghost"), '{"event": "start", "id": "x"}\n'] * 10
    append(events, "".join(bad) + "\n" + line("start", "ok", type="fit"))
    assert tailer.poll() == 1
    stats = tracker.stats()
    assert stats.bad_events["malformed"] == 10
    assert stats.bad_events["end_without_start"] == 10
    assert stats.bad_events["missing_field"] == 10
    assert stats.running == 1
    assert len(caplog.records) == LOGGED_BAD_LINES
    assert f"{events}:1: invalid event" in caplog.records[0].getMessage()
    assert "only counted" in caplog.records[-1].getMessage()


def test_endless_line_is_dropped_to_bound_memory(
        events: Path, tracker: Tracker, tailer: EventFileTailer) -> None:
    append(events, "x" * (MAX_LINE_BYTES + 10))
    tailer.poll()
    assert tracker.stats().bad_events["malformed"] == 1
    assert len(tailer._buffer) == 0


def test_background_thread_applies_lines_and_stop_drains_the_rest(
        events: Path, tracker: Tracker) -> None:
    from extender.localserver import wait_until

    tailer = EventFileTailer(events, tracker, poll_interval_s=0.05).start()
    append(events, line("start", "a", type="fit"))
    wait_until(lambda: tracker.stats().running == 1, timeout_s=10, what="the tailer")
    append(events, line("end", "a"))
    tailer.stop()
    assert tracker.stats().tasks_total == 1
