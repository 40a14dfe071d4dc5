"""Policies by name: the baselines, FGD, and "ours" (each profile of the extender's settings).

"Ours" runs the extender's own engine (`extender.policies.engine.Engine`) on a `NodeTable` the
simulator builds from what the metrics pipeline would show (`replay.Observation`: usage as of the
last scrape before the last refresh) plus the current request-based allocation (for the
`gpu_fragmentation` term). Its 0..10 scores are combined as kube-scheduler combines an extender's:
`in-tree score + weight * 10 * extender score`, with the in-tree part being kube-scheduler's
defaults (LeastAllocated + BalancedAllocation) and `weight` 5 as in
`manifests/base/scheduler-config.yaml`. The GPU inside the chosen node is the device plugin's best
fit: an extender cannot pick it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from extender.openb import Nodes, TraceError
from extender.policies import baselines
from extender.policies.baselines import F64, Bools, Choice, ClusterView, Policy, Task
from extender.policies.engine import Engine
from extender.policies.fragmentation import TargetWorkload, derived_terms, fgd_policy
from extender.policies.model import Allocation, NodeTable, PodDemand
from extender.settings import Settings
from extender.sim.history import RiskSeries
from extender.sim.replay import Observation

BASELINES: dict[str, Policy] = {
    "kube-default": baselines.kube_default,
    "random": baselines.random_policy,
    "best-fit": baselines.best_fit,
    "dot-product": baselines.dot_product,
    "gpu-packing": baselines.gpu_packing,
    "gpu-clustering": baselines.gpu_clustering,
    "trimaran-tlp": baselines.trimaran_tlp,
}
BASELINE_NAMES = (*BASELINES, "fgd")
EXTENDER_WEIGHT = 5  # manifests/base/scheduler-config.yaml: extender scores 0..10 -> 0..500

METRICS = ("cpu_utilisation", "cpu_cores", "memory_available_ratio", "memory_total_bytes",
           "gpu_utilisation", "gpu_memory_free_ratio", "host_power_watts", "node_cpu_power_watts",
           "node_ready",
           "node_pressure", "node_unschedulable", "deadline_miss_ratio")
"""Catalog metrics the simulator models; the others (network, disk, GPU temperature and power)
are absent from its table, so profiles weighting them renormalise over the rest."""


class OursPolicy:
    """One extender profile as a simulator policy (stateful: metrics and placement ledger)."""

    def __init__(self, settings: Settings, profile: str, nodes: Nodes, workload: TargetWorkload,
                 *, extender_weight: float = EXTENDER_WEIGHT,
                 in_tree: Policy = baselines.kube_default) -> None:
        self.profile = profile
        self.nodes = nodes
        self.names = nodes.names
        self.index = {name: i for i, name in enumerate(nodes.names)}
        # Risk aggregates of modelled metrics are columns too, computed from the history.
        self.risks = [(entry.name, entry.risk.of, RiskSeries(entry.risk))
                      for entry in settings.catalog
                      if entry.risk is not None and entry.risk.of in METRICS]
        self.metrics = (*METRICS, *(name for name, _, _ in self.risks))
        self.column = {name: j for j, name in enumerate(self.metrics)}
        self.engine = Engine(settings, derived_terms=derived_terms(workload))
        self.extender_weight = extender_weight
        self.in_tree = in_tree
        self.model_names = tuple(nodes.models[m] if m >= 0 else "" for m in nodes.model)
        self.observation: Observation | None = None
        self.clock = 0.0

    def observe(self, observation: Observation) -> None:
        """The metrics as the extender's cache holds them now."""
        self.observation = observation
        self.clock = observation.at

    def table(self, view: ClusterView) -> NodeTable:
        """The NodeTable the extender would hold: observed usage, current allocation."""
        n = len(view)
        values = np.full((n, len(self.metrics)), np.nan)
        col = self.column
        mem_total = view.memory_capacity.astype(np.float64)
        obs = self.observation
        if obs is not None:
            values[:, col["cpu_utilisation"]] = obs.cpu_utilisation
            values[:, col["memory_available_ratio"]] = 1.0 - obs.memory_used_mib / mem_total
            values[:, col["gpu_utilisation"]] = obs.gpu_utilisation
            values[:, col["host_power_watts"]] = obs.power_watts
            values[:, col["node_cpu_power_watts"]] = obs.power_watts  # the `power` profile's
            values[:, col["deadline_miss_ratio"]] = obs.deadline_risk
            seen = obs.seen_at
        else:  # no usage model: utilisation is what the requests take
            values[:, col["cpu_utilisation"]] = 1.0 - view.cpu_free / view.cpu_capacity
            values[:, col["memory_available_ratio"]] = view.memory_free / mem_total
            seen = self.clock
        gpus = self.nodes.gpus
        with np.errstate(invalid="ignore", divide="ignore"):
            values[:, col["gpu_memory_free_ratio"]] = np.where(
                gpus > 0, np.maximum(view.gpu_free, 0).sum(axis=1) / (gpus * baselines.MILLI),
                np.nan)
        values[:, col["cpu_cores"]] = view.cpu_capacity / 1000.0
        values[:, col["memory_total_bytes"]] = mem_total * 2**20
        values[:, col["node_ready"]] = 1.0
        values[:, col["node_pressure"]] = 0.0
        values[:, col["node_unschedulable"]] = 0.0
        for name, of, series in self.risks:
            series.record(seen, values[:, col[of]])
            aggregate = series.aggregate(seen)
            if aggregate is not None:
                values[:, col[name]] = aggregate
        sampled = np.full(values.shape, seen)
        alloc = Allocation(cpu_free_milli=view.cpu_free.astype(np.float64),
                           memory_free_mib=view.memory_free.astype(np.float64),
                           gpu_free_milli=view.gpu_free.astype(np.float64),
                           gpu_model=self.model_names)
        return NodeTable(names=self.names, metrics=self.metrics, values=values, sampled_at=sampled,
                         built_at=self.clock, allocation=alloc, index=self.index,
                         column=self.column)

    def demand(self, task: Task, name: str = "") -> PodDemand:
        """The task as the webhook sees its pod, with the expected load it would estimate (the
        trace has no controllers, so only the default for tasks without requests applies)."""
        share = task.gpu_milli if task.shares_gpu else baselines.MILLI * task.num_gpu
        pod = PodDemand(namespace="sim", name=name, cpu_cores=task.cpu_milli / 1000.0,
                        memory_bytes=float(task.memory_mib) * 2**20, gpus=task.num_gpu,
                        gpu_milli=share, policy=self.profile,
                        gpu_models=tuple(self.nodes.models[m] for m in task.models if m >= 0))
        return self.engine.estimate(pod, NO_OWNERS)

    def __call__(self, task: Task, view: ClusterView, ok: Bools,
                 rng: np.random.Generator) -> Choice:
        rows = np.flatnonzero(ok)
        offered = [self.names[i] for i in rows]
        extender = self.extender_scores(task, self.table(view), offered)
        return self.combine(task, view, ok, rng, extender)

    def combine(self, task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator,
                extender: F64) -> Choice:
        """kube-scheduler's final score of each feasible node: the in-tree resource score plus
        the extender's (`extender`, one per feasible node: -inf where filter rejected) times its
        weight, on the 0..100 scale."""
        rows = np.flatnonzero(ok)
        scores = np.full(len(view), -np.inf)
        in_tree = self.in_tree(task, view, ok, rng).scores[rows]
        scores[rows] = in_tree + self.extender_weight * 10 * extender
        return Choice(scores)

    def extender_scores(self, task: Task, table: NodeTable, offered: list[str]) -> F64:
        """What kube-scheduler learns from the extender about the `offered` nodes (those that
        fit by requests): -inf where `filter` rejects, else the `prioritize` score, which is
        asked for the passed nodes only, and not at all (0) when one node passed."""
        demand = self.demand(task)
        filtered = self.engine.decide(demand, table, offered, self.clock)
        assert filtered.rejected_mask is not None
        passed = np.flatnonzero(~filtered.rejected_mask)
        out = np.full(len(offered), -np.inf)
        out[passed] = 0.0
        if len(passed) > 1:
            names = [offered[i] for i in passed.tolist()]
            out[passed] = self.engine.decide(demand, table, names, self.clock).score_array
        return out

    def placed(self, node: int, task: Task, name: str) -> None:
        """Tell the engine's hot-spot ledger, as the prioritize answer does in production."""
        self.engine.record_placement(self.names[node], self.demand(task, name), self.clock)


NO_OWNERS = NodeTable.empty()
"""The simulator's tables carry no controller usage (the trace has none)."""


def build(name: str, *, nodes: Nodes, workload: TargetWorkload,
          settings: Settings | None = None) -> Policy:
    """The policy called `name`: a baseline, `fgd`, or a profile of `settings`."""
    if name in BASELINES:
        return BASELINES[name]
    if name == "fgd":
        return fgd_policy(workload, nodes.models)
    if settings is not None and name in settings.policy.profiles:
        return OursPolicy(settings, name, nodes, workload)
    known = [*BASELINE_NAMES, *(settings.policy.profiles if settings else ())]
    raise TraceError(f"unknown policy {name!r} (known: {', '.join(known)})")


def names(settings: Settings | None) -> Sequence[str]:
    """Every policy name `build` accepts."""
    return [*BASELINE_NAMES, *(settings.policy.profiles if settings else ())]

