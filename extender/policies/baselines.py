"""Request-based placement policies: kube-scheduler's default and the GPU-cluster baselines.

Design decision: every policy is a pure function `(task, view, feasible, rng) -> Choice` over
numpy arrays with one row per node, vectorised across nodes; the simulator (and anything else) owns
the state and applies the chosen placement. Scores follow kube-scheduler's framework: integers
0..100 where the original plugin produces integers, the highest wins and ties are broken uniformly
at random (`select`), so results are comparable with the OpenB authors' simulator, which runs these
plugins inside kube-scheduler's framework. Formulas are those of the plugins of
hkust-adsl/kubernetes-scheduler-simulator (the FGD paper's artifact) unless said otherwise:

- `kube-default`: NodeResourcesFit LeastAllocated (CPU, memory, equal weights) + BalancedAllocation,
  both on requests, each 0..100. GPUs are not scored (kube-scheduler does not score extended
  resources by default).
- `random`: every feasible node scores the same; the GPU is picked at random too.
- `best-fit`: 100 * (1 - (0.5 * cpu_left / 128 cores + 0.5 * gpu_left / 8 GPUs)) after placement.
- `dot-product` (Tetris): 100 * (1 - (cpu_free * cpu_req + gpu_free * gpu_req) / 2), each term
  normalised by the largest node (128 cores, 8 GPUs): the smallest alignment with what is free
  wins, i.e. it packs.
- `gpu-packing`: prefer (1) already shared GPUs, (2) free GPUs on a used node, (3) idle nodes.
- `gpu-clustering`: prefer nodes that already run only tasks of the same GPU class (share, 1, 2,
  4, 8 GPUs), then nodes that run it among others, then idle nodes, then others.
- `trimaran-tlp`: TargetLoadPacking (scheduler-plugins/Trimaran) on *measured* CPU utilisation:
  packs nodes up to `TLP_TARGET` utilisation, then prefers the least loaded.
- `fgd`: Fragmentation Gradient Descent, in `extender.policies.fragmentation`.

GPU selection inside a node is the GPU-share device plugin's best fit (the fitting GPU with the
least free share) unless a policy chooses (`Choice.gpu`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

MILLI = 1000
MAX_SPEC_CPU = 128_000  # milli-CPU of the largest OpenB node: the baselines' normalisation
MAX_SPEC_GPU = 8 * MILLI  # milli-GPU of the largest OpenB node
MAX_NODE_SCORE = 100  # kube-scheduler framework.MaxNodeScore
TLP_TARGET = 0.4  # Trimaran TargetLoadPacking's default target utilisation (40%)
GPU_CLASSES = ("share", "1", "2", "4", "8", "other")
"""GPU clustering's task classes (its "affinity" tags), in `ClusterView.gpu_class_count` order."""


@dataclass(frozen=True, kw_only=True)
class Task:
    """What one task requests. `gpu_milli` is per GPU: 1000 for whole GPUs, 1..999 for a share of
    one GPU (`num_gpu == 1`). `models` are allowed GPU model indices (empty: any)."""

    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0
    models: tuple[int, ...] = ()

    @property
    def shares_gpu(self) -> bool:
        return self.num_gpu == 1 and 0 < self.gpu_milli < MILLI

    @property
    def total_gpu_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def gpu_class(self) -> int:
        """Index into GPU_CLASSES, -1 for a CPU-only task."""
        if self.num_gpu == 0:
            return -1
        if self.shares_gpu:
            return 0
        return {1: 1, 2: 2, 4: 3, 8: 4}.get(self.num_gpu, 5)


@dataclass(frozen=True, eq=False, kw_only=True)
class ClusterView:
    """Request-based allocation state, one row per node (read-only by convention).

    `gpu_free` has one column per GPU slot: free share in milli (1000 = idle GPU), -1 where the
    node has no such GPU. `gpu_model` is a model index, -1 for nodes without GPUs.
    `cpu_usage` is the *measured* CPU utilisation 0..1 as the scheduler sees it (NaN: unknown);
    `gpu_class_count` counts running tasks per GPU class (for gpu-clustering).
    """

    cpu_capacity: I64
    memory_capacity: I64
    cpu_free: I64
    memory_free: I64
    gpu_free: I64
    gpu_model: I64
    cpu_usage: F64 = field(default_factory=lambda: np.zeros(0))
    gpu_class_count: I64 = field(default_factory=lambda: np.zeros((0, len(GPU_CLASSES)), np.int64))

    def __len__(self) -> int:
        return len(self.cpu_capacity)


class Choice(NamedTuple):
    """Scores per node (higher is better; only feasible nodes count, -inf rejects a node as an
    extender's filter would) and, for GPU-sharing tasks, the GPU slot the policy wants on each
    node (-1: device plugin's best fit)."""

    scores: F64
    gpu: I64 | None = None


