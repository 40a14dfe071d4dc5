"""Recent-placement compensation: count just-placed pods as load until the metrics can show them.

Metrics lag placements by a scrape interval plus a refresh interval plus the rate() window. In a
burst, every pod of the burst would otherwise see the same "idlest" node and pile onto it. As in
Koordinator's load-aware scheduling, each placement is remembered with the pod's expected load
(`model.estimate_load`: its requests, or what its siblings use) and added to the node's usage
while
- it is younger than `window_s`, and
- the node's latest sample was taken less than `settle_s` after the placement (a later sample is
  assumed to include the pod).

Loads are summed in whole millicores and bytes (Kubernetes quantities have no finer grain). Two
ways to read them, with the same per-node arithmetic:
- `pending()` / `pending_rows()` walk the per-node logs (the reference, O(log n) per node);
- `pending_for()`, the webhook's, reads per-row totals kept for the latest NodeTable, recomputed
  for a node when it gets a placement and when its oldest counted placement leaves the window, so
  a request costs one gather however full the ledger is.

The ledger holds state but does no I/O; the clock is passed in, so tests and the simulator drive it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from extender.policies.model import FloatArray, IntArray, NodeTable, PodDemand

MAX_PER_NODE = 256  # a bound on memory; a node receiving more within one window is saturated anyway
CLOCK_SKEW_S = 1.0
"""Threads take the time before the ledger's lock, so calls arrive slightly out of time order. A
call up to this much behind the latest one sees the window as of that call (running totals only
move forward); further behind, the totals are rebuilt."""


class Placement(msgspec.Struct, frozen=True, gc=False):
    """One pod's expected load on a node from `at` on (Unix seconds).

    Untracked by the cyclic collector (only strings and numbers), as `informer.BoundPod` is:
    the ledger holds one per recently placed pod in every worker.
    """

    at: float
    cpu_cores: float
    memory_bytes: float
    pod: str
    """namespace/name, for people."""
    identity: str = ""
    """The pod's UID (else namespace/name): one placement per pod across every source."""
    confirmed: bool = False
    """Seen bound (bind, or the API server's watch) rather than guessed (prioritize's favourite)."""


@dataclass(frozen=True)
class Pending:
    """Estimated load not yet visible in the metrics, per candidate row."""

    cpu_cores: FloatArray
    memory_bytes: FloatArray

    @property
    def any(self) -> bool:
        return bool(self.cpu_cores.any() or self.memory_bytes.any())


def _millicores(cpu_cores: float) -> int:
    return round(cpu_cores * 1000)


class _NodeLog:
    """One node's placements in time order, with prefix sums so that the load placed after any
    instant is a difference of two sums found by bisection (O(log n) per candidate)."""

    __slots__ = ("times", "cum_mcpu", "cum_mem", "placements")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cum_mcpu: list[int] = [0]
        self.cum_mem: list[int] = [0]
        self.placements: list[Placement] = []

    def append(self, placement: Placement) -> None:
        # Threads may record a few microseconds out of order: keep the list sorted by clamping.
        at = max(placement.at, self.times[-1]) if self.times else placement.at
        self.times.append(at)
        self.cum_mcpu.append(self.cum_mcpu[-1] + _millicores(placement.cpu_cores))
        self.cum_mem.append(self.cum_mem[-1] + round(placement.memory_bytes))
        self.placements.append(placement)

    def remove(self, identity: str) -> Placement | None:
        """Take the pod's placement out (the prefix sums are rebuilt: at most MAX_PER_NODE)."""
        k = next((i for i, p in enumerate(self.placements) if p.identity == identity), None)
        if k is None:
            return None
        removed = self.placements[k]
        del self.times[k], self.placements[k]
        self.cum_mcpu = list(itertools.accumulate(
            (_millicores(p.cpu_cores) for p in self.placements), initial=0))
        self.cum_mem = list(itertools.accumulate(
            (round(p.memory_bytes) for p in self.placements), initial=0))
        return removed

    def forget_before(self, horizon: float, keep_at_most: int) -> list[Placement]:
        """Drop placements older than `horizon`, and the oldest beyond `keep_at_most`."""
        k = max(bisect.bisect_left(self.times, horizon), len(self.times) - keep_at_most)
        if k <= 0:
            return []
        dropped = self.placements[:k]
        del self.times[:k], self.cum_mcpu[:k], self.cum_mem[:k], self.placements[:k]
        return dropped

    def first_counted(self, horizon: float, sample: float, settle_s: float) -> int:
        """Index of the first placement at or after `horizon` that the sample taken at `sample`
        (NaN: none) cannot show yet, i.e. placed after `sample - settle_s`; all later ones count."""
        k = bisect.bisect_left(self.times, horizon)
        if sample == sample:
            k = max(k, bisect.bisect_right(self.times, sample - settle_s))
        return k

    def load_from(self, k: int) -> tuple[float, float]:
        """CPU cores and memory bytes of the placements from index `k` on."""
        return ((self.cum_mcpu[-1] - self.cum_mcpu[k]) / 1000,
                float(self.cum_mem[-1] - self.cum_mem[k]))


