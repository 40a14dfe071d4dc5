"""GPU fragmentation against a target workload, and Fragmentation Gradient Descent (FGD).

After Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation
Gradient Descent", USENIX ATC 2023, and its artifact (hkust-adsl/kubernetes-scheduler-simulator,
`pkg/utils/frag.go`, `fgd_score.go`).

The fragmentation of node n for task type m, F_n(m), is the idle GPU share (milli) that m cannot
use on n:
- all of it when m cannot run on n at all (too little CPU, not enough GPUs with m's per-GPU share
  free, a GPU model m does not accept) or when m asks for no GPU;
- otherwise the idle share of the GPUs whose free share is below m's per-GPU demand.
The node's fragmentation is the expectation over the target workload's task types:
F_n = sum_m p_m F_n(m). FGD places a task where F_n grows least (for a GPU-sharing task, on the GPU
of that node where it grows least); the artifact scores `sigmoid((F_before - F_after) / 1000)` as
an integer 0..100 and breaks ties at random, which `fgd` reproduces. Memory is not part of the
measure (as in the artifact); feasibility still checks it.

Everything is vectorised over nodes x GPU slots x task types, with the per-slot change computed
incrementally (only one GPU of one node changes per placement).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from extender.policies.baselines import (
    F64,
    I64,
    MAX_NODE_SCORE,
    MILLI,
    Bools,
    Choice,
    ClusterView,
    Task,
)
from extender.policies.model import Allocation, FloatArray, IntArray, NodeTable, PodDemand

POPULARITY = 1.0
"""Share of tasks covered by the task types kept in the target workload (most frequent first; kept
weights renormalised). The artifact can cut rare types (`PodPopularityThreshold`); on the OpenB
default list a 95% cut drops every multi-GPU type (0.9% of tasks, but 9% of the GPU demand) and
FGD then allocates about 5 points less at 130% demand, so all types are kept by default."""


@dataclass(frozen=True, eq=False)
class TargetWorkload:
    """Task types (CPU milli, per-GPU milli, GPU count, accepted models) and their probabilities."""

    cpu_milli: I64
    gpu_milli: I64
    num_gpu: I64
    spec: tuple[tuple[str, ...], ...]
    weight: F64

    def __len__(self) -> int:
        return len(self.weight)

    @classmethod
    def from_tasks(cls, cpu_milli: Sequence[int], num_gpu: Sequence[int], gpu_milli: Sequence[int],
                   spec: Sequence[tuple[str, ...]] | None = None,
                   popularity: float = POPULARITY) -> TargetWorkload:
        """The distribution of task types in a task list, cut at `popularity` (0 < p <= 1)."""
        if not 0 < popularity <= 1:
            raise ValueError(f"popularity must be in (0, 1], got {popularity}")
        specs = spec if spec is not None else [()] * len(cpu_milli)
        counts = Counter(
            (int(c), int(m) if n else 0, int(n), tuple(s))
            for c, n, m, s in zip(cpu_milli, num_gpu, gpu_milli, specs, strict=True))
        if not counts:
            raise ValueError("a target workload needs at least one task")
        total = sum(counts.values())
        # Most frequent first; equal counts in a fixed order so results do not depend on hashing.
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept, covered = [], 0
        for key, count in ranked:
            if covered >= popularity * total:
                break
            kept.append((key, count))
            covered += count
        weight = np.array([c for _, c in kept], np.float64)
        return cls(np.array([k[0] for k, _ in kept], np.int64),
                   np.array([k[1] for k, _ in kept], np.int64),
                   np.array([k[2] for k, _ in kept], np.int64),
                   tuple(k[3] for k, _ in kept), weight / weight.sum())

    @classmethod
    def from_mix(cls, mix: Sequence[tuple[int, int, int, int]]) -> TargetWorkload:
        """From (cpu_milli, num_gpu, gpu_milli per GPU, count) rows, e.g. OPENB_DEFAULT_MIX."""
        cpu = [c for c, _, _, k in mix for _ in range(k)]
        num = [n for _, n, _, k in mix for _ in range(k)]
        milli = [m for _, _, m, k in mix for _ in range(k)]
        return cls.from_tasks(cpu, num, milli)

    def access(self, node_models: Sequence[str]) -> Bools:
        """(nodes, types): whether each node's GPU model is accepted by each type."""
        out = np.ones((len(node_models), len(self)), bool)
        for t, allowed in enumerate(self.spec):
            if allowed:
                out[:, t] = np.isin(np.asarray(node_models, dtype=object), allowed)
        return out