Policy = Callable[[Task, ClusterView, Bools, np.random.Generator], Choice]


# --- feasibility --------------------------------------------------------------------------------


def gpu_fit_count(task: Task, gpu_free: I64) -> I64:
    """Per node, how many GPUs could each take the task's per-GPU share."""
    if task.num_gpu == 0:
        return np.zeros(len(gpu_free), np.int64)
    count: I64 = (gpu_free >= task.gpu_milli).sum(axis=1)
    return count


def model_allowed(task: Task, gpu_model: I64) -> Bools:
    """Nodes whose GPU model the task accepts (all nodes when it names none)."""
    if not task.models or task.num_gpu == 0:
        return np.ones(len(gpu_model), bool)
    return np.isin(gpu_model, np.asarray(task.models, np.int64))


def feasible(task: Task, view: ClusterView) -> Bools:
    """kube-scheduler's NodeResourcesFit on CPU and memory requests, plus the GPU-share device
    plugin: a share task needs ONE GPU with enough free share, a whole-GPU task needs `num_gpu`
    idle GPUs, and a GPU task needs an allowed model."""
    ok = (view.cpu_free >= task.cpu_milli) & (view.memory_free >= task.memory_mib)
    if task.num_gpu:
        ok &= gpu_fit_count(task, view.gpu_free) >= task.num_gpu
        ok &= model_allowed(task, view.gpu_model)
    return ok


def pick_gpus(task: Task, free: I64, preferred: int = -1) -> tuple[int, ...]:
    """GPU slots of one node for `task`: `preferred` when it fits, else the best fit for a share
    task (least free share that fits, lowest index on ties), else the first idle GPUs."""
    if task.num_gpu == 0:
        return ()
    if task.shares_gpu:
        if preferred >= 0 and free[preferred] >= task.gpu_milli:
            return (preferred,)
        fits = np.where(free >= task.gpu_milli, free, MILLI + 1)
        slot = int(np.argmin(fits))
        if fits[slot] > MILLI:
            raise ValueError("no GPU on this node can take the task")
        return (slot,)
    idle = np.flatnonzero(free == MILLI)
    if len(idle) < task.num_gpu:
        raise ValueError("not enough idle GPUs on this node")
    return tuple(int(i) for i in idle[: task.num_gpu])


def select(scores: F64, feasible_nodes: Bools, rng: np.random.Generator) -> int:
    """kube-scheduler's selectHost: a uniformly random node among the best-scoring feasible ones
    (-inf scores excluded), -1 when none is left."""
    candidates = np.flatnonzero(feasible_nodes & (scores > -np.inf))
    if len(candidates) == 0:
        return -1
    best = scores[candidates]
    top = candidates[best == best.max()]
    return int(top[rng.integers(len(top))]) if len(top) > 1 else int(top[0])


# --- policies -------------------------------------------------------------------------------------


def _gpu_left_total(view: ClusterView) -> I64:
    left: I64 = np.maximum(view.gpu_free, 0).sum(axis=1)
    return left


def kube_default(task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator) -> Choice:
    """LeastAllocated + BalancedAllocation on CPU and memory requests (kube-scheduler defaults)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cpu_frac = (view.cpu_capacity - view.cpu_free + task.cpu_milli) / view.cpu_capacity
        mem_frac = (view.memory_capacity - view.memory_free + task.memory_mib) / view.memory_capacity
    cpu_frac, mem_frac = np.nan_to_num(cpu_frac, nan=1.0), np.nan_to_num(mem_frac, nan=1.0)
    least = np.floor(_free_fraction(task, view) * MAX_NODE_SCORE)
    # BalancedAllocation (k8s >= 1.24): 1 - standard deviation of the requested fractions.
    balanced = np.floor((1 - np.abs(np.minimum(cpu_frac, 1) - np.minimum(mem_frac, 1)) / 2)
                        * MAX_NODE_SCORE)
    return Choice(least + balanced)


def most_allocated(task: Task, view: ClusterView, ok: Bools,
                   rng: np.random.Generator) -> Choice:
    """NodeResourcesFit MostAllocated + BalancedAllocation on CPU and memory requests: the
    in-tree scoring a bin-packing scheduler profile configures."""
    least = kube_default(task, view, ok, rng).scores
    balanced = least - np.floor(_free_fraction(task, view) * MAX_NODE_SCORE)
    used = np.floor((1.0 - _free_fraction(task, view)) * MAX_NODE_SCORE)
    return Choice(used + balanced)


def no_resource_scoring(task: Task, view: ClusterView, ok: Bools,
                        rng: np.random.Generator) -> Choice:
    """No in-tree resource scoring: a scheduler profile that disables NodeResourcesFit and
    NodeResourcesBalancedAllocation scoring, leaving placement to the extender (ties at random)."""
    return Choice(np.zeros(len(view)))


def _free_fraction(task: Task, view: ClusterView) -> F64:
    """Mean of CPU and memory left after placement, as fractions of capacity."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cpu = (view.cpu_free - task.cpu_milli) / view.cpu_capacity
        mem = (view.memory_free - task.memory_mib) / view.memory_capacity
    return np.nan_to_num((cpu + mem) / 2, nan=0.0)


