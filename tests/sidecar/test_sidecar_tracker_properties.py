"""Tracker invariants under arbitrary event sequences, checked against a small reference model.

Specification: every task gets exactly one verdict, a miss iff it ran (or has been running)
longer than expected * 1.5 + 1; bad events are counted and change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.sidecar.events import BadEvent, TaskEnd, TaskStart
from extender.sidecar.tracker import Tracker
from tests.sidecar.support import ManualClock, make_settings

IDS = st.sampled_from(["a", "b", "c", "d"])
OPS = st.lists(st.one_of(
    st.tuples(st.just("start"), IDS, st.sampled_from([1.0, 5.0])),
    st.tuples(st.just("end"), IDS, st.just(0.0)),
    # Quarter seconds are exact in binary: limits are compared without rounding surprises.
    st.tuples(st.just("wait"), st.just(""), st.integers(0, 80).map(lambda q: q / 4)),
), max_size=60)


@dataclass
class Model:
    running: dict[str, tuple[float, float]]  # id -> (started, limit)
    ended: int = 0
    ended_late: int = 0
    duplicates: int = 0
    orphans: int = 0

    def overdue(self, now: float) -> int:
        return sum(1 for started, limit in self.running.values() if now - started > limit)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_every_task_gets_exactly_one_verdict_and_bad_events_change_nothing(
        ops: list[tuple[str, str, float]]) -> None:
    clock = ManualClock()
    tracker = Tracker(make_settings(), clock=clock)
    model = Model(running={})
    for op, task_id, value in ops:
        if op == "wait":
            clock.advance(value)
        elif op == "start":
            try:
                tracker.start(TaskStart(id=task_id, type="fit", expected_seconds=value))
            except BadEvent as exc:
                assert exc.reason == "duplicate_id" and task_id in model.running
                model.duplicates += 1
            else:
                model.running[task_id] = (clock.now, value * 1.5 + 1.0)
        else:
            try:
                verdict = tracker.end(TaskEnd(id=task_id))
            except BadEvent as exc:
                assert exc.reason == "end_without_start" and task_id not in model.running
                model.orphans += 1
            else:
                started, limit = model.running.pop(task_id)
                assert verdict.missed == (clock.now - started > limit)
                model.ended += 1
                model.ended_late += verdict.missed
        stats = tracker.stats()
        assert stats.running == len(model.running)
        assert stats.tasks_total == model.ended + model.overdue(clock.now)
        assert stats.missed_total == model.ended_late + model.overdue(clock.now)
        assert stats.bad_events["duplicate_id"] == model.duplicates
        assert stats.bad_events["end_without_start"] == model.orphans
        assert 0.0 <= stats.miss_ratio <= 1.0
