"""The saturation experiment, as the OpenB authors ran it (FGD paper, section 6).

The cluster is the GPU nodes; tasks are the pod list shuffled with the seed and, when their GPU
requests fall short of `ratio` (130%) of the GPU capacity, topped up with tasks drawn at random
(with replacement) from the list until the next draw would pass it (above it, random tasks are
removed instead). Tasks only arrive: none finish. A task that fits nowhere fails and is dropped.
Reported: the GPU allocation ratio and the fragmentation as the arrived demand grows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from extender.openb import Nodes, Pods, TraceError
from extender.policies.baselines import Policy
from extender.policies.fragmentation import TargetWorkload, node_fragmentation
from extender.sim import models
from extender.sim.cluster import Cluster, Stateful, decide, task_of
from extender.sim.replay import Observation

RATIO = 1.3  # arrived GPU requests / GPU capacity at the end, as published
STEP_S = 60.0
"""The experiment has no clock; for policies that read metrics, arrivals are spaced so that each
decision sees fresh metrics (usage from `models.draw_usage`, no lag) and no pending placements."""
CURVE_STEP = 0.01  # fragmentation is sampled every 1% of capacity of arrived demand


def saturation_workload(pods: Pods, capacity_milli: int, seed: int, ratio: float = RATIO) -> Pods:
    """The arrival sequence of one seed: shuffled, then tuned to `ratio` x capacity GPU demand."""
    demand = pods.total_gpu_milli
    # The experiment measures GPU allocation: without GPUs on either side it has no end.
    if capacity_milli <= 0:
        raise TraceError("saturation: the node list has no GPU (the experiment runs on GPU nodes)")
    if not demand.any():
        raise TraceError("saturation: the pod list has no GPU task, so GPU demand never grows; "
                         "use --experiment replay")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pods))
    total = int(demand[order].sum())
    target = ratio * capacity_milli
    if total > target:
        keep = list(order)
        while total > target and keep:
            total -= int(demand[keep.pop(int(rng.integers(len(keep))))])
        order = np.array(keep, np.intp)
    else:
        extra: list[int] = []
        while True:
            i = int(rng.integers(len(pods)))
            if total + demand[i] > target:
                break
            extra.append(i)
            total += int(demand[i])
        order = np.concatenate([order, np.array(extra, np.intp)])
    return pods.take(order)


@dataclass
class Curve:
    """Sampled as demand arrives: arrived GPU demand, unallocated and fragmented GPU share (all
    as fractions of the GPU capacity)."""

    arrived: list[float] = field(default_factory=list)
    unallocated: list[float] = field(default_factory=list)
    fragmented: list[float] = field(default_factory=list)


@dataclass
class SaturationResult:
    policy: str
    seed: int
    gpu_alloc_ratio: float
    """Allocated GPU share / capacity once all tasks arrived."""
    fragmented_share: float
    """Fragmented idle GPU share / capacity at the end (against the target workload)."""
    placed: int
    failed: int
    decision_ms: npt.NDArray[np.float64]
    curve: Curve
    wall_s: float

    @property
    def unallocated_gpu_share(self) -> float:
        return 1.0 - self.gpu_alloc_ratio


def _observation(at: float, cluster: Cluster, cpu_used: npt.NDArray[np.float64],
                 memory_used: npt.NDArray[np.float64],
                 power: npt.NDArray[np.float64]) -> Observation:
    nodes = cluster.nodes
    gpus = np.maximum(nodes.gpus, 1) * 1000
    with np.errstate(invalid="ignore", divide="ignore"):
        gpu = np.where(nodes.gpus > 0,
                       1.0 - np.maximum(cluster.gpu_free, 0).sum(axis=1) / gpus, np.nan)
    cpu = np.clip(cpu_used / np.maximum(nodes.cpu_milli, 1), 0.0, 1.0)
    n = len(nodes)
    return Observation(at, at, cpu, memory_used, gpu, power.copy(), np.zeros(n))


class _Power:
    """Each node's draw (the replay's power model) as placements arrive: CPU from the usage
    draws, a GPU busy when any of it is allocated and loaded by its allocated share (there is
    no GPU utilisation draw here). What a power term of a profile sees in this experiment."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.params = models.node_gpu_power(nodes.models, nodes.model)
        self.watts = models.idle_powers(nodes.cpu_milli / 1000.0, self.params, nodes.gpus)

    def update(self, node: int, cluster: Cluster, cpu_used: float) -> None:
        """Node `node` now runs something and uses `cpu_used` millicores."""
        cap = float(self.nodes.cpu_milli[node])
        k = int(self.nodes.gpus[node])
        taken = 1.0 - np.maximum(cluster.gpu_free[node], 0) / 1000.0
        self.watts[node] = models.node_power(cap / 1000.0, min(cpu_used, cap) / 1000.0, True,
                                             taken > 0, taken, self.params[node], k)


def run_saturation(nodes: Nodes, pods: Pods, policy: Policy, *, name: str, seed: int,
                   workload: TargetWorkload, ratio: float = RATIO) -> SaturationResult:
    """Run one policy and seed; deterministic for a given seed."""
    start = time.perf_counter()
    cluster = Cluster(nodes)
    arrivals = saturation_workload(pods, cluster.gpu_capacity_milli, seed, ratio)
    rng = np.random.default_rng(seed + 1_000_003)  # policy randomness, apart from the workload's
    access = workload.access([nodes.models[m] if m >= 0 else "" for m in nodes.model])
    capacity = cluster.gpu_capacity_milli
    curve = Curve()
    next_sample = 0.0
    arrived = 0
    latencies = np.zeros(len(arrivals))
    placed = failed = 0
    demand = arrivals.total_gpu_milli
    usage = models.draw_usage(arrivals.qos, seed)
    cpu_used = np.zeros(len(nodes))
    memory_used = np.zeros(len(nodes))
    power = _Power(nodes)
    for i in range(len(arrivals)):
        task = task_of(arrivals, i, nodes.models)
        if isinstance(policy, Stateful):
            policy.observe(_observation(i * STEP_S, cluster, cpu_used, memory_used,
                                        power.watts))
        node, gpus, latencies[i] = decide(task, cluster, policy, rng)
        if node >= 0:
            cluster.place(node, task, gpus)
            placed += 1
            cpu_used[node] += task.cpu_milli * usage.cpu[i]
            memory_used[node] += task.memory_mib * usage.memory[i]
            power.update(node, cluster, cpu_used[node])
            if isinstance(policy, Stateful):
                policy.placed(node, task, arrivals.names[i])
        else:
            failed += 1
        arrived += int(demand[i])
        if arrived / capacity >= next_sample or i == len(arrivals) - 1:
            frag = node_fragmentation(cluster.cpu_free, cluster.gpu_free, access, workload).sum()
            curve.arrived.append(arrived / capacity)
            curve.unallocated.append(1.0 - cluster.gpu_allocated_milli / capacity)
            curve.fragmented.append(float(frag) / capacity)
            next_sample = arrived / capacity + CURVE_STEP
    return SaturationResult(name, seed, cluster.gpu_allocated_milli / capacity,
                            curve.fragmented[-1] if curve.fragmented else 0.0, placed, failed,
                            latencies, curve, time.perf_counter() - start)
