"""The replay: the trace's arrivals and departures on the whole cluster, with modelled usage.

Tasks arrive at `creation_time` and leave after their trace duration (departures first at equal
times); arrivals can be brought closer in time (`compress`) for more load. A
task that fits nowhere when it arrives is not retried and counts as a deadline miss. Between
events nothing changes, so per-node integrals (hot-spot time, energy, task progress) are updated
only when a node's tasks change, and once at the end. The models are in `extender.sim.models`.

Policies see the measured CPU utilisation as of `models.visible_time(now)`: the state at that
time, rebuilt from the current state minus the changes made since (kept for 60 s).
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from extender.openb import Nodes, Pods, TraceError
from extender.policies.baselines import Policy, pick_gpus
from extender.sim import models
from extender.sim.cluster import Cluster, Stateful, decide, task_of

F64 = npt.NDArray[np.float64]
HISTORY_S = 60.0  # changes kept to rebuild the lagged view (lag is at most 30 s)


@dataclass(frozen=True, eq=False)
class Observation:
    """What the metrics pipeline would show at `at`: per node usage as of `seen_at`."""

    at: float
    seen_at: float
    cpu_utilisation: F64
    memory_used_mib: F64
    gpu_utilisation: F64
    """Mean load of the node's GPUs (NaN for nodes without GPUs)."""
    power_watts: F64
    deadline_risk: F64
    """Share of progress the node's tasks are losing beyond the deadline margin, 0..1: what a
    deadline sidecar would report as `deadline_miss_ratio`."""


@dataclass
class ReplayResult:
    policy: str
    seed: int
    placed: int
    unscheduled: int
    deadline_misses: int
    tasks: int
    hotspot_node_minutes: float
    energy_kwh: float
    idle_energy_kwh: float
    gpu_alloc_ratio: float
    """Time-averaged allocated GPU share of capacity."""
    decision_ms: F64
    wall_s: float
    slowdown: F64 = dataclasses.field(default_factory=lambda: np.zeros(0))
    """Per placed task: time it ran over the progress it made (1 = no contention), judged at
    its departure or, for tasks still running, at the end."""
    load: float = 1.0
    """The arrival speed-up the run was made with (`compress`)."""
    evictions: int = 0
    """Tasks the rebalancer moved (each restarted elsewhere; see `Mover`)."""

    @property
    def deadline_miss_rate(self) -> float:
        return self.deadline_misses / self.tasks if self.tasks else 0.0

    @property
    def energy_above_idle_kwh(self) -> float:
        """Energy beyond the all-idle floor: what placement changes (the floor dominates)."""
        return self.energy_kwh - self.idle_energy_kwh

    @property
    def slowdown_p99(self) -> float:
        """99th percentile of the per-task slowdown (NaN when nothing was placed)."""
        return float(np.percentile(self.slowdown, 99)) if len(self.slowdown) else float("nan")


