"""Which pods leave which hot node, and where the extender expects them to go: pure.

Design decisions:
- A pod is only a candidate if evicting it is safe and useful: a controller recreates it, it is
  no mirror, DaemonSet, critical or local-storage pod, it did not opt out, and it is older than
  `min_pod_age_s` (each rule a switch in `exclude`). Candidates go lowest priority first, then
  the largest share of the hot metric (from the pod's requests: its CPU cores over the node's
  cores for CPU utilisation, and so on, see `Threshold.load`).
- A candidate is evicted only when the extender's own engine, scoring the pod as it would at
  admission, ranks some other node at least `margin` points above the pod's current node, with
  the pod's load added to that node. The destination must fit the pod's requests, be cool on
  every threshold, stay below every hot limit with the pod added, and not be in cool-down. So
  the pod cannot bounce back: where it lands is not hot, and its old node needs
  `debounce_cycles` fresh hot cycles again before it loses another pod.
- Each move updates a working copy of the values (the source loses the pod's share, the
  destination gains it), so later choices in the same cycle see the earlier ones, and a node
  stops losing pods once it is projected below its limits.
- The explanation names the expected destination and the scores; kube-scheduler makes the
  real choice when the controller recreates the pod.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from extender.policies.engine import Engine
from extender.policies.model import FloatArray, NodeTable, PodDemand
from extender.rebalance.detect import Breach, Detection
from extender.rebalance.settings import RebalanceSettings, Threshold
from extender.settings import Settings

CRITICAL_CLASSES = frozenset({"system-node-critical", "system-cluster-critical"})


@dataclass(frozen=True)
class PodView:
    """What the rebalancer needs of a pod bound to a node."""

    namespace: str
    name: str
    node: str
    demand: PodDemand
    created_at: float
    uid: str = ""
    priority: int = 0
    priority_class: str = ""
    owner_kind: str | None = None
    """Kind of the controller owner reference (None: no controller)."""
    mirror: bool = False
    local_storage: bool = False
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NodeRoom:
    """What the rebalancer needs of a node: may it receive pods, and how much is free."""

    name: str
    schedulable: bool = True
    """False when cordoned or tainted NoSchedule/NoExecute (tolerations are not evaluated)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu_free_cores: float = float("inf")
    memory_free_bytes: float = float("inf")
    gpus_free: int = 0


@dataclass(frozen=True)
class Eviction:
    """One pod to evict, and why."""

    pod: PodView
    metric: str
    value: float
    """The node's value of `metric` before this eviction (after earlier ones of the cycle)."""
    projected: float
    """The value expected once the pod has left."""
    limit: float
    destination: str
    source_score: int
    destination_score: int
    explanation: str


@dataclass(frozen=True)
class Skip:
    """A pod (or node) left alone, with a reason code for counters and a sentence."""

    pod: str
    node: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class EvictionPlan:
    evictions: tuple[Eviction, ...]
    skips: tuple[Skip, ...]


def exclusion(pod: PodView, settings: RebalanceSettings, now: float) -> str | None:
    """The reason code why `pod` may not be evicted at all, or None."""
    ex = settings.exclude
    if pod.namespace in ex.namespaces:
        return "excluded:namespace"
    if ex.mirror_pods and pod.mirror:
        return "excluded:mirror"
    if ex.daemonsets and pod.owner_kind == "DaemonSet":
        return "excluded:daemonset"
    if ex.require_controller and pod.owner_kind is None:
        return "excluded:no_controller"
    if ex.critical and (pod.priority_class in CRITICAL_CLASSES
                        or pod.priority >= ex.critical_priority):
        return "excluded:critical"
    if ex.local_storage and pod.local_storage:
        return "excluded:local_storage"
    if ex.annotation and pod.annotations.get(ex.annotation, "").lower() == "false":
        return "excluded:annotation"
    if now - pod.created_at < settings.min_pod_age_s:
        return "too_young"
    return None


@dataclass(frozen=True, eq=False)
class _Loads:
    """How a pod's requests move the columns the thresholds and the profile's hot-spot terms
    read: (column, kind, +1 when load raises the value / -1 when it lowers it)."""

    columns: tuple[tuple[int, str, int], ...]
    share: Callable[[PodDemand, int, str], float]


def _loads(settings: RebalanceSettings, extender: Settings, table: NodeTable,
           profile: str) -> _Loads:
    cols: dict[int, tuple[int, str, int]] = {}
    for metric, rule in settings.thresholds.items():
        j = table.column.get(metric)
        if j is not None and rule.load != "pods":
            cols[j] = (j, rule.load, 1 if rule.above else -1)
    hot = extender.profile(profile).hotspot
    if hot.enabled:
        for metric, kind, sign in ((hot.cpu_metric, "cpu", 1), (hot.memory_metric, "memory", -1)):
            j = table.column.get(metric)
            if j is not None:
                cols.setdefault(j, (j, kind, sign))
    capacity = {"cpu": table.column.get(settings.cores_metric),
                "memory": table.column.get(settings.memory_total_metric),
                "gpu": table.column.get(settings.gpus_metric)}

    def share(pod: PodDemand, row: int, kind: str) -> float:
        j = capacity.get(kind)
        total = float(table.values[row, j]) if j is not None else float("nan")
        amount = {"cpu": pod.cpu_cores, "memory": pod.memory_bytes, "gpu": float(pod.gpus)}[kind]
        return amount / total if total > 0 else 0.0

    return _Loads(tuple(cols.values()), share)


