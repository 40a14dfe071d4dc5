"""Every behavioural model of the replay, with its parameters, in one place.

The OpenB trace has requests and lifetimes, not measured utilisation, so the replay models what
the scheduler would observe and what placement changes. All draws come from one seeded generator
per run, per task and in trace order, so a seed fixes them for every policy alike.

- Usage: a task uses a fixed fraction of its CPU and memory requests, drawn per task from
  `lo + (hi - lo) * Beta(a, b)` with parameters per QoS class (`USAGE`). Best-effort and burstable
  tasks may use more CPU than they request (requests are not limits), latency-sensitive and
  guaranteed ones stay below. Memory uses the same shape, capped at the request.
- GPU utilisation: a task keeps its GPUs busy at a fraction `GPU_UTIL` of their compute; a
  GPU-sharing task asks for compute in proportion to its share times `SHARE_BURST`. At 1.0 the
  shares never oversubscribe a GPU; raise it to model compute contention between sharing tasks
  (a share of GPU memory does not cap compute on real devices).
- Contention: a node whose CPU demand exceeds its cores, or one of whose GPUs is asked for more
  than 100%, runs all its tasks at rate min(1, supply / demand) (proportional share).
- Deadlines: a task's expected time is its trace duration; contention stretches it by the inverse
  of its mean rate. It misses its deadline when the stretch exceeds `DEADLINE_MARGIN` (the jitter
  the owner tolerates). Departures stay at the trace's times, so every policy carries the same
  load; the lost progress is what is measured. A task that is never placed counts as a miss.
- Hot spots: node-time with CPU or memory usage above `HOT_THRESHOLD` of capacity.
- Power: `NODE_IDLE_W` + `NODE_W_PER_CORE` per core while idle; a node running anything adds
  `NODE_ACTIVE_W` (package out of deep idle states) and `CPU_W_PER_BUSY_CORE` per busy core. Each
  GPU draws its model's idle power when it runs nothing, else its active floor plus the rest of
  its board power times its load (`GPU_POWER`). Energy never falls below the all-idle floor.
- Metrics lag: the scheduler sees usage as of the last scrape before the last cache refresh
  (`SCRAPE_S` then `REFRESH_S`, as in production): state older than up to 30 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

USAGE: dict[str, tuple[float, float, float, float]] = {
    # qos: (beta a, beta b, lowest fraction of the request, highest fraction)
    "LS": (2.0, 2.0, 0.2, 0.9),
    "Guaranteed": (2.0, 2.0, 0.4, 1.0),
    "Burstable": (2.0, 2.0, 0.3, 1.4),
    "BE": (2.0, 2.0, 0.3, 1.5),
}
GPU_UTIL = (2.0, 2.0, 0.3, 1.0)  # beta a, b, low, high: a task's GPU utilisation of its GPUs
SHARE_BURST = 1.0  # compute asked by a sharing task per unit of its (memory) share
DEADLINE_MARGIN = 0.10  # a task may run 10% longer than in the trace before it misses
HOT_THRESHOLD = 0.90  # usage above 90% of capacity is a hot spot

NODE_IDLE_W = 100.0
NODE_W_PER_CORE = 1.0  # idle watts per installed core (memory, VRMs scale with the box)
NODE_ACTIVE_W = 40.0
CPU_W_PER_BUSY_CORE = 3.0
GPU_POWER: dict[str, tuple[float, float, float]] = {
    # model: (idle W, active floor W, board power W); G1-G3 are undisclosed, assumed V100-class
    "P100": (30.0, 60.0, 250.0),
    "V100M16": (35.0, 70.0, 300.0),
    "V100M32": (35.0, 70.0, 300.0),
    "T4": (10.0, 30.0, 70.0),
    "A10": (20.0, 50.0, 150.0),
}
GPU_POWER_DEFAULT = (35.0, 70.0, 300.0)

SCRAPE_S = 15.0
REFRESH_S = 15.0


@dataclass(frozen=True, eq=False)
class TaskUsage:
    """Per task: CPU and memory use as fractions of the requests, GPU utilisation 0..1."""

    cpu: F64
    memory: F64
    gpu: F64


def _draw(rng: np.random.Generator, n: int, params: tuple[float, float, float, float]) -> F64:
    a, b, lo, hi = params
    return lo + (hi - lo) * rng.beta(a, b, n)


def draw_usage(qos: tuple[str, ...], seed: int) -> TaskUsage:
    """Usage fractions for tasks of these QoS classes, in order; the same seed gives the same
    draws."""
    rng = np.random.default_rng(seed)
    n = len(qos)
    classes = np.array(qos, dtype=object)
    cpu, memory = np.zeros(n), np.zeros(n)
    for name, params in USAGE.items():
        mask = classes == name
        cpu[mask] = _draw(rng, int(mask.sum()), params)
        memory[mask] = np.minimum(_draw(rng, int(mask.sum()), params), 1.0)
    return TaskUsage(cpu, memory, _draw(rng, n, GPU_UTIL))


def gpu_demand(share_milli: int, util: float) -> float:
    """Compute asked of one GPU by a task using `share_milli` of it (1000: whole GPU)."""
    if share_milli >= 1000:
        return util
    return min(1.0, share_milli / 1000 * SHARE_BURST * util)


def rate(cpu_demand_milli: float, cpu_capacity_milli: float, gpu_load: F64) -> float:
    """Progress rate of a node's tasks under proportional-share contention (1 = no slowdown)."""
    r = 1.0
    if cpu_demand_milli > cpu_capacity_milli > 0:
        r = cpu_capacity_milli / cpu_demand_milli
    peak = float(gpu_load.max()) if len(gpu_load) else 0.0
    if peak > 1.0:
        r = min(r, 1.0 / peak)
    return r


