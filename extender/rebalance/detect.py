"""Which nodes stay hot, which can take work: pure, from one metrics table per cycle.

Design decisions:
- The debounce state is an immutable value (`Debounce`) passed from cycle to cycle: `detect`
  returns the next one, so a test (or the simulator) drives any sequence of cycles without a
  controller, and a restart simply starts counting again.
- Only fresh data counts (at most `max_staleness_s` old, as the extender's cache decides). A
  stale or missing value is neither hot nor cool and resets that metric's count: an eviction
  needs `debounce_cycles` consecutive fresh observations over the limit, never an old one.
- A node is hot as soon as one metric has been over its limit long enough; it is cool (a
  possible destination) only when every configured metric is fresh and on the cool side.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from extender.policies.model import NodeTable
from extender.rebalance.settings import Threshold


@dataclass(frozen=True)
class Debounce:
    """Consecutive cycles each (node, metric) has been over its hot limit, fresh data only."""

    counts: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def cycles(self, node: str, metric: str) -> int:
        return self.counts.get((node, metric), 0)

    def reset(self, node: str) -> Debounce:
        """The state with `node`'s counts cleared (after an eviction from it)."""
        return Debounce({key: n for key, n in self.counts.items() if key[0] != node})


@dataclass(frozen=True)
class Breach:
    """One metric over its hot limit on one node."""

    metric: str
    value: float
    limit: float
    above: bool
    cycles: int

    @property
    def excess(self) -> float:
        """How far past the limit (positive)."""
        return self.value - self.limit if self.above else self.limit - self.value


@dataclass(frozen=True)
class Detection:
    """What one cycle found."""

    hot: Mapping[str, tuple[Breach, ...]]
    """Nodes over a limit for at least `debounce_cycles` cycles -> their debounced breaches."""
    warming: Mapping[str, tuple[Breach, ...]]
    """Nodes over a limit, not yet long enough."""
    cool: frozenset[str]
    """Nodes with every metric fresh and on the cool side."""
    stale: Mapping[str, tuple[str, ...]]
    """Nodes -> configured metrics with missing or stale values (never hot, never cool)."""
    state: Debounce


def detect(table: NodeTable, thresholds: Mapping[str, Threshold], state: Debounce, *,
           now: float, max_staleness_s: float, debounce_cycles: int) -> Detection:
    """Classify every node of `table` and count the debounce one cycle further."""
    counts: dict[tuple[str, str], int] = {}
    hot: dict[str, list[Breach]] = {}
    warming: dict[str, list[Breach]] = {}
    stale: dict[str, list[str]] = {}
    n = len(table.names)
    not_cool = np.zeros(n, bool)
    for metric, rule in thresholds.items():
        j = table.column.get(metric)
        if j is None:
            values, sampled = np.full(n, np.nan), np.full(n, np.nan)
        else:
            values, sampled = table.values[:, j], table.sampled_at[:, j]
        with np.errstate(invalid="ignore"):
            fresh = ~np.isnan(values) & (now - sampled <= max_staleness_s)
            over = fresh & ((values > rule.hot) if rule.above else (values < rule.hot))
            cool = fresh & ((values < rule.cool) if rule.above else (values > rule.cool))
        not_cool |= ~cool
        for i in np.flatnonzero(~fresh).tolist():
            # The count is dropped: stale data never carries a node towards eviction.
            stale.setdefault(table.names[i], []).append(metric)
        for i in np.flatnonzero(over).tolist():
            node = table.names[i]
            c = counts[(node, metric)] = state.cycles(node, metric) + 1
            breach = Breach(metric, float(values[i]), rule.hot, rule.above, c)
            (hot if c >= debounce_cycles else warming).setdefault(node, []).append(breach)
    for node in hot:
        warming.pop(node, None)
    return Detection(
        hot={n: tuple(sorted(b, key=lambda x: -x.excess)) for n, b in sorted(hot.items())},
        warming={n: tuple(b) for n, b in sorted(warming.items())},
        cool=frozenset(itertools.compress(table.names, (~not_cool).tolist())),
        stale={n: tuple(m) for n, m in sorted(stale.items())},
        state=Debounce(counts))