def _contribution(pod: PodView, breach: Breach, rule: Threshold, row: int, movable: int,
                  loads: _Loads, value: float) -> float:
    """How much the breach's metric improves when `pod` leaves (>= 0, in the metric's unit)."""
    if rule.load == "pods":
        return abs(value) / movable if movable else 0.0
    return loads.share(pod.demand, row, rule.load)


def _fits(pod: PodView, node: NodeRoom) -> bool:
    d = pod.demand
    return (node.schedulable and d.cpu_cores <= node.cpu_free_cores
            and d.memory_bytes <= node.memory_free_bytes and d.gpus <= node.gpus_free
            and all(node.labels.get(k) == v for k, v in pod.node_selector.items()))


def choose(detection: Detection, pods: Sequence[PodView], nodes: Mapping[str, NodeRoom],
           table: NodeTable, engine: Engine, settings: RebalanceSettings, *, now: float,
           budget: int, cooldown: Mapping[str, float] | None = None) -> EvictionPlan:
    """The evictions of one cycle (at most `budget`, and the per-node and per-namespace limits),
    and why every other pod on a hot node stays. `cooldown` maps nodes to the time until which
    they are neither source nor destination."""
    cooldown = cooldown or {}
    limits = settings.limits
    budget = min(budget, limits.per_cycle)
    values = table.values.copy()
    free = {name: [n.cpu_free_cores, n.memory_free_bytes, n.gpus_free] for name, n in nodes.items()}
    by_node: dict[str, list[PodView]] = {}
    for pod in pods:
        by_node.setdefault(pod.node, []).append(pod)
    evictions: list[Eviction] = []
    skips: list[Skip] = []
    per_namespace: dict[str, int] = {}
    received: set[str] = set()
    # Worst first: the node furthest past a limit gets the budget first.
    order = sorted(detection.hot, key=lambda n: (-detection.hot[n][0].excess, n))
    for node in order:
        if cooldown.get(node, 0.0) > now:
            skips.append(Skip("-", node, "cooldown", f"{node} moved a pod recently"))
            continue
        row = table.index.get(node)
        if row is None:
            continue
        candidates: list[PodView] = []
        for pod in by_node.get(node, []):
            reason = exclusion(pod, settings, now)
            if reason:
                skips.append(Skip(pod.key, node, reason))
            else:
                candidates.append(pod)
        taken = 0
        for pod in _ordered(candidates, detection.hot[node], settings, table, row, engine):
            if len(evictions) >= budget:
                skips.append(Skip(pod.key, node, "limit:cycle",
                                  f"{budget} evictions this cycle (limits.per_cycle, rate)"))
                return EvictionPlan(tuple(evictions), tuple(skips))
            if taken >= limits.per_node:
                skips.append(Skip(pod.key, node, "limit:node",
                                  f"{limits.per_node} per node per cycle (limits.per_node)"))
                break
            if per_namespace.get(pod.namespace, 0) >= limits.per_namespace:
                skips.append(Skip(pod.key, node, "limit:namespace",
                                  f"{limits.per_namespace} per namespace per cycle"))
                continue
            current = _still_over(detection.hot[node], values, table, row)
            if current is None:
                break  # projected below every limit: the node has lost enough
            found = _destination(pod, current, values, table, row, len(candidates), nodes, free,
                                 detection, engine, settings, now, cooldown, received)
            if isinstance(found, Skip):
                skips.append(found)
                continue
            evictions.append(found)
            taken += 1
            per_namespace[pod.namespace] = per_namespace.get(pod.namespace, 0) + 1
            received.add(found.destination)
            _move(pod, row, table.index[found.destination], len(candidates), values, table,
                  settings, engine, free, found.destination)
    return EvictionPlan(tuple(evictions), tuple(skips))


def _profile(pod: PodDemand, settings: RebalanceSettings, engine: Engine) -> str:
    return settings.profile or engine.select_profile(pod)[0]


def _ordered(candidates: Sequence[PodView], breaches: Sequence[Breach],
             settings: RebalanceSettings, table: NodeTable, row: int,
             engine: Engine) -> list[PodView]:
    """Candidates lowest priority first, then largest contribution to the worst breach."""
    if not candidates:
        return []
    worst = breaches[0]
    rule = settings.thresholds[worst.metric]
    loads = _loads(settings, engine.settings, table, _profile(candidates[0].demand, settings,
                                                              engine))
    keyed = [(pod.priority, -_contribution(pod, worst, rule, row, len(candidates), loads,
                                           worst.value), pod.key, pod) for pod in candidates]
    return [pod for *_, pod in sorted(keyed, key=lambda k: k[:3])]


