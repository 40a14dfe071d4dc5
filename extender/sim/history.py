"""Risk aggregates (catalog entries with `risk`) computed from the simulated metrics history.

In production Prometheus evaluates `(EXPR)[window:resolution]` at every multiple of `resolution`
from `now - window` to `now` (both ends included in Prometheus 2.x; 3.x leaves out the first)
and aggregates those values. The simulator does the same over what its metrics pipeline shows:
at each decision it holds the observed value of the entry's `risk.of` metric as of the lagged
time `seen` (see `extender.sim.replay.Observation`), and records it for every resolution step
passed since the previous decision. A step's value is therefore the first observation made at or
after it: exact when nothing changed on the node between the step and that observation (at the
trace's arrival rates, the next decision follows within seconds). Steps before the first
observation are absent, as a series that did not exist yet: the aggregate is then over fewer
values, and NaN (missing) before any.
"""

from __future__ import annotations

import math
import warnings
from collections import deque

import numpy as np
import numpy.typing as npt

from extender.settings import RiskAggregate, duration_s

F64 = npt.NDArray[np.float64]


class RiskSeries:
    """The values of one metric at the resolution steps of one risk aggregate."""

    def __init__(self, risk: RiskAggregate) -> None:
        self.risk = risk
        self.window_s = duration_s(risk.window)
        self.step_s = duration_s(risk.resolution)
        self._steps: deque[tuple[float, F64]] = deque()
        self._last_step = -math.inf

    def record(self, seen: float, values: F64) -> None:
        """The metric as observed at `seen`: the value of every step since the last record."""
        step = math.floor(seen / self.step_s) * self.step_s
        # Before the first observation the series did not exist: no steps are filled for then.
        first = step if self._last_step == -math.inf else max(self._last_step + self.step_s,
                                                               step - self.window_s)
        if step < first:
            return
        snapshot = values.copy()
        for t in np.arange(first, step + self.step_s / 2, self.step_s).tolist():
            self._steps.append((t, snapshot))
        self._last_step = step
        while self._steps and self._steps[0][0] < step - self.window_s - 1e-9:
            self._steps.popleft()

    def aggregate(self, seen: float) -> F64 | None:
        """mean + k·sd (population) or the quantile (linear interpolation, as PromQL) of the
        steps in [seen - window, seen]; None before the first record."""
        low = seen - self.window_s - 1e-9
        kept = [values for t, values in self._steps if low <= t <= seen + 1e-9]
        if not kept:
            return None
        stack = np.vstack(kept)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            if self.risk.quantile is not None:
                out: F64 = np.nanquantile(stack, self.risk.quantile, axis=0)
                return out
            k = float(self.risk.k or 0.0)
            result: F64 = np.nanmean(stack, axis=0) + k * np.nanstd(stack, axis=0)
            return result