class _Totals:
    """Per-row pending load for one table, computed per node from its log as `pending_rows` does.

    A row changes when its node gets or loses a placement (recomputed then) and when its oldest
    counted placement leaves the window: a heap of (that placement's time, node) says when. Row
    `len(table)` (index -1) stays zero: it stands for candidates not in the table.
    """

    __slots__ = ("table", "column", "sampled", "settle_s", "cpu", "mem", "heap", "horizon")

    def __init__(self, table: NodeTable, column: int, settle_s: float, horizon: float,
                 logs: Mapping[str, _NodeLog]) -> None:
        self.table, self.column, self.settle_s, self.horizon = table, column, settle_s, horizon
        self.sampled = table.sampled_at[:, column].tolist()
        self.cpu = np.zeros(len(table.names) + 1)
        self.mem = np.zeros(len(table.names) + 1)
        self.heap: list[tuple[float, str]] = []
        for node, log in logs.items():
            # A log whose every placement left the window counts nothing and expires nothing:
            # skipping it keeps a new table's build proportional to the recent placements.
            if log.times and log.times[-1] >= horizon:
                self.update(node, log)

    def update(self, node: str, log: _NodeLog | None) -> None:
        """Recompute `node`'s row from its log (None: the ledger forgot it)."""
        row = self.table.index.get(node)
        if row is None:
            return
        if log is None:
            self.cpu[row] = self.mem[row] = 0.0
            return
        sample = self.sampled[row]
        k = log.first_counted(self.horizon, sample, self.settle_s)
        self.cpu[row], self.mem[row] = log.load_from(k)
        if k < len(log.times):
            heapq.heappush(self.heap, (log.times[k], node))

    def expire(self, horizon: float, logs: Mapping[str, _NodeLog]) -> None:
        self.horizon = max(self.horizon, horizon)
        heap = self.heap
        while heap and heap[0][0] < self.horizon:
            node = heapq.heappop(heap)[1]
            self.update(node, logs.get(node))


