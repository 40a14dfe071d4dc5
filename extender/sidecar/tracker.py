"""The task state machine: running tasks, verdicts, counters. The one source of truth.

Every event source (HTTP, event file, in-process API) calls `apply()`; the metrics collector and
the pusher read `stats()`, one consistent snapshot taken under the same lock. No I/O here; time
comes from an injected clock (default `time.time`, so that event `ts` fields, which are Unix
times, compare with it). A clock that steps back is held at its highest value.

A task gets exactly one verdict: when it ends, or when it passes its limit while running
(overdue, a miss), whichever comes first. `tasks_total` counts verdicts, so
`missed_total <= tasks_total` always holds. Overdue tasks are found with a heap of limits, checked
on every call, so a task that never ends is counted without a background timer.

A rejected event raises BadEvent after being counted in `bad_events[reason]`; the state is left
as it was, except an end stamped before its start, which removes the task without a verdict (it
did end, but its duration is unknown).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from extender.sidecar.estimate import DurationEstimator, Expectation, SlidingWindow, expect, is_miss
from extender.sidecar.events import REASONS, BadEvent, Event, Reason, TaskEnd, TaskStart
from extender.sidecar.settings import SidecarSettings

Clock = Callable[[], float]


@dataclass(frozen=True)
class TaskVerdict:
    """The judgement of one task, returned by `end()` and for overdue tasks."""

    id: str
    type: str
    expectation: Expectation
    duration_s: float
    """At the verdict: the full duration when it ended, the limit when found overdue."""
    missed: bool


@dataclass(frozen=True)
class Stats:
    """A consistent snapshot of everything the sidecar publishes."""

    tasks_total: int
    missed_total: int
    running: int
    miss_ratio: float
    """Over the sliding window; 0.0 when the window holds no verdict."""
    window_tasks: int
    lateness_buckets: tuple[float, ...]
    lateness_counts: tuple[int, ...]
    """Per bucket, not cumulative; one more entry than buckets (the +Inf bucket)."""
    lateness_sum: float
    bad_events: Mapping[str, int]


@dataclass(eq=False)
class _Running:
    id: str
    type: str
    started_at: float
    expectation: Expectation
    overdue: bool = False


@dataclass
class _Counters:
    tasks: int = 0
    missed: int = 0
    lateness_sum: float = 0.0
    lateness: list[int] = field(default_factory=list)
    bad: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))


class Tracker:
    """Running tasks and their verdicts; thread-safe.

    `profile` maps task type -> expected seconds (wins over the event's expected_seconds).
    """

    def __init__(self, settings: SidecarSettings, *, profile: Mapping[str, float] | None = None,
                 clock: Clock = time.time) -> None:
        self._settings = settings
        self._profile = dict(profile or {})
        self._clock = clock
        self._last_now = -math.inf
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._deadlines: list[tuple[float, int, _Running]] = []
        self._seq = itertools.count()
        self._estimator = DurationEstimator(settings.estimator)
        self._window = SlidingWindow(settings.window.seconds, settings.window.buckets)
        self._counters = _Counters(lateness=[0] * (len(settings.lateness_buckets) + 1))

    # --- events --------------------------------------------------------------------------------

    def apply(self, event: Event) -> Expectation | TaskVerdict:
        """Apply one decoded event: `start()` or `end()`."""
        if isinstance(event, TaskStart):
            return self.start(event)
        return self.end(event)

    def start(self, event: TaskStart) -> Expectation:
        """Start tracking a task; its expectation (and so its limit) is fixed now.

        Raises BadEvent `duplicate_id` or `too_many_running`.
        """
        with self._lock:
            now = self._now()
            self._expire(now)
            if event.id in self._running:
                self._bad("duplicate_id", f"task {event.id!r} is already running")
            if len(self._running) >= self._settings.max_running:
                self._bad("too_many_running", f"task {event.id!r} rejected: "
                          f"{len(self._running)} tasks running (max_running)")
            expectation = expect(event.type, event.expected_seconds, profile=self._profile,
                                 estimator=self._estimator, jitter=self._settings.jitter)
            started = now if event.ts is None else event.ts
            task = _Running(event.id, event.type, started, expectation)
            self._running[event.id] = task
            if math.isfinite(expectation.limit_s):
                heapq.heappush(self._deadlines,
                               (started + expectation.limit_s, next(self._seq), task))
                self._compact()
            return expectation

    def end(self, event: TaskEnd) -> TaskVerdict:
        """Finish a task and judge it (unless it already got its overdue verdict).

        Raises BadEvent `end_without_start` or `clock_backwards`.
        """
        with self._lock:
            now = self._now()
            task = self._running.get(event.id)
            if task is None:
                self._bad("end_without_start", f"task {event.id!r} is not running "
                          "(never started, already ended, or rejected at start)")
            ended = now if event.ts is None else event.ts
            if ended < task.started_at:
                del self._running[event.id]
                self._bad("clock_backwards", f"task {event.id!r} ends at {ended:.3f}, before "
                          f"its start at {task.started_at:.3f}; dropped without a verdict")
            # Up to the end only: a late-arriving end stamped in time must not be found overdue.
            self._expire(min(now, ended))
            del self._running[event.id]
            duration = ended - task.started_at
            self._estimator.observe(task.type, duration)
            missed = is_miss(duration, task.expectation.limit_s)
            if not task.overdue:
                self._verdict(ended, missed)
            if math.isfinite(task.expectation.limit_s):
                self._observe_lateness(duration - task.expectation.limit_s)
            return TaskVerdict(task.id, task.type, task.expectation, duration, missed)

    def reject(self, error: BadEvent) -> None:
        """Count an event rejected before reaching the tracker (decoding errors)."""
        with self._lock:
            self._counters.bad[error.reason] += 1

    # --- reading ------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """Everything published, as of now (overdue tasks counted first)."""
        with self._lock:
            now = self._now()
            self._expire(now)
            window_tasks, _ = self._window.counts(now)
            c = self._counters
            return Stats(
                tasks_total=c.tasks, missed_total=c.missed, running=len(self._running),
                miss_ratio=self._window.ratio(now), window_tasks=window_tasks,
                lateness_buckets=self._settings.lateness_buckets,
                lateness_counts=tuple(c.lateness), lateness_sum=c.lateness_sum,
                bad_events=dict(c.bad),
            )

    def learned(self, task_type: str) -> float | None:
        """The online estimate for `task_type` in seconds, if learned yet."""
        with self._lock:
            return self._estimator.learned(task_type)

    # --- internals (lock held) -----------------------------------------------------------------

    def _now(self) -> float:
        self._last_now = max(self._last_now, self._clock())
        return self._last_now

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] < now:
            _, _, task = heapq.heappop(self._deadlines)
            if self._running.get(task.id) is task and not task.overdue:
                task.overdue = True
                # Counted in the window when found (within a push interval of passing its
                # limit), so that a long-hung task is not already outside the window.
                self._verdict(now, True)

    def _compact(self) -> None:
        # Ended tasks stay in the heap until their limit passes; rebuild before they dominate.
        if len(self._deadlines) > 2 * len(self._running) + 64:
            self._deadlines = [entry for entry in self._deadlines
                               if self._running.get(entry[2].id) is entry[2]]
            heapq.heapify(self._deadlines)

    def _verdict(self, at: float, missed: bool) -> None:
        self._counters.tasks += 1
        self._counters.missed += int(missed)
        self._window.add(at, missed)

    def _observe_lateness(self, late_s: float) -> None:
        late = max(late_s, 0.0)
        self._counters.lateness[bisect_left(self._settings.lateness_buckets, late)] += 1
        self._counters.lateness_sum += late

    def _bad(self, reason: Reason, message: str) -> NoReturn:
        self._counters.bad[reason] += 1
        raise BadEvent(reason, message)
