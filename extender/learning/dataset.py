"""Training samples: one feature row per placement (or per node and time) and its outcome.

From the simulator (`from_replay`): the replay runs a behaviour policy; at every placement the
feature row of the chosen node is computed from the table the extender would hold at that moment
(observed usage with the replay's metrics lag, the current allocation) and the pod's demand, by
the same `FeatureSet.matrix` the `learned` term serves with. The label is the task's outcome
when it ends: whether it missed its deadline (and its slowdown). Only placed tasks are samples:
a task that fits nowhere has no node to learn about.

From a live cluster (`from_monitoring`): node metrics from Prometheus history through the
Monitoring API, on a time grid; the label of (node, t) is whether the deadline sidecars of that
node reported a miss (deadline_miss_ratio > 0) within `horizon` after t. The history does not say
which pod ran where, so these samples carry node features only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from extender.client import MonitoringClient
from extender.errors import ExtenderError
from extender.monitoring.model import History
from extender.openb import Nodes, Pods
from extender.policies.baselines import Bools, Choice, ClusterView, Policy, Task
from extender.policies.learned import FeatureSet
from extender.policies.model import FloatArray
from extender.sim.cluster import Stateful
from extender.sim.policies import OursPolicy
from extender.sim.replay import Observation

REPLAY_FEATURES = (
    "node.cpu_utilisation", "node.memory_available_ratio", "node.gpu_utilisation",
    "node.gpu_memory_free_ratio", "node.host_power_watts", "node.deadline_miss_ratio",
    "node.cpu_cores", "node.memory_total_bytes",
    "pod.cpu_cores", "pod.memory_bytes", "pod.gpus", "pod.gpu_milli",
    "alloc.cpu_free_cores", "alloc.memory_free_bytes", "alloc.gpus_free", "alloc.gpu_idle_share",
    "fit.cpu_utilisation_after", "fit.memory_available_after", "fit.cpu_free_after_cores",
)
"""The features the simulator models (see extender.sim.policies.METRICS)."""

LIVE_METRICS = ("cpu_utilisation", "memory_available_ratio", "gpu_utilisation",
                "deadline_miss_ratio")
"""Node metrics read from history by default: named alike in the Monitoring API's catalog and
the scoring catalog (`node.<name>` features)."""
LABEL_METRIC = "deadline_miss_ratio"


@dataclass(frozen=True, eq=False)
class Samples:
    """Feature rows, their labels, and where in time each was taken."""

    features: tuple[str, ...]
    x: FloatArray
    missed: npt.NDArray[np.bool_]
    slowdown: FloatArray
    """NaN where unknown (live samples)."""
    position: FloatArray
    """0..1: how far into its run the sample was taken (the share of the replay's placements
    made before it; the share of the history window)."""
    description: str

    def __len__(self) -> int:
        return len(self.missed)

    @property
    def positives(self) -> int:
        return int(self.missed.sum())

    def where(self, mask: npt.NDArray[np.bool_], description: str) -> Samples:
        return Samples(self.features, self.x[mask], self.missed[mask], self.slowdown[mask],
                       self.position[mask], description)

    def split(self, train_share: float) -> tuple[Samples, Samples]:
        """(first `train_share` of the time, the rest): a split by time, never at random."""
        early = self.position < train_share
        return (self.where(early, f"{self.description}, first {train_share:.0%} of the time"),
                self.where(~early, f"{self.description}, last {1 - train_share:.0%} of the time"))

    @staticmethod
    def concat(parts: Sequence[Samples], description: str) -> Samples:
        if not parts:
            raise ExtenderError("no samples")
        features = parts[0].features
        if any(p.features != features for p in parts):
            raise ExtenderError("samples with different feature lists cannot be combined")
        return Samples(features, np.vstack([p.x for p in parts]),
                       np.concatenate([p.missed for p in parts]),
                       np.concatenate([p.slowdown for p in parts]),
                       np.concatenate([p.position for p in parts]), description)


class Recorder:
    """A behaviour policy wrapped to record, at each placement, the chosen node's feature row
    as the extender would have seen it (the table of `feed`, an OursPolicy used as the metrics
    pipeline only)."""

    def __init__(self, behaviour: Policy, feed: OursPolicy, features: FeatureSet) -> None:
        self.behaviour = behaviour
        self.feed = feed
        self.features = features
        self.rows: list[FloatArray] = []
        self.names: list[str] = []
        self.times: list[float] = []
        self._table = None

    def observe(self, observation: Observation) -> None:
        self.feed.observe(observation)
        if isinstance(self.behaviour, Stateful):
            self.behaviour.observe(observation)

    def __call__(self, task: Task, view: ClusterView, ok: Bools,
                 rng: np.random.Generator) -> Choice:
        self._table = self.feed.table(view)  # type: ignore[assignment]
        return self.behaviour(task, view, ok, rng)

    def placed(self, node: int, task: Task, name: str) -> None:
        assert self._table is not None, "placed before a decision"
        row = self.features.matrix(self.feed.demand(task, name), self._table,
                                   np.array([node], dtype=np.intp))
        self.rows.append(row[0])
        self.names.append(name)
        self.times.append(self.feed.clock)
        if isinstance(self.behaviour, Stateful):
            self.behaviour.placed(node, task, name)


def from_replay(nodes: Nodes, pods: Pods, behaviour: Policy, feed: OursPolicy, *,
                features: Sequence[str] = REPLAY_FEATURES, speedup: float, seed: int,
                description: str, max_staleness_s: float = 90.0) -> Samples:
    """One replay under `behaviour`; a sample per placed task (see the module docstring)."""
    from extender.sim.replay import run_replay

    recorder = Recorder(behaviour, feed, FeatureSet(tuple(features), max_staleness_s))
    outcome: dict[int, tuple[float, bool]] = {}

    def ended(i: int, slowdown: float, missed: bool) -> None:
        outcome[i] = (slowdown, missed)

    run_replay(nodes, pods, recorder, name=description, seed=seed, speedup=speedup,
               on_task_end=ended)
    index = {name: i for i, name in enumerate(pods.names)}
    keep = [k for k, name in enumerate(recorder.names) if index[name] in outcome]
    if not keep:
        raise ExtenderError(f"{description}: the replay placed no task that ended")
    labels = [outcome[index[recorder.names[k]]] for k in keep]
    # Position in time = the share of the run's placements made before: arrivals in the trace
    # are bursty, so a cut at a share of the time span would leave one side nearly empty.
    times = np.array([recorder.times[k] for k in keep])
    position = np.empty(len(times))
    position[np.argsort(times, kind="stable")] = np.arange(len(times)) / len(times)
    return Samples(tuple(features), np.vstack([recorder.rows[k] for k in keep]),
                   np.array([m for _, m in labels], bool), np.array([s for s, _ in labels]),
                   position, description)


def _series_by_node(history: History) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = {}
    for series in history.series:
        node = series.labels.get("node")
        if node:
            out.setdefault(node, {}).update({round(float(t), 3): float(v) for t, v in series.points})
    return out


def from_monitoring(client: MonitoringClient, *, start: float, end: float, step_s: float,
                    horizon_s: float, metrics: Sequence[str] = LIVE_METRICS) -> Samples:
    """Samples from a live cluster's history (see the module docstring): one per node and grid
    time that has a label, i.e. deadline series within `horizon_s` after it."""
    if not end > start or step_s <= 0 or horizon_s < step_s:
        raise ExtenderError("history: need start < end, step > 0 and horizon >= step")
    known = {m.name: m for m in client.metrics()}
    absent = [m for m in (*metrics, LABEL_METRIC) if m not in known
              or "node" not in {level.name for level in known[m].levels}]
    if absent:
        raise ExtenderError(f"the Monitoring API has no node-level metric {', '.join(absent)}")
    values = {m: _series_by_node(client.history(m, level="node", start=start, end=end,
                                                step=step_s)) for m in metrics}
    answer = client.history(LABEL_METRIC, level="node", start=start, end=end, step=step_s)
    labels = _series_by_node(answer)
    # The API aligns the range to its step: the grid is the answer's, not the one asked for.
    grid = np.arange(answer.start, answer.end - horizon_s + answer.step / 2, answer.step)
    rows: list[list[float]] = []
    missed: list[bool] = []
    position: list[float] = []
    for node, points in sorted(labels.items()):
        times = np.array(sorted(points))
        ratios = np.array([points[t] for t in times])
        for t in grid.tolist():
            ahead = (times > t) & (times <= t + horizon_s + 1e-9)
            if not ahead.any():
                continue
            rows.append([values[m].get(node, {}).get(round(t, 3), np.nan) for m in metrics])
            missed.append(bool((ratios[ahead] > 0).any()))
            position.append((t - answer.start) / max(answer.end - answer.start, 1e-9))
    if not rows:
        raise ExtenderError("history: no node has deadline series in the window (are the "
                            "deadline sidecars pushing?)")
    return Samples(tuple(f"node.{m}" for m in metrics), np.array(rows, dtype=np.float64),
                   np.array(missed, bool), np.full(len(rows), np.nan), np.array(position),
                   f"Monitoring API history {len(labels)} nodes, step {step_s:g}s, horizon "
                   f"{horizon_s:g}s")