def random_policy(task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator) -> Choice:
    """Any feasible node, any fitting GPU."""
    gpu = None
    if task.shares_gpu:
        fits = view.gpu_free >= task.gpu_milli
        noise = rng.random(fits.shape)
        gpu = np.argmax(np.where(fits, noise, -1.0), axis=1).astype(np.int64)
    return Choice(np.zeros(len(view)), gpu)


def best_fit(task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator) -> Choice:
    """The node with the least CPU and GPU left after placement (equal weights)."""
    left = (0.5 * (view.cpu_free - task.cpu_milli) / MAX_SPEC_CPU
            + 0.5 * (_gpu_left_total(view) - task.total_gpu_milli) / MAX_SPEC_GPU)
    return Choice(np.floor((1.0 - left) * MAX_NODE_SCORE))


def dot_product(task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator) -> Choice:
    """Tetris alignment of the request with the free (CPU, total GPU) vector; smallest wins."""
    dot = (view.cpu_free / MAX_SPEC_CPU * (task.cpu_milli / MAX_SPEC_CPU)
           + _gpu_left_total(view) / MAX_SPEC_GPU * (task.total_gpu_milli / MAX_SPEC_GPU))
    return Choice(np.floor((1.0 - dot / 2) * MAX_NODE_SCORE))


def gpu_packing(task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator) -> Choice:
    """Shared GPUs first (fullest first), then idle GPUs of used nodes, then idle nodes."""
    n = len(view)
    if task.num_gpu == 0:
        return Choice(np.zeros(n))
    free = view.gpu_free
    slots = (free >= 0).sum(axis=1)
    idle = (free == MILLI).sum(axis=1)
    idle_node = idle == slots
    case3 = np.maximum(MAX_NODE_SCORE // 3 - idle, idle).astype(np.float64)
    if task.shares_gpu:
        # Best-fit GPU on the node; case 1 when it is already shared, else case 2.
        fits = np.where(free >= task.gpu_milli, free, MILLI + 1)
        best = fits.min(axis=1)
        shared = best < MILLI
        case1 = np.maximum(MAX_NODE_SCORE - (best * 100 // MILLI) // 10, MAX_NODE_SCORE // 2)
        case2 = np.maximum(MAX_NODE_SCORE // 2 - 1, MAX_NODE_SCORE // 3)
        score = np.where(shared, case1, case2)
    else:
        score = np.full(n, max(MAX_NODE_SCORE // 2 - task.num_gpu, MAX_NODE_SCORE // 3))
    return Choice(np.where(idle_node, case3, score).astype(np.float64))


def gpu_clustering(task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator) -> Choice:
    """Nodes running only this GPU class, then with it among others, then idle, then others;
    within each band, fuller nodes first."""
    n = len(view)
    cls = task.gpu_class
    if cls < 0:
        return Choice(np.zeros(n))
    counts = view.gpu_class_count
    present = counts > 0
    kinds = present.sum(axis=1)
    mine = present[:, cls]
    fill = (MAX_NODE_SCORE // 4 * (MAX_SPEC_GPU - _gpu_left_total(view))) // MAX_SPEC_GPU
    quarter = MAX_NODE_SCORE // 4
    band = np.where(mine, np.where(kinds == 1, 3 * quarter, 2 * quarter),
                    np.where(kinds == 0, quarter, 0))
    return Choice((band + fill).astype(np.float64))


def trimaran_tlp(task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator) -> Choice:
    """TargetLoadPacking on measured CPU utilisation plus the pod's request: climbs to 100 at the
    target, then falls to 0 at full load; unknown utilisation scores 0 (never preferred)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        predicted = view.cpu_usage + task.cpu_milli / view.cpu_capacity
    t = TLP_TARGET
    below = (MAX_NODE_SCORE - t * MAX_NODE_SCORE) * predicted / t + t * MAX_NODE_SCORE
    above = t * MAX_NODE_SCORE * (1 - predicted) / (1 - t)
    score = np.where(predicted <= t, below, np.where(predicted <= 1, above, 0.0))
    return Choice(np.floor(np.nan_to_num(score, nan=0.0)))