def _still_over(breaches: Sequence[Breach], values: FloatArray, table: NodeTable,
                row: int) -> Breach | None:
    """The first debounced breach whose projected value is still past its limit."""
    for b in breaches:
        value = float(values[row, table.column[b.metric]])
        if value > b.limit if b.above else value < b.limit:
            return replace(b, value=value)
    return None


def _destination(pod: PodView, breach: Breach, values: FloatArray, table: NodeTable, row: int,
                 movable: int, nodes: Mapping[str, NodeRoom], free: Mapping[str, list[float]],
                 detection: Detection, engine: Engine, settings: RebalanceSettings, now: float,
                 cooldown: Mapping[str, float], received: set[str]) -> Eviction | Skip:
    rule = settings.thresholds[breach.metric]
    profile = _profile(pod.demand, settings, engine)
    loads = _loads(settings, engine.settings, table, profile)
    gain = _contribution(pod, breach, rule, row, movable, loads, breach.value)
    if gain <= 0:
        return Skip(pod.key, pod.node, "no_effect",
                    f"{pod.key} adds nothing measurable to {breach.metric}")
    candidates: list[str] = []
    for name in detection.cool:
        view = nodes.get(name)
        if (name == pod.node or view is None or name not in table.index or name in received
                or cooldown.get(name, 0.0) > now):
            continue
        cpu, mem, gpus = free[name]
        if not _fits(pod, replace(view, cpu_free_cores=cpu, memory_free_bytes=mem,
                                  gpus_free=int(gpus))):
            continue
        if _turns_hot(pod, table.index[name], values, table, settings, loads):
            continue
        candidates.append(name)
    if not candidates:
        return Skip(pod.key, pod.node, "no_destination",
                    "no cool node fits the pod and stays below every limit with it")
    names = [pod.node, *sorted(candidates)]
    loaded = values.copy()
    rows = table.rows(names[1:])
    for j, kind, sign in loads.columns:
        loaded[rows, j] += sign * np.array([loads.share(pod.demand, r, kind)
                                            for r in rows.tolist()])
    demand = replace(pod.demand, policy=profile)
    with_pod = NodeTable(names=table.names, metrics=table.metrics, values=loaded,
                     sampled_at=table.sampled_at, built_at=table.built_at,
                     allocation=table.allocation, index=table.index, column=table.column)
    outcome = engine.evaluate(demand, with_pod, names, now, pending=False)
    here = 0 if pod.node in outcome.rejected else int(outcome.score_array[0])
    best = next((i for i in outcome.ranking(len(names)) if i != 0), None)
    if best is None:
        return Skip(pod.key, pod.node, "no_destination",
                    "the extender's filter rejects every cool node for this pod")
    there = int(outcome.score_array[best])
    if there < here + settings.margin:
        return Skip(pod.key, pod.node, "not_better",
                    f"best other node {names[best]} scores {there}, here {here}: "
                    f"less than the margin of {settings.margin}")
    projected = breach.value - gain if rule.above else breach.value + gain
    text = (f"evict {pod.key} from {pod.node}: {breach.metric} {breach.value:.3g} "
            f"{'>' if rule.above else '<'} {breach.limit:g} for {breach.cycles} cycles, "
            f"expected {projected:.3g} without it; expected to go to {names[best]} "
            f"(score {there} vs {here} here, margin {settings.margin})")
    return Eviction(pod, breach.metric, breach.value, projected, breach.limit, names[best],
                    here, there, text)


def _turns_hot(pod: PodView, row: int, values: FloatArray, table: NodeTable,
               settings: RebalanceSettings, loads: _Loads) -> bool:
    """Whether `pod` added to the node at `row` would push a threshold metric past its limit."""
    for metric, rule in settings.thresholds.items():
        if rule.load == "pods":
            continue
        value = float(values[row, table.column[metric]])
        delta = loads.share(pod.demand, row, rule.load)
        after = value + delta if rule.above else value - delta
        if after > rule.hot if rule.above else after < rule.hot:
            return True
    return False


def _move(pod: PodView, source: int, target: int, movable: int, values: FloatArray,
          table: NodeTable,
          settings: RebalanceSettings, engine: Engine, free: Mapping[str, list[float]],
          destination: str) -> None:
    """Apply an eviction to the working values and free resources."""
    loads = _loads(settings, engine.settings, table, _profile(pod.demand, settings, engine))
    for j, kind, sign in loads.columns:
        values[source, j] -= sign * loads.share(pod.demand, source, kind)
        values[target, j] += sign * loads.share(pod.demand, target, kind)
    for metric, rule in settings.thresholds.items():
        j = table.column[metric]
        if rule.load == "pods" and rule.above and movable:
            # An equal share leaves with the pod; what it adds to the destination is unknown
            # (a destination must be cool, which bounds it).
            values[source, j] -= values[source, j] / movable
    cell = free[destination]
    cell[0] -= pod.demand.cpu_cores
    cell[1] -= pod.demand.memory_bytes
    cell[2] -= pod.demand.gpus
    if pod.node in free:
        src = free[pod.node]
        src[0] += pod.demand.cpu_cores
        src[1] += pod.demand.memory_bytes
        src[2] += pod.demand.gpus