class _State:
    """Usage per node and the integrals that depend on it."""

    def __init__(self, nodes: Nodes, start: float) -> None:
        n, g = len(nodes), max(nodes.max_gpus, 1)
        self.nodes = nodes
        self.cores = nodes.cpu_milli / 1000.0
        self.cpu_demand = np.zeros(n)
        self.memory_used = np.zeros(n)
        self.gpu_load = np.zeros((n, g))
        self.gpu_tasks = np.zeros((n, g), np.int64)
        self.tasks = np.zeros(n, np.int64)
        self.last = np.full(n, start)
        self.hot_s = np.zeros(n)
        self.energy_j = np.zeros(n)
        self.progress = np.zeros(n)
        self.rate = np.ones(n)
        self.params = models.node_gpu_power(nodes.models, nodes.model)
        self.idle_w = models.idle_powers(self.cores, self.params, nodes.gpus)
        self.power = self.idle_w.copy()
        self.hot = np.zeros(n, bool)
        self.history: deque[tuple[float, int, float, float, F64]] = deque()

    def advance(self, node: int, now: float) -> None:
        dt = now - self.last[node]
        if dt > 0:
            self.energy_j[node] += self.power[node] * dt
            self.progress[node] += self.rate[node] * dt
            if self.hot[node]:
                self.hot_s[node] += dt
            self.last[node] = now

    def refresh(self, node: int) -> None:
        cap = float(self.nodes.cpu_milli[node])
        k = int(self.nodes.gpus[node])
        self.rate[node] = models.rate(self.cpu_demand[node], cap, self.gpu_load[node, :k])
        mem = float(self.nodes.memory_mib[node])
        self.hot[node] = (self.cpu_demand[node] > models.HOT_THRESHOLD * cap
                          or self.memory_used[node] > models.HOT_THRESHOLD * mem)
        busy = min(self.cpu_demand[node], cap) / 1000.0
        self.power[node] = models.node_power(self.cores[node], busy, bool(self.tasks[node]),
                                             self.gpu_tasks[node] > 0, self.gpu_load[node],
                                             self.params[node], k)

    def change(self, node: int, now: float, sign: int, cpu: float, memory: float,
               gpus: tuple[int, ...], load: float) -> None:
        self.advance(node, now)
        self.cpu_demand[node] += sign * cpu
        self.memory_used[node] += sign * memory
        self.tasks[node] += sign
        delta = np.zeros(self.gpu_load.shape[1])
        for g in gpus:
            self.gpu_load[node, g] += sign * load
            self.gpu_tasks[node, g] += sign
            delta[g] = sign * load
        self.refresh(node)
        self.history.append((now, node, sign * cpu, sign * memory, delta))

    def observe(self, now: float) -> Observation:
        seen = models.visible_time(now)
        while self.history and self.history[0][0] < now - HISTORY_S:
            self.history.popleft()
        cpu, mem, load = self.cpu_demand.copy(), self.memory_used.copy(), self.gpu_load.copy()
        for at, node, d_cpu, d_mem, d_gpu in self.history:
            if at > seen:
                cpu[node] -= d_cpu
                mem[node] -= d_mem
                load[node] -= d_gpu
        caps = self.nodes.cpu_milli.astype(np.float64)
        util = np.clip(cpu / np.maximum(caps, 1.0), 0.0, 1.0)
        slots = np.arange(load.shape[1])[None, :] < self.nodes.gpus[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            gpu_util = np.where(self.nodes.gpus > 0,
                                (np.minimum(load, 1.0) * slots).sum(axis=1) / self.nodes.gpus,
                                np.nan)
        # Power as of `seen` is approximated by the current power of nodes that did not change.
        risk = np.clip(1.0 - self.rate * (1.0 + models.DEADLINE_MARGIN), 0.0, 1.0)
        return Observation(now, seen, util, mem, gpu_util, self.power.copy(), risk)


class Mover(Protocol):
    """A rebalancer in the replay (`extender.sim.rebalance.SimRebalancer`): every `interval_s` it
    names running tasks to move. A moved task leaves its node and restarts on the new one with
    its remaining work plus `restart_cost_s` of lost work, finishing that much later."""

    interval_s: float
    restart_cost_s: float

    def moves(self, now: float, seen: Observation, cluster: Cluster,
              running: Mapping[int, tuple[int, float]]) -> list[tuple[int, int]]: ...

    def refused(self) -> None: ...


def compress(pods: Pods, speedup: float) -> Pods:
    """The same tasks with arrivals `speedup` times closer together, durations kept: more load.

    Replayed literally the OpenB list keeps at most ~40 tasks alive at once on 1523 nodes (median
    task 9 minutes over 149 days); 1000x gives a 3.6-hour window at about 5% mean GPU demand.
    """
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    duration = pods.deletion - pods.creation
    start = float(pods.creation.min())
    creation = start + (pods.creation - start) / speedup
    return Pods(pods.names, pods.cpu_milli, pods.memory_mib, pods.num_gpu, pods.gpu_milli,
                pods.spec, pods.qos, creation, creation + duration)


def run_replay(nodes: Nodes, pods: Pods, policy: Policy, *, name: str, seed: int,
               speedup: float = 1.0, mover: Mover | None = None,
               on_task_end: Callable[[int, float, bool], None] | None = None) -> ReplayResult:
    """Replay `pods` on `nodes` under `policy` (arrivals `speedup` times denser, see `compress`),
    with `mover` moving tasks every `mover.interval_s` when given; deterministic for a given
    seed. `on_task_end(pod index, slowdown, missed)` is told the outcome of every placed task
    (when it ends, or at the end of the replay for those still running; slowdown = elapsed /
    progress achieved, 1 without contention)."""
    if not pods.has_times:
        raise TraceError("the replay needs creation_time and deletion_time for every pod "
                         "(this pod list has none; use the saturation experiment)")
    if speedup != 1.0:
        pods = compress(pods, speedup)
    wall = time.perf_counter()
    usage = models.draw_usage(pods.qos, seed)
    rng = np.random.default_rng(seed + 1_000_003)
    order = np.argsort(pods.creation, kind="stable")
    start = float(pods.creation[order[0]])
    # Measured from the first to the last arrival: the few services that outlive the trace would
    # otherwise stretch the measurement over an empty cluster.
    end = float(pods.creation.max())
    cluster = Cluster(nodes)
    state = _State(nodes, start)
    departures: list[tuple[float, int]] = []
    placement: dict[int, tuple[int, tuple[int, ...], float, float]] = {}
    latencies = np.zeros(len(pods))
    slowdowns: list[float] = []
    misses = unscheduled = placed = 0
    gpu_milli_seconds = 0.0
    last_t, allocated = start, 0
    due: dict[int, float] = {}  # departure of each moved task (its older heap entries are void)
    evictions = 0
    next_tick = start + mover.interval_s if mover is not None else float("inf")

    def account(now: float) -> None:
        nonlocal gpu_milli_seconds, last_t
        gpu_milli_seconds += allocated * (now - last_t)
        last_t = now

    def depart(now: float, i: int) -> None:
        nonlocal misses, allocated
        node, gpus, began, progress0 = placement.pop(i)
        task = task_of(pods, i, nodes.models)
        account(now)
        state.advance(node, now)
        expected = now - began
        missed = False
        if expected > 0:
            achieved = state.progress[node] - progress0
            if achieved * (1.0 + models.DEADLINE_MARGIN) < expected - 1e-9:
                misses += 1
                missed = True
            slowdowns.append(_slowdown(expected, achieved))
            if on_task_end is not None:
                on_task_end(i, expected / max(achieved, 1e-9), missed)
        cluster.release(node, task, gpus)
        allocated -= task.total_gpu_milli
        state.change(node, now, -1, task.cpu_milli * usage.cpu[i],
                     task.memory_mib * usage.memory[i], gpus,
                     models.gpu_demand(task.gpu_milli, float(usage.gpu[i])))

    def drain(until: float) -> None:
        while departures and departures[0][0] <= until:
            t, j = heapq.heappop(departures)
            if due.get(j, t) == t:
                depart(t, j)

    def move(now: float, i: int, target: int) -> bool:
        """Restart task `i` on `target` (see `Mover`); False when it does not fit there."""
        node, gpus, began, progress0 = placement[i]
        task = task_of(pods, i, nodes.models)
        try:
            slots = pick_gpus(task, cluster.gpu_free[target])
            cluster.place(target, task, slots)
        except ValueError:
            return False
        assert mover is not None
        cost = mover.restart_cost_s
        cpu, memory = task.cpu_milli * usage.cpu[i], task.memory_mib * usage.memory[i]
        load = models.gpu_demand(task.gpu_milli, float(usage.gpu[i]))
        state.advance(node, now)
        achieved = float(state.progress[node]) - progress0
        cluster.release(node, task, gpus)
        state.change(node, now, -1, cpu, memory, gpus, load)
        state.change(target, now, +1, cpu, memory, slots, load)
        # Progress so far minus the lost restart work carries over; the task leaves later.
        placement[i] = (target, slots, began, float(state.progress[target]) - (achieved - cost))
        if cost > 0:
            due[i] = due.get(i, max(float(pods.deletion[i]), began)) + cost
            heapq.heappush(departures, (due[i], i))
        return True

    for k, i in enumerate(order):
        now = float(pods.creation[i])
        while mover is not None and next_tick <= now:
            drain(next_tick)
            running = {j: (p[0], p[2]) for j, p in placement.items()}
            for j, target in mover.moves(next_tick, state.observe(next_tick), cluster, running):
                if move(next_tick, j, target):
                    evictions += 1
                else:
                    mover.refused()
            next_tick += mover.interval_s
        drain(now)
        task = task_of(pods, int(i), nodes.models)
        seen = state.observe(now)
        if isinstance(policy, Stateful):
            policy.observe(seen)
        node, gpus, latencies[k] = decide(task, cluster, policy, rng, seen.cpu_utilisation)
        if node < 0:
            unscheduled += 1
            misses += 1
            continue
        account(now)
        cluster.place(node, task, gpus)
        allocated += task.total_gpu_milli
        placed += 1
        state.change(node, now, +1, task.cpu_milli * usage.cpu[i],
                     task.memory_mib * usage.memory[i], gpus,
                     models.gpu_demand(task.gpu_milli, float(usage.gpu[i])))
        placement[int(i)] = (node, gpus, now, float(state.progress[node]))
        if isinstance(policy, Stateful):
            policy.placed(node, task, pods.names[i])
        heapq.heappush(departures, (max(float(pods.deletion[i]), now), int(i)))
    drain(end)
    account(end)
    for node in range(len(nodes)):
        state.advance(node, end)
    for i, (node, _, began, progress0) in placement.items():  # still running: judged so far
        achieved = state.progress[node] - progress0
        late = achieved * (1.0 + models.DEADLINE_MARGIN) < end - began - 1e-9
        misses += late
        if end > began:
            slowdowns.append(_slowdown(end - began, achieved))
            if on_task_end is not None:
                on_task_end(i, (end - began) / max(achieved, 1e-9), late)
    span = max(end - start, 1e-9)
    idle_j = float(state.idle_w.sum()) * span
    return ReplayResult(
        policy=name, seed=seed, placed=placed, unscheduled=unscheduled, deadline_misses=misses,
        tasks=len(pods), hotspot_node_minutes=float(state.hot_s.sum()) / 60.0,
        energy_kwh=float(state.energy_j.sum()) / 3.6e6, idle_energy_kwh=idle_j / 3.6e6,
        gpu_alloc_ratio=gpu_milli_seconds / span / max(cluster.gpu_capacity_milli, 1),
        decision_ms=latencies, wall_s=time.perf_counter() - wall,
        slowdown=np.array(slowdowns), load=speedup, evictions=evictions)


def _slowdown(elapsed: float, achieved: float) -> float:
    """Wall time over progress (>= 1; rates never exceed 1, so rounding is clipped)."""
    return max(1.0, elapsed / achieved) if achieved > 0 else float("inf")