class Ledger:
    """Thread-safe record of recent placements per node, one per pod whoever reports it.

    Sources: prioritize's favourite and filter's only node (guesses), bind and the API server's
    watch of bound pods (confirmed). A confirmed placement moves a guessed one of the same pod;
    a guess never moves a confirmed one. `window_s` is the longest window any profile uses;
    each profile reads the ledger with its own window and settle time.
    """

    def __init__(self, window_s: float, settle_s: float) -> None:
        self.window_s = window_s
        self.settle_s = settle_s
        self._by_node: dict[str, _NodeLog] = {}
        self._where: dict[str, str] = {}
        """Pod identity -> node of its placement."""
        self._totals: dict[tuple[int, float, float], _Totals] = {}
        self._table: NodeTable | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_node)

    def record(self, node: str, pod: PodDemand, at: float, *, confirmed: bool = False) -> bool:
        """Remember that `pod` was placed on `node` at time `at` (Unix seconds), with its
        expected load; False when the ledger already knew better."""
        identity = pod.identity
        with self._lock:
            where = self._where.get(identity)
            if where is not None:
                old = self._by_node[where]
                known = next(p for p in old.placements if p.identity == identity)
                if where == node and (known.confirmed or not confirmed):
                    return False  # prioritize's winner and bind may both report the same pod
                if known.confirmed and not confirmed:
                    return False  # the API server said where it went
                old.remove(identity)
                self._update(where, old)
                if where == node:
                    at = known.at  # confirmation of a guess: the load started with the guess
            log = self._by_node.get(node)
            if log is None:
                log = self._by_node[node] = _NodeLog()
            log.append(Placement(at, pod.load_cpu_cores, pod.load_memory_bytes, pod.key,
                                 identity, confirmed))
            self._where[identity] = node
            for dropped in log.forget_before(at - self.window_s, MAX_PER_NODE):
                self._where.pop(dropped.identity, None)
            self._update(node, log)
            if len(self._by_node) > 4 * MAX_PER_NODE:
                self._forget_idle(at - self.window_s)
            return True

    def forget(self, identity: str) -> None:
        """The pod is gone (deleted, finished): its load leaves the node."""
        with self._lock:
            node = self._where.pop(identity, None)
            if node is not None:
                log = self._by_node[node]
                log.remove(identity)
                self._update(node, log)

    def _update(self, node: str, log: _NodeLog) -> None:
        for totals in self._totals.values():
            totals.update(node, log)

    def _forget_idle(self, horizon: float) -> None:
        # Every placement of these nodes is older than the window: their heap entries in the
        # totals expire on their own, and find no log then (a zero load).
        for node in [n for n, log in self._by_node.items()
                     if not log.times or log.times[-1] < horizon]:
            for placement in self._by_node.pop(node).placements:
                self._where.pop(placement.identity, None)

    def pending(self, names: Sequence[str], sampled_at: FloatArray, now: float) -> Pending:
        """Load to add per name: placements inside the window and newer than the node's sample.

        `sampled_at[i]` is the sample time of the node's usage metric (NaN if none).
        """
        return self.pending_rows({name: i for i, name in enumerate(names)}.get, len(names),
                                 sampled_at, now)

    def pending_rows(self, position: Callable[[str], int | None], count: int,
                     sampled_at: FloatArray, now: float, *, window_s: float | None = None,
                     settle_s: float | None = None) -> Pending:
        """`pending` for `count` candidates; `position(node)` is the node's candidate index
        (None or -1 when it is no candidate). `window_s`/`settle_s` default to the ledger's.

        Walks the ledger's nodes, not the candidates.
        """
        cpu = np.zeros(count)
        mem = np.zeros(count)
        horizon = now - (self.window_s if window_s is None else window_s)
        settle = self.settle_s if settle_s is None else settle_s
        with self._lock:
            for node, log in self._by_node.items():
                if not log.times or log.times[-1] < horizon:
                    continue  # every placement left the window: nothing pending
                i = position(node)
                if i is not None and i >= 0:
                    k = log.first_counted(horizon, float(sampled_at[i]), settle)
                    cpu[i], mem[i] = log.load_from(k)
        return Pending(cpu, mem)

    def pending_for(self, table: NodeTable, column: int, rows: IntArray, now: float, *,
                    window_s: float | None = None,
                    settle_s: float | None = None) -> Pending | None:
        """`pending` for the candidates at table `rows` (-1: not in the table), whose usage
        samples are `table.sampled_at[:, column]`; None when nothing is pending anywhere.

        Reads running totals kept for the latest table, one set per (column, window, settle)
        (built on the first call for a table).
        """
        window = self.window_s if window_s is None else window_s
        settle = self.settle_s if settle_s is None else settle_s
        horizon = now - window
        key = (column, window, settle)
        with self._lock:
            if self._table is not table:
                self._table, self._totals = table, {}
            totals = self._totals.get(key)
            if totals is None or horizon < totals.horizon - CLOCK_SKEW_S:
                totals = self._totals[key] = _Totals(table, column, settle, horizon,
                                                     self._by_node)
            else:
                totals.expire(horizon, self._by_node)
            if not totals.heap:
                return None
            return Pending(totals.cpu[rows], totals.mem[rows])

    def snapshot(self, now: float) -> dict[str, list[Placement]]:
        """Placements still inside the window, per node (for the Monitoring API)."""
        horizon = now - self.window_s
        with self._lock:
            out = {node: [p for p in log.placements if p.at >= horizon]
                   for node, log in self._by_node.items()}
        return {node: placements for node, placements in out.items() if placements}
