"""Verdicts of the tracker: the miss rule over time, never-ending tasks, bursts, learning."""

from __future__ import annotations

import pytest

from extender.sidecar.events import TaskEnd, TaskStart
from extender.sidecar.tracker import Tracker
from tests.sidecar.support import ManualClock, make_settings


def run(tracker: Tracker, clock: ManualClock, task_id: str, seconds: float, *,
        task_type: str = "fit", expected: float | None = 2.0) -> bool:
    tracker.start(TaskStart(id=task_id, type=task_type, expected_seconds=expected))
    clock.advance(seconds)
    return tracker.end(TaskEnd(id=task_id)).missed


def test_task_within_its_limit_is_in_time_and_one_past_it_is_a_miss(
        tracker: Tracker, clock: ManualClock) -> None:
    assert run(tracker, clock, "a", 4.0) is False  # limit 2 * 1.5 + 1 = 4
    assert run(tracker, clock, "b", 4.5) is True
    stats = tracker.stats()
    assert (stats.tasks_total, stats.missed_total, stats.running) == (2, 1, 0)
    assert stats.miss_ratio == 0.5


def test_never_ending_task_is_a_miss_once_it_passes_its_limit_and_only_once(
        tracker: Tracker, clock: ManualClock) -> None:
    tracker.start(TaskStart(id="hung", type="fit", expected_seconds=2.0))
    clock.advance(3.9)
    assert tracker.stats().missed_total == 0
    clock.advance(0.2)
    stats = tracker.stats()
    assert (stats.tasks_total, stats.missed_total, stats.running) == (1, 1, 1)
    clock.advance(600)
    assert tracker.stats().missed_total == 1
    verdict = tracker.end(TaskEnd(id="hung"))
    assert verdict.missed and verdict.duration_s == pytest.approx(604.1)
    stats = tracker.stats()
    assert (stats.tasks_total, stats.missed_total, stats.running) == (1, 1, 0)


def test_overdue_tasks_are_found_by_any_call_without_a_timer(
        tracker: Tracker, clock: ManualClock) -> None:
    tracker.start(TaskStart(id="hung", type="fit", expected_seconds=1.0))
    clock.advance(10)
    tracker.start(TaskStart(id="next", type="fit", expected_seconds=1.0))
    assert tracker.stats().missed_total == 1


def test_task_without_any_expectation_counts_but_cannot_miss(
        tracker: Tracker, clock: ManualClock) -> None:
    assert run(tracker, clock, "x", 10_000.0, task_type="unknown", expected=None) is False
    stats = tracker.stats()
    assert (stats.tasks_total, stats.missed_total) == (1, 0)
    assert sum(stats.lateness_counts) == 0  # no limit, no lateness


def test_profile_wins_over_the_event_expectation(tracker: Tracker, clock: ManualClock) -> None:
    expectation = tracker.start(TaskStart(id="p", type="profiled", expected_seconds=1.0))
    assert (expectation.source, expectation.limit_s) == ("profile", 16.0)
    clock.advance(10)
    assert tracker.end(TaskEnd(id="p")).missed is False


def test_learned_expectation_flags_a_run_much_slower_than_the_usual(
        tracker: Tracker, clock: ManualClock) -> None:
    for i in range(5):
        assert run(tracker, clock, f"warm{i}", 2.0, expected=None) is False
    assert tracker.learned("fit") == pytest.approx(2.0)
    assert run(tracker, clock, "slow", 4.5, expected=None) is True  # limit 4.0


def test_burst_of_tasks_is_counted_exactly_and_memory_returns_to_empty(
        tracker: Tracker, clock: ManualClock) -> None:
    for i in range(5000):
        tracker.start(TaskStart(id=f"t{i}", type="fit", expected_seconds=2.0))
    assert tracker.stats().running == 5000
    clock.advance(3.0)
    for i in range(0, 5000, 2):
        tracker.end(TaskEnd(id=f"t{i}"))
    clock.advance(2.0)  # the odd ones pass their limit of 4 s while running
    stats = tracker.stats()
    assert (stats.tasks_total, stats.missed_total, stats.running) == (5000, 2500, 2500)
    for i in range(1, 5000, 2):
        tracker.end(TaskEnd(id=f"t{i}"))
    stats = tracker.stats()
    assert (stats.tasks_total, stats.missed_total, stats.running) == (5000, 2500, 0)
    assert stats.miss_ratio == 0.5
    assert len(tracker._deadlines) <= 64  # ended tasks do not pile up in the heap


def test_miss_ratio_recovers_after_the_window(clock: ManualClock) -> None:
    tracker = Tracker(make_settings(), clock=clock)
    run(tracker, clock, "late", 100.0)
    assert tracker.stats().miss_ratio == 1.0
    clock.advance(61)
    stats = tracker.stats()
    assert (stats.miss_ratio, stats.window_tasks, stats.missed_total) == (0.0, 0, 1)


def test_lateness_histogram_counts_in_time_tasks_at_zero(
        tracker: Tracker, clock: ManualClock) -> None:
    run(tracker, clock, "a", 1.0)  # 3 s early -> 0
    run(tracker, clock, "b", 6.0)  # 2 s late -> bucket le=2.5
    stats = tracker.stats()
    buckets = dict(zip((*stats.lateness_buckets, float("inf")), stats.lateness_counts,
                       strict=True))
    assert buckets[0.0] == 1 and buckets[2.5] == 1 and sum(stats.lateness_counts) == 2
    assert stats.lateness_sum == pytest.approx(2.0)


def test_event_timestamps_give_durations_instead_of_arrival_times(
        tracker: Tracker, clock: ManualClock) -> None:
    tracker.start(TaskStart(id="f", type="fit", expected_seconds=2.0, ts=clock.now - 100))
    tracker.end(TaskEnd(id="f", ts=clock.now - 97))  # ran 3 s, both lines read just now
    stats = tracker.stats()
    assert (stats.tasks_total, stats.missed_total) == (1, 0)


def test_clock_stepping_back_never_gives_negative_durations(
        tracker: Tracker, clock: ManualClock) -> None:
    tracker.start(TaskStart(id="s", type="fit", expected_seconds=2.0))
    clock.advance(-30)
    verdict = tracker.end(TaskEnd(id="s"))
    assert verdict.duration_s == 0.0 and not verdict.missed
