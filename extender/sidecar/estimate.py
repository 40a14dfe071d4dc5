"""Expected durations, the miss rule and the sliding miss ratio. Pure: no clock, no I/O.

Expected duration of a task, first available wins:
1. the profile file's entry for its type (measured offline, the stable reference);
2. the event's own `expected_seconds`;
3. the online estimate learned from this sidecar's finished runs of the type;
4. none: the task is counted, teaches the estimator, but cannot miss.

Online estimator: a robust EWMA of log(duration) per type. Log space because durations are
multiplicative (a 2x slowdown is the same step for a 1 s and a 1 h task) and roughly log-normal.
Before each update, the sample's distance from the mean is clamped to `clamp` times the EWMA of
absolute deviations (floored at DEV_FLOOR), as a Huber estimator does: one hung run or one cache
hit moves the estimate by at most alpha * clamp * deviation, while a lasting change of speed widens
the deviation and is learned within a few times 1/alpha runs. The first `min_samples` runs use a
plain running mean (no clamp, nothing published yet). The estimate is exp(mean), a median-like
typical duration. It is learned per sidecar, so it adapts to a node that stays slow: it detects a
node getting worse; a profile gives an absolute expectation.

Miss rule: duration > expected * (1 + relative) + absolute. A task still running past that limit
is a miss from the moment it passes it, counted once (its end, if any, adds nothing).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from extender.sidecar.settings import EstimatorSettings, JitterSettings

DEV_FLOOR = 0.1
"""Minimum deviation in log space (about 10 %): durations that repeated exactly so far must not
freeze the estimate, since a clamp of 0 would reject every later change."""
MIN_DURATION_S = 1e-3
"""Durations are floored before taking the log (an instant task would give log(0))."""

Source = Literal["profile", "event", "learned", "none"]


@dataclass(frozen=True)
class Expectation:
    """The expected duration of one task, where it came from, and its miss limit."""

    seconds: float | None
    source: Source
    limit_s: float
    """Duration above which the task is a miss (inf when nothing is expected)."""


def limit_s(expected_s: float, jitter: JitterSettings) -> float:
    """The miss limit: expected * (1 + relative) + absolute, in seconds."""
    return expected_s * (1.0 + jitter.relative) + jitter.absolute_s


def is_miss(duration_s: float, limit: float) -> bool:
    """True when a task that ran `duration_s` seconds missed its `limit` (strictly above)."""
    return duration_s > limit


@dataclass
class _LogEwma:
    mean: float = 0.0
    dev: float = 0.0
    samples: int = 0

    def update(self, duration_s: float, settings: EstimatorSettings) -> None:
        x = math.log(max(duration_s, MIN_DURATION_S))
        self.samples += 1
        if self.samples <= settings.min_samples:
            # Warm-up: a running mean, so the first estimate is not the first sample alone.
            weight = 1.0 / self.samples
            residual = x - self.mean if self.samples > 1 else 0.0
        else:
            weight = settings.alpha
            bound = settings.clamp * max(self.dev, DEV_FLOOR)
            residual = min(max(x - self.mean, -bound), bound)
        if self.samples == 1:
            self.mean = x
        else:
            self.mean += weight * residual
        self.dev += weight * (abs(residual) - self.dev)


class DurationEstimator:
    """Learned duration per task type; memory bounded by `max_types` (least recent forgotten)."""

    def __init__(self, settings: EstimatorSettings) -> None:
        self._settings = settings
        self._types: OrderedDict[str, _LogEwma] = OrderedDict()

    def observe(self, task_type: str, duration_s: float) -> None:
        """Learn from one finished run of `task_type` that took `duration_s` seconds."""
        state = self._types.pop(task_type, None) or _LogEwma()
        state.update(duration_s, self._settings)
        self._types[task_type] = state
        while len(self._types) > self._settings.max_types:
            self._types.popitem(last=False)

    def learned(self, task_type: str) -> float | None:
        """The learned typical duration in seconds, or None before `min_samples` runs."""
        state = self._types.get(task_type)
        if state is None or state.samples < self._settings.min_samples:
            return None
        return math.exp(state.mean)

    def __len__(self) -> int:
        return len(self._types)


def expect(task_type: str, event_expected_s: float | None, *, profile: Mapping[str, float],
           estimator: DurationEstimator, jitter: JitterSettings) -> Expectation:
    """The expectation for a task: profile > event > learned > none (see module docstring)."""
    candidates: tuple[tuple[float | None, Source], ...] = (
        (profile.get(task_type), "profile"),
        (event_expected_s, "event"),
        (estimator.learned(task_type), "learned"),
    )
    for seconds, source in candidates:
        if seconds is not None:
            return Expectation(seconds, source, limit_s(seconds, jitter))
    return Expectation(None, "none", math.inf)


class SlidingWindow:
    """Miss ratio of the verdicts of the last `seconds`, kept as `buckets` time buckets.

    Memory is at most `buckets` entries whatever the task rate; a verdict leaves the window
    between `seconds * (1 - 1/buckets)` and `seconds` after it was added. A time earlier than the
    newest bucket (clock stepped back) is added to the newest bucket.
    """

    def __init__(self, seconds: float, buckets: int) -> None:
        self._width = seconds / buckets
        self._buckets = buckets
        self._ring: deque[list[int]] = deque()  # [bucket index, verdicts, misses]

    def add(self, now: float, missed: bool) -> None:
        """Count one verdict at time `now` (seconds, any epoch consistent across calls)."""
        index = math.floor(now / self._width)
        if not self._ring or index > self._ring[-1][0]:
            self._ring.append([index, 0, 0])
        newest = self._ring[-1]
        newest[1] += 1
        newest[2] += int(missed)
        self._prune(index)

    def counts(self, now: float) -> tuple[int, int]:
        """(verdicts, misses) inside the window at time `now`."""
        self._prune(math.floor(now / self._width))
        return sum(b[1] for b in self._ring), sum(b[2] for b in self._ring)

    def ratio(self, now: float) -> float:
        """Misses / verdicts in the window; 0.0 when the window holds no verdict."""
        total, missed = self.counts(now)
        return missed / total if total else 0.0

    def _prune(self, index: int) -> None:
        while self._ring and self._ring[0][0] <= index - self._buckets:
            self._ring.popleft()