def _base(cpu_free: I64, gpu_free: I64, access: Bools, wl: TargetWorkload
          ) -> tuple[Bools, I64, I64, I64]:
    """Per (node, GPU type): enough-GPU count and the idle share of GPUs too small for the type."""
    gpu_t = wl.num_gpu > 0
    # Count and small share depend only on the per-GPU share: compute them per distinct share.
    milli, back = np.unique(wl.gpu_milli[gpu_t], return_inverse=True)
    free = np.maximum(gpu_free, 0)
    fits = gpu_free[:, :, None] >= milli[None, None, :]
    count = fits.sum(axis=1)[:, back]
    small = (free[:, :, None] * ~fits).sum(axis=1)[:, back]
    return gpu_t, count, small, free.sum(axis=1)


def _total(ok: Bools, small: npt.NDArray[np.int64] | F64, idle: npt.NDArray[np.int64] | F64,
           w_gpu: F64, w_cpu: float) -> F64:
    frag = np.where(ok, small, idle[..., None])
    total: F64 = (frag * w_gpu).sum(axis=-1) + w_cpu * idle
    return total


def node_fragmentation(cpu_free: I64, gpu_free: I64, access: Bools, wl: TargetWorkload) -> F64:
    """F_n in milli-GPU for each node (see the module docstring); `access` from `wl.access`."""
    gpu_t, count, small, idle = _base(cpu_free, gpu_free, access, wl)
    ok = (access[:, gpu_t] & (cpu_free[:, None] >= wl.cpu_milli[gpu_t])
          & (count >= wl.num_gpu[gpu_t]))
    return _total(ok, small, idle, wl.weight[gpu_t], float(wl.weight[~gpu_t].sum()))


def placement_delta(task: Task, cpu_free: I64, gpu_free: I64, access: Bools, wl: TargetWorkload,
                    *, group: I64 | None = None) -> tuple[F64, I64]:
    """Growth of F_n if `task` were placed on each node, and the GPU slot that achieves it for a
    GPU-sharing task (-1 otherwise). Rows where the task cannot go get +inf.

    Nodes in the same state (free CPU, free share per slot, accepted types) get the same answer,
    so it is computed once per distinct state: an empty cluster costs as much as one node.
    `group` (optional) labels rows whose `access` rows are equal, e.g. the GPU model index.
    """
    if group is None:
        group = np.unique(np.packbits(access, axis=1), axis=0, return_inverse=True)[1]
    # A 64-bit hash of each state (fixed odd multipliers, wrapping arithmetic): 1-D unique is far
    # faster than unique(axis=0); a collision needs two of ~10^4 states to meet among 2^64 values.
    w = _HASH_WEIGHTS[: gpu_free.shape[1] + 2]
    hashed = cpu_free * w[0] + gpu_free @ w[2:] + group.reshape(-1) * w[1]
    _, first, back = np.unique(hashed, return_index=True, return_inverse=True)
    delta, slot = _placement_delta(task, cpu_free[first], gpu_free[first], access[first], wl)
    back = back.reshape(-1)
    return delta[back], slot[back]


_HASH_WEIGHTS = np.random.default_rng(20230710).integers(1, 2**62, 66, dtype=np.int64) * 2 + 1
"""Enough for 64 GPU slots per node."""