def gpu_power(model: str) -> tuple[float, float, float]:
    """(idle, active floor, board power) watts of one GPU of `model`."""
    return GPU_POWER.get(model, GPU_POWER_DEFAULT)


def node_gpu_power(names: Sequence[str], model: npt.NDArray[np.int64]
                   ) -> list[tuple[float, float, float]]:
    """`gpu_power` of each node's GPU model (`model[i]` indexes `names`, -1: no GPU)."""
    return [gpu_power(names[m]) if m >= 0 else (0.0, 0.0, 0.0) for m in model]


def idle_powers(cores: F64, params: Sequence[tuple[float, float, float]],
                gpus: npt.NDArray[np.int64]) -> F64:
    """`idle_power` of every node: `cores` each, `gpus` GPUs of the `params` (`node_gpu_power`)."""
    return np.array([idle_power(c, p[0] * k) for c, p, k in zip(cores, params, gpus, strict=True)])


def idle_power(cores: float, gpu_idle_w: float) -> float:
    """Watts of a node running nothing: the floor energy is measured against."""
    return NODE_IDLE_W + NODE_W_PER_CORE * cores + gpu_idle_w


def node_power(cores: float, busy_cores: float, running: bool, gpu_busy: npt.NDArray[np.bool_],
               gpu_load: F64, gpu_params: tuple[float, float, float], gpu_slots: int) -> float:
    """Watts of one node (see the module docstring); never below `idle_power`."""
    idle_w, floor_w, board_w = gpu_params
    watts = NODE_IDLE_W + NODE_W_PER_CORE * cores
    if running:
        watts += NODE_ACTIVE_W + CPU_W_PER_BUSY_CORE * min(busy_cores, cores)
    busy = gpu_busy[:gpu_slots]
    load = np.minimum(gpu_load[:gpu_slots], 1.0)
    watts += float(np.where(busy, floor_w + (board_w - floor_w) * load, idle_w).sum())
    return watts


def visible_time(now: float) -> float:
    """The time whose state the scheduler sees at `now`: the cache last refreshed at a multiple
    of `REFRESH_S`, and Prometheus then held a sample up to `SCRAPE_S` old (lag 15..30 s)."""
    return float(np.floor(now / REFRESH_S) * REFRESH_S - SCRAPE_S)
