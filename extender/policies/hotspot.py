"""Recent-placement compensation: count just-placed pods as load until the metrics can show them.

Metrics lag placements by a scrape interval plus a refresh interval plus the rate() window. In a
burst, every pod of the burst would otherwise see the same "idlest" node and pile onto it. As in
Koordinator's load-aware scheduling, each placement is remembered with the pod's requests and
added to the node's estimated usage while
- it is younger than `window_s`, and
- the node's latest sample was taken less than `settle_s` after the placement (a later sample is
  assumed to include the pod).

The ledger holds state but does no I/O; the clock is passed in, so tests and the simulator drive it.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from extender.policies.model import FloatArray, PodDemand

MAX_PER_NODE = 256  # a bound on memory; a node receiving more within one window is saturated anyway


@dataclass(frozen=True, slots=True)
class Placement:
    at: float
    cpu_cores: float
    memory_bytes: float
    pod: str


@dataclass(frozen=True)
class Pending:
    """Estimated load not yet visible in the metrics, per candidate row."""

    cpu_cores: FloatArray
    memory_bytes: FloatArray

    @property
    def any(self) -> bool:
        return bool(self.cpu_cores.any() or self.memory_bytes.any())


class _NodeLog:
    """One node's placements in time order, with prefix sums so that the load placed after any
    instant is a difference of two sums found by bisection (O(log n) per candidate)."""

    __slots__ = ("times", "cum_cpu", "cum_mem", "placements", "keys")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cum_cpu: list[float] = [0.0]
        self.cum_mem: list[float] = [0.0]
        self.placements: list[Placement] = []
        self.keys: set[str] = set()

    def append(self, placement: Placement) -> None:
        # Threads may record a few microseconds out of order: keep the list sorted by clamping.
        at = max(placement.at, self.times[-1]) if self.times else placement.at
        self.times.append(at)
        self.cum_cpu.append(self.cum_cpu[-1] + placement.cpu_cores)
        self.cum_mem.append(self.cum_mem[-1] + placement.memory_bytes)
        self.placements.append(placement)
        self.keys.add(placement.pod)

    def forget_before(self, horizon: float, keep_at_most: int) -> None:
        k = max(bisect.bisect_left(self.times, horizon), len(self.times) - keep_at_most)
        if k <= 0:
            return
        for placement in self.placements[:k]:
            self.keys.discard(placement.pod)
        del self.times[:k], self.cum_cpu[:k], self.cum_mem[:k], self.placements[:k]

    def since(self, horizon: float, sample: float, settle_s: float) -> tuple[float, float]:
        """Load of placements at or after `horizon` that the sample taken at `sample` (NaN: none)
        cannot show yet, i.e. placed after `sample - settle_s`."""
        k = bisect.bisect_left(self.times, horizon)
        if sample == sample:
            k = max(k, bisect.bisect_right(self.times, sample - settle_s))
        return self.cum_cpu[-1] - self.cum_cpu[k], self.cum_mem[-1] - self.cum_mem[k]


class Ledger:
    """Thread-safe record of recent placements per node."""

    def __init__(self, window_s: float, settle_s: float) -> None:
        self.window_s = window_s
        self.settle_s = settle_s
        self._by_node: dict[str, _NodeLog] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_node)

    def record(self, node: str, pod: PodDemand, at: float) -> None:
        """Remember that `pod` was placed on `node` at time `at` (Unix seconds)."""
        with self._lock:
            log = self._by_node.get(node)
            if log is None:
                log = self._by_node[node] = _NodeLog()
            if pod.key in log.keys:
                return  # prioritize winner and bind may both report the same pod
            log.append(Placement(at, pod.cpu_cores, pod.memory_bytes, pod.key))
            log.forget_before(at - self.window_s, MAX_PER_NODE)
            if len(self._by_node) > 4 * MAX_PER_NODE:
                self._forget_idle(at - self.window_s)

    def _forget_idle(self, horizon: float) -> None:
        for node in [n for n, log in self._by_node.items() if log.times[-1] < horizon]:
            del self._by_node[node]

    def pending(self, names: Sequence[str], sampled_at: FloatArray, now: float) -> Pending:
        """Load to add per name: placements inside the window and newer than the node's sample.

        `sampled_at[i]` is the sample time of the node's usage metric (NaN if none).
        """
        return self.pending_rows({name: i for i, name in enumerate(names)}.get, len(names),
                                 sampled_at, now)

    def pending_rows(self, position: Callable[[str], int | None], count: int,
                     sampled_at: FloatArray, now: float) -> Pending:
        """`pending` for `count` candidates; `position(node)` is the node's candidate index
        (None or -1 when it is no candidate).

        Walks the ledger's nodes (a burst's few dozen), not the candidates (hundreds).
        """
        cpu = np.zeros(count)
        mem = np.zeros(count)
        horizon = now - self.window_s
        with self._lock:
            for node, log in self._by_node.items():
                i = position(node)
                if i is not None and i >= 0:
                    cpu[i], mem[i] = log.since(horizon, float(sampled_at[i]), self.settle_s)
        return Pending(cpu, mem)

    def snapshot(self, now: float) -> dict[str, list[Placement]]:
        """Placements still inside the window, per node (for the Monitoring API)."""
        horizon = now - self.window_s
        with self._lock:
            out = {node: [p for p in log.placements if p.at >= horizon]
                   for node, log in self._by_node.items()}
        return {node: placements for node, placements in out.items() if placements}