def _placement_delta(task: Task, cpu_free: I64, gpu_free: I64, access: Bools, wl: TargetWorkload
                     ) -> tuple[F64, I64]:
    gpu_t, count, small, idle = _base(cpu_free, gpu_free, access, wl)
    acc, cpu_t, num_t = access[:, gpu_t], wl.cpu_milli[gpu_t], wl.num_gpu[gpu_t]
    w_gpu, w_cpu = wl.weight[gpu_t], float(wl.weight[~gpu_t].sum())
    before = _total(acc & (cpu_free[:, None] >= cpu_t) & (count >= num_t), small, idle, w_gpu, w_cpu)
    cpu_after = cpu_free - task.cpu_milli
    n = len(cpu_free)
    slot = np.full(n, -1, np.int64)
    if task.shares_gpu:
        # Only one GPU changes; GPUs of a node with the same free share give the same result, so
        # evaluate each distinct (node, free share) pair that fits, then keep each node's best.
        ordered = np.sort(gpu_free, axis=1)
        distinct = np.ones(ordered.shape, bool)
        distinct[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        row, col = np.nonzero(distinct & (ordered >= task.gpu_milli))
        old = ordered[row, col][:, None]
        new = old - task.gpu_milli
        milli = wl.gpu_milli[gpu_t][None, :]
        count_after = count[row] - (old >= milli) + (new >= milli)
        small_after = small[row] - np.where(old < milli, old, 0) + np.where(new < milli, new, 0)
        ok = acc[row] & (cpu_after[row, None] >= cpu_t) & (count_after >= num_t)
        after = _total(ok, small_after, idle[row] - task.gpu_milli, w_gpu, w_cpu)
        best_after = np.full(n, np.inf)
        np.minimum.at(best_after, row, after)
        # The free share that achieved it (first pair at the minimum), then the first such slot.
        winner = np.isclose(after, best_after[row])
        best_value = np.full(n, -1, np.int64)
        first = np.flatnonzero(winner)[::-1]  # written last-to-first so the first pair wins
        best_value[row[first]] = old[first, 0]
        has = best_value >= 0
        slot = np.where(has, np.argmax(gpu_free == best_value[:, None], axis=1), -1)
        return best_after - before, slot.astype(np.int64)
    used = task.num_gpu * MILLI if task.num_gpu else 0
    ok = acc & (cpu_after[:, None] >= cpu_t) & (count - task.num_gpu >= num_t)
    after = _total(ok, small, idle - used, w_gpu, w_cpu)
    possible = (gpu_free == MILLI).sum(axis=1) >= task.num_gpu
    return np.where(possible, after - before, np.inf), slot


def _sigmoid(x: F64) -> F64:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def fgd_policy(workload: TargetWorkload, models: Sequence[str]) -> Callable[
        [Task, ClusterView, Bools, np.random.Generator], Choice]:
    """The FGD policy for a cluster whose GPU model indices name `models`."""
    # Row m of `by_model` is the access of model index m; the last row serves nodes without GPUs.
    by_model = workload.access([*models, ""])

    def fgd(task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator) -> Choice:
        rows = np.flatnonzero(ok)
        scores = np.zeros(len(view))
        gpu = np.full(len(view), -1, np.int64)
        if len(rows):
            group = view.gpu_model[rows]
            delta, slot = placement_delta(task, view.cpu_free[rows], view.gpu_free[rows],
                                          by_model[group], workload, group=group)
            scores[rows] = fgd_levels(delta)
            gpu[rows] = slot
        return Choice(scores, gpu)

    return fgd


def fgd_levels(delta: F64) -> F64:
    """FGD's integer score 0..100 for a fragmentation growth (milli-GPU; +inf: cannot go)."""
    return np.floor(_sigmoid(-delta / MILLI) * MAX_NODE_SCORE)


GOODNESS_PER_LEVEL = 4.0
"""Each level of FGD's score below the best candidate's divides the goodness by e^4 (one level is
about 40 milli-GPU of growth near zero), so only the best level keeps the extender's top score."""


def goodness(task: Task, cpu_free: I64, gpu_free: I64, access: Bools, wl: TargetWorkload, *,
             group: I64 | None = None) -> F64:
    """0..1 per node: exp(-GOODNESS_PER_LEVEL x (FGD levels below the best of these nodes)), so 1
    exactly on the nodes FGD would draw from (its best integer score), 0 where the task cannot
    go. A filter rule `below: 0.999` on it keeps just FGD's choices."""
    delta, _ = placement_delta(task, cpu_free, gpu_free, access, wl, group=group)
    finite = np.isfinite(delta)
    if not finite.any():
        return np.zeros(len(delta))
    levels = fgd_levels(delta)
    best = levels[finite].max()
    return np.where(finite, np.exp(-(best - levels) * GOODNESS_PER_LEVEL), 0.0)


def _with_allocation(alloc: Allocation, rows: IntArray) -> Bools:
    """The `rows` in the table that have allocation data. A derived term gives the others NaN:
    it is dropped for them (as a missing metric) and they take no part in finding the best."""
    known = rows >= 0
    known[known] = ~np.isnan(alloc.cpu_free_milli[rows[known]])
    return known


def fragmentation_term(workload: TargetWorkload) -> Callable[
        [PodDemand, NodeTable, IntArray], FloatArray | None]:
    """The `gpu_fragmentation` derived score term for the metrics-aware policy.

    Returns `(pod, table, rows) -> goodness 0..1 per row` (see `goodness`), or None when the table
    carries no allocation state. Rows not in the table (-1) get NaN (the term is then dropped for
    them, as for a missing metric).
    """

    def term(pod: PodDemand, table: NodeTable, rows: IntArray) -> FloatArray | None:
        alloc = table.allocation
        if alloc is None:
            return None
        known = _with_allocation(alloc, rows)
        out = np.full(len(rows), np.nan)
        if not known.any():
            return out
        safe = rows[known]
        per_gpu = pod.gpu_milli // pod.gpus if pod.gpus > 1 else pod.gpu_milli
        task = Task(cpu_milli=int(round(pod.cpu_cores * 1000)),
                    memory_mib=int(pod.memory_bytes // 2**20),
                    num_gpu=max(pod.gpus, 1 if pod.gpu_milli else 0), gpu_milli=int(per_gpu))
        gpu_free = alloc.gpu_free_milli[safe].astype(np.int64)
        models, group = np.unique(np.asarray(alloc.gpu_model, dtype=str)[safe],
                                  return_inverse=True)
        group = group.reshape(-1).astype(np.int64)
        access = workload.access(list(models))[group]
        if pod.gpu_models and task.num_gpu:
            allowed = np.isin(models, pod.gpu_models)[group]
            gpu_free = np.where(allowed[:, None], gpu_free, -1)
        out[known] = goodness(task, alloc.cpu_free_milli[safe].astype(np.int64), gpu_free,
                              access, workload, group=group)
        return out

    return term


def packing_term() -> Callable[[PodDemand, NodeTable, IntArray], FloatArray | None]:
    """The `gpu_packing` derived score term: the allocated share of each node's GPUs (by
    requests), 1 on nodes without GPUs (nothing there for GPU tasks to use).

    Weighted alone after a `gpu_fragmentation` filter, it breaks the ties among FGD's best nodes
    towards the ones whose GPUs are already taken, keeping whole idle nodes for the tasks that
    need them (FGD itself breaks them at random). Same shape as `fragmentation_term`.
    """

    def term(pod: PodDemand, table: NodeTable, rows: IntArray) -> FloatArray | None:
        del pod  # the same for every pod
        alloc = table.allocation
        if alloc is None:
            return None
        known = _with_allocation(alloc, rows)
        out = np.full(len(rows), np.nan)
        gpu_free = alloc.gpu_free_milli[rows[known]]
        slots = gpu_free >= 0
        count = slots.sum(axis=1)
        idle = np.where(slots, gpu_free, 0.0).sum(axis=1)
        out[known] = 1.0 - np.divide(idle, count * float(MILLI), out=np.zeros(len(count)),
                                     where=count > 0)
        return out

    return term


def derived_terms(workload: TargetWorkload) -> dict[
        str, Callable[[PodDemand, NodeTable, IntArray], FloatArray | None]]:
    """Every allocation-derived score term, `gpu_fragmentation` against `workload`."""
    return {"gpu_fragmentation": fragmentation_term(workload), "gpu_packing": packing_term()}


OPENB_DEFAULT_MIX: tuple[tuple[int, int, int, int], ...] = (
    (12000, 1, 1000, 2008), (4000, 1, 800, 1078), (4000, 1, 1000, 630), (12000, 1, 450, 394),
    (16000, 1, 1000, 383), (12000, 0, 0, 381), (8000, 1, 450, 364), (32000, 0, 0, 290),
    (18000, 1, 1000, 255), (12000, 1, 650, 237), (4000, 1, 300, 232), (16000, 0, 0, 229),
    (8000, 1, 1000, 217), (10000, 1, 1000, 201), (8000, 0, 0, 185), (4000, 1, 250, 126),
    (6000, 1, 450, 120), (14000, 1, 1000, 102), (24000, 1, 1000, 84), (4000, 1, 600, 75),
    (4000, 1, 550, 72), (8000, 1, 300, 72), (4000, 1, 350, 58), (4000, 1, 150, 54),
    (4000, 1, 200, 43), (1000, 1, 300, 23), (64000, 8, 1000, 21), (6000, 1, 150, 20),
    (8000, 1, 200, 19), (4000, 1, 100, 18), (4000, 1, 500, 18), (8000, 1, 250, 18),
    (88000, 8, 1000, 18), (1000, 1, 1000, 15), (8000, 1, 650, 12), (32000, 4, 1000, 12),
    (2000, 1, 1000, 8), (6000, 1, 1000, 8), (16000, 2, 1000, 7), (120000, 8, 1000, 5),
    (6000, 1, 50, 4), (6000, 1, 100, 4), (4000, 1, 50, 3), (6000, 2, 1000, 3),
    (30000, 2, 1000, 3), (60000, 4, 1000, 3), (1000, 1, 650, 2), (2000, 1, 350, 2),
    (4000, 1, 450, 2), (4000, 1, 650, 2), (6000, 1, 300, 2), (8000, 1, 100, 2),
    (18000, 2, 1000, 2), (20000, 0, 0, 2), (1000, 1, 150, 1), (8000, 1, 500, 1), (10000, 0, 0, 1),
    (14000, 2, 1000, 1),

)
"""(cpu_milli, num_gpu, gpu_milli per GPU, tasks): the OpenB default list's 8152 tasks with CPU
rounded to 2 cores and GPU shares to 0.05 GPU. The extender's target workload until a profile can
name its own."""

DERIVED_TERMS = derived_terms(TargetWorkload.from_mix(OPENB_DEFAULT_MIX))
"""Allocation-derived score terms for `extender.policies.engine.Engine(derived_terms=...)`."""
