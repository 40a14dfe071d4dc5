"""The simulated cluster's allocation state, in numpy arrays (one row per node).

The state is mutated only by `place` and `release`, which refuse anything kube-scheduler and the
GPU-share device plugin would refuse, so over-allocation is impossible by construction rather
than by convention. `view()` hands the policies the same arrays read-only (no copies).
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

import numpy as np

from extender.openb import Nodes, Pods
from extender.policies.baselines import (
    GPU_CLASSES,
    MILLI,
    ClusterView,
    Policy,
    Task,
    feasible,
    pick_gpus,
    select,
)


class Cluster:
    """Requests allocated per node and free GPU share per GPU slot (-1: no such GPU)."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        slots = np.arange(max(nodes.max_gpus, 1))
        self.gpu_free = np.where(slots[None, :] < nodes.gpus[:, None], MILLI, -1).astype(np.int64)
        self.cpu_free = nodes.cpu_milli.copy()
        self.memory_free = nodes.memory_mib.copy()
        self.class_count = np.zeros((len(nodes), len(GPU_CLASSES)), np.int64)
        self.gpu_capacity_milli = int(nodes.gpus.sum()) * MILLI
        self.pods = 0

    def view(self, cpu_usage: np.ndarray | None = None) -> ClusterView:
        """The state as policies see it; `cpu_usage` is the measured utilisation, if modelled."""
        usage = cpu_usage if cpu_usage is not None else (
            1.0 - self.cpu_free / np.maximum(self.nodes.cpu_milli, 1))
        return ClusterView(cpu_capacity=self.nodes.cpu_milli, memory_capacity=self.nodes.memory_mib,
                           cpu_free=self.cpu_free, memory_free=self.memory_free,
                           gpu_free=self.gpu_free, gpu_model=self.nodes.model, cpu_usage=usage,
                           gpu_class_count=self.class_count)

    @property
    def gpu_allocated_milli(self) -> int:
        return self.gpu_capacity_milli - int(np.maximum(self.gpu_free, 0).sum())

    def place(self, node: int, task: Task, gpus: tuple[int, ...]) -> None:
        """Allocate `task` on `node` using GPU slots `gpus`; ValueError if it does not fit."""
        free = self.gpu_free[node]
        if len(gpus) != task.num_gpu or len(set(gpus)) != len(gpus):
            raise ValueError(f"task needs {task.num_gpu} distinct GPU slot(s), got {gpus}")
        if any(free[g] < task.gpu_milli for g in gpus):
            raise ValueError(f"node {node}: GPU slots {gpus} lack {task.gpu_milli} milli")
        if self.cpu_free[node] < task.cpu_milli or self.memory_free[node] < task.memory_mib:
            raise ValueError(f"node {node}: not enough CPU or memory")
        if task.models and task.num_gpu and self.nodes.model[node] not in task.models:
            raise ValueError(f"node {node}: GPU model not accepted by the task")
        self.cpu_free[node] -= task.cpu_milli
        self.memory_free[node] -= task.memory_mib
        for g in gpus:
            free[g] -= task.gpu_milli
        if task.gpu_class >= 0:
            self.class_count[node, task.gpu_class] += 1
        self.pods += 1

    def release(self, node: int, task: Task, gpus: tuple[int, ...]) -> None:
        """Give back what `place` took."""
        self.cpu_free[node] += task.cpu_milli
        self.memory_free[node] += task.memory_mib
        for g in gpus:
            self.gpu_free[node, g] += task.gpu_milli
        if task.gpu_class >= 0:
            self.class_count[node, task.gpu_class] -= 1
        self.pods -= 1


def task_of(pods: Pods, i: int, models: tuple[str, ...]) -> Task:
    """Row `i` of a pod list as a Task, its GPU spec resolved against the cluster's models (a
    model the cluster lacks is dropped; a task whose models all are absent can run nowhere)."""
    allowed: tuple[int, ...] = ()
    if pods.spec[i]:
        allowed = tuple(models.index(m) for m in pods.spec[i] if m in models) or (-2,)
    return Task(cpu_milli=int(pods.cpu_milli[i]), memory_mib=int(pods.memory_mib[i]),
                num_gpu=int(pods.num_gpu[i]), gpu_milli=int(pods.gpu_milli[i]), models=allowed)


def decide(task: Task, cluster: Cluster, policy: Policy, rng: np.random.Generator,
           cpu_usage: np.ndarray | None = None) -> tuple[int, tuple[int, ...], float]:
    """One scheduling decision: (node or -1, GPU slots, milliseconds spent deciding)."""
    start = time.perf_counter()
    view = cluster.view(cpu_usage)
    ok = feasible(task, view)
    node, gpus = -1, tuple[int, ...]()
    if ok.any():
        decision = policy(task, view, ok, rng)
        node = select(decision.scores, ok, rng)
        if node >= 0:
            preferred = int(decision.gpu[node]) if decision.gpu is not None else -1
            gpus = pick_gpus(task, cluster.gpu_free[node], preferred)
    return node, gpus, (time.perf_counter() - start) * 1e3


@runtime_checkable
class Stateful(Protocol):
    """A policy that keeps state between decisions (the extender's engine): it is told about the
    metrics before each decision and about each placement after it."""

    def observe(self, observation: Any) -> None: ...

    def placed(self, node: int, task: Task, name: str) -> None: ...
