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

import threading
from collections import deque
from collections.abc import Sequence
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


class Ledger:
    """Thread-safe record of recent placements per node."""

    def __init__(self, window_s: float, settle_s: float) -> None:
        self.window_s = window_s
        self.settle_s = settle_s
        self._by_node: dict[str, deque[Placement]] = {}
        self._lock = threading.Lock()

    def record(self, node: str, pod: PodDemand, at: float) -> None:
        """Remember that `pod` was placed on `node` at time `at` (Unix seconds)."""
        placement = Placement(at, pod.cpu_cores, pod.memory_bytes, pod.key)
        with self._lock:
            queue = self._by_node.get(node)
            if queue is None:
                queue = self._by_node[node] = deque(maxlen=MAX_PER_NODE)
            if any(p.pod == placement.pod for p in queue):
                return  # prioritize winner and bind may both report the same pod
            queue.append(placement)

    def pending(self, names: Sequence[str], sampled_at: FloatArray, now: float) -> Pending:
        """Load to add per name: placements inside the window and newer than the node's sample.

        `sampled_at[i]` is the sample time of the node's usage metric (NaN if none).
        """
        cpu = np.zeros(len(names))
        mem = np.zeros(len(names))
        horizon = now - self.window_s
        with self._lock:
            if not self._by_node:
                return Pending(cpu, mem)
            for node in [n for n, q in self._by_node.items() if q and q[-1].at < horizon]:
                del self._by_node[node]
            by_node = self._by_node
            for i, name in enumerate(names):
                queue = by_node.get(name)
                if not queue:
                    continue
                sample = sampled_at[i]
                for p in queue:
                    if p.at >= horizon and not (sample >= p.at + self.settle_s):
                        cpu[i] += p.cpu_cores
                        mem[i] += p.memory_bytes
        return Pending(cpu, mem)

    def snapshot(self, now: float) -> dict[str, list[Placement]]:
        """Placements still inside the window, per node (for the Monitoring API)."""
        horizon = now - self.window_s
        with self._lock:
            return {node: [p for p in q if p.at >= horizon] for node, q in self._by_node.items()
                    if any(p.at >= horizon for p in q)}
