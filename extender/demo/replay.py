"""The demo's last act: a slice of the OpenB trace replayed in compressed time through the extender,
with a deadline sidecar per node pushing to a real Pushgateway.

The slice's arrivals are spread over `span_s` seconds of wall time; each task runs its trace
lifetime scaled by the same factor, clamped to `MIN_TASK_S..MAX_TASK_S` (the trace's tasks last
minutes to days, a demo has a minute). For each arrival the demo does what kube-scheduler does:
offer the nodes where the requests fit (CPU, memory, whole GPUs or a GPU share), `filter`, then
`prioritize` the nodes that passed, and place the pod on the best score. Its usage then shows in
the emulated exporters, hence in Prometheus and the extender's cache.

One node is throttled on purpose, the one the extender picks for the first task: it looks
idle in every metric, but its tasks take `SLOWDOWN` times their expected duration. Only the
deadline sidecar can tell: each node's sidecar (the same Tracker and Pusher as `extender
sidecar`, run in this process) hears each task start and end, counts misses against the expected
duration plus the jitter margin, and pushes `deadline_miss_ratio` to the Pushgateway every
second; Prometheus scrapes it with `honor_labels`, the extender refreshes, and its filter drops
the node.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from extender.openb import Nodes
from extender.policies.baselines import MILLI, Task, feasible, pick_gpus
from extender.sim.cluster import Cluster

if TYPE_CHECKING:
    import requests
    from rich.console import Console

    from extender.demo.emulator import EmulatedNode, Emulator
    from extender.sidecar.service import Sidecar

MIN_TASK_S = 6.0
MAX_TASK_S = 20.0
SLOWDOWN = 3.0
"""How much longer tasks take on the throttled node (misses need more than 1.5x + 1 s)."""
SIDECAR_PUSH_S = 1.0
SIDECAR_WINDOW_S = 60.0
TICK_S = 0.2
NAMESPACE = "trace"


@dataclass(frozen=True)
class TraceTask:
    """One pod of the slice, with compressed times (seconds from the start of the replay)."""

    name: str
    task: Task
    """Its requests, as the simulator counts them (GPU share per GPU, 1000 = whole GPUs)."""
    arrive_s: float
    expected_s: float


def trace_slice(pods_csv: Path, count: int, span_s: float, *, seed: int) -> list[TraceTask]:
    """`count` consecutive pods (by creation time, from a seeded start) with known lifetimes,
    arrivals mapped onto 0..span_s and lifetimes scaled alike (clamped)."""
    from extender.openb import load_pods

    pods = load_pods(pods_csv)
    lifetime = pods.deletion - pods.creation
    usable = np.flatnonzero(np.isfinite(pods.creation) & np.isfinite(lifetime) & (lifetime > 0))
    if len(usable) < count:
        raise ValueError(f"{pods_csv}: {len(usable)} pods with times, {count} wanted")
    usable = usable[np.argsort(pods.creation[usable], kind="stable")]
    start = int(np.random.default_rng(seed).integers(0, len(usable) - count + 1))
    chosen = usable[start:start + count]
    first, last = pods.creation[chosen[0]], pods.creation[chosen[-1]]
    factor = span_s / max(last - first, 1.0)
    return [TraceTask(pods.names[i], Task(cpu_milli=int(pods.cpu_milli[i]),
                                          memory_mib=int(pods.memory_mib[i]),
                                          num_gpu=int(pods.num_gpu[i]),
                                          gpu_milli=int(pods.gpu_milli[i])),
                      float((pods.creation[i] - first) * factor),
                      float(np.clip(lifetime[i] * factor, MIN_TASK_S, MAX_TASK_S)))
            for i in chosen]


def cluster_of(nodes: Sequence[EmulatedNode]) -> Cluster:
    """The simulator's request bookkeeping for the emulated nodes: what kube-scheduler's in-tree
    filter and the GPU device plugin would count (GPU models are not checked: the slice's tasks
    are offered every model)."""
    models = tuple(sorted({n.gpu_model for n in nodes if n.gpus}))
    return Cluster(Nodes(
        tuple(n.name for n in nodes), np.array([n.cpu_milli for n in nodes], np.int64),
        np.array([n.memory_mib for n in nodes], np.int64),
        np.array([n.gpus for n in nodes], np.int64),
        np.array([models.index(n.gpu_model) if n.gpus else -1 for n in nodes], np.int64),
        models))


@dataclass
class ReplaySummary:
    """What happened to the slice, for the summary."""

    slow: str = ""
    """The throttled node: the one that took the first task."""
    placed: dict[str, str] = field(default_factory=dict)
    """Task -> node."""
    placed_at: dict[str, float] = field(default_factory=dict)
    unschedulable: list[str] = field(default_factory=list)
    rejected_slow: int = 0
    """Decisions in which the extender's filter rejected the throttled node for deadline misses."""
    miss_seen: list[tuple[float, float | None]] = field(default_factory=list)
    """(seconds, deadline_miss_ratio the extender holds for the throttled node)."""
    first_seen_s: float | None = None
    """When the extender first held a miss ratio above 0 for the throttled node."""


def pod_body(task: TraceTask, uid: str, names: list[str]) -> bytes:
    """ExtenderArgs for `task` offered `names`: requests, and GPU sharing as OpenB annotates it."""
    from extender import protocol as wire
    from extender.policies.model import request_pod

    t = task.task
    pod = request_pod(name=task.name, namespace=NAMESPACE, uid=uid, cpu_milli=t.cpu_milli,
                      memory_mib=t.memory_mib, gpus=t.num_gpu, gpu_milli=t.gpu_milli)
    return wire.encode(wire.ExtenderArgs(Pod=pod, NodeNames=names))


class Replay:
    """Runs the slice against the live extender; see the module docstring."""

    def __init__(self, console: Console, session: requests.Session, url: str, emulator: Emulator,
                 pushgateway: str) -> None:
        self.console, self.session, self.url = console, session, url
        self.emulator = emulator
        self.pushgateway = pushgateway
        self.cluster = cluster_of(emulator.nodes)
        self.names = self.cluster.nodes.names
        self.sidecars: dict[str, Sidecar] = {}

    def _post(self, verb: str, body: bytes) -> Any:
        response = self.session.post(f"{self.url}/{verb}", data=body, timeout=5,
                                     headers={"Content-Type": "application/json"})
        response.raise_for_status()
        return response.json()

    def _sidecar(self, node: str) -> Sidecar:
        from extender.sidecar.service import build_sidecar
        from extender.sidecar.settings import PushSettings, SidecarSettings, WindowSettings

        if node not in self.sidecars:
            settings = SidecarSettings(push=PushSettings(interval_s=SIDECAR_PUSH_S),
                                       window=WindowSettings(seconds=SIDECAR_WINDOW_S, buckets=30))
            self.sidecars[node] = build_sidecar(settings, node=node, worker=f"{node}-worker",
                                                pushgateway=self.pushgateway).start()
        return self.sidecars[node]

    def _miss_ratio(self, node: str) -> float | None:
        detail = self.session.get(f"{self.url}/api/v1/nodes/{node}", timeout=5).json()
        reading = ((detail.get("node") or {}).get("metrics") or {}).get("deadline_miss_ratio") or {}
        return reading.get("value") if reading.get("fresh") else None

    def run(self, tasks: list[TraceTask]) -> ReplaySummary:
        """Replay `tasks` in real (compressed) time; returns when the last task has ended. The
        node that takes the first task, the extender's favourite, is the throttled one."""
        from extender.demo.emulator import EmulatedPod
        from extender.sidecar.events import TaskEnd, TaskStart

        out = ReplaySummary()
        ends: list[tuple[float, str, int, tuple[int, ...], Task]] = []
        start = time.monotonic()
        pending = list(tasks)
        while pending or ends:
            now = time.monotonic() - start
            while ends and ends[0][0] <= now:
                _, name, row, slots, done = heapq.heappop(ends)
                self._sidecar(self.names[row]).tracker.end(TaskEnd(id=name))
                self.emulator.remove(NAMESPACE, name)
                self.cluster.release(row, done, slots)
            while pending and pending[0].arrive_s <= now:
                task = pending.pop(0)
                node = self._schedule(task, out)
                if node is None:
                    continue
                out.slow = out.slow or node
                row = self.names.index(node)
                slots = pick_gpus(task.task, self.cluster.gpu_free[row])
                self.cluster.place(row, task.task, slots)
                self.emulator.place(EmulatedPod.single(NAMESPACE, task.name,
                                               cpu_cores=task.task.cpu_milli / MILLI,
                                               memory_bytes=task.task.memory_mib * 2**20,
                                               gpus=task.task.total_gpu_milli / MILLI), node)
                self._sidecar(node).tracker.start(TaskStart(
                    id=task.name, type="trace-task", expected_seconds=task.expected_s))
                duration = task.expected_s * (SLOWDOWN if node == out.slow else 1.0)
                heapq.heappush(ends, (now + duration, task.name, row, slots, task.task))
                out.placed[task.name], out.placed_at[task.name] = node, now
            seen = self._miss_ratio(out.slow) if out.slow else None
            out.miss_seen.append((now, seen))
            if seen and out.first_seen_s is None:
                out.first_seen_s = now
            time.sleep(TICK_S)
        return out

    def _schedule(self, task: TraceTask, out: ReplaySummary) -> str | None:
        fits = feasible(task.task, self.cluster.view())
        names = sorted(self.names[i] for i in np.flatnonzero(fits).tolist())
        if not names:
            out.unschedulable.append(task.name)
            return None
        uid = f"{task.name}-uid"
        filtered = self._post("filter", pod_body(task, uid, names))
        passed = filtered.get("NodeNames") or []
        reason = (filtered.get("FailedNodes") or {}).get(out.slow or "", "")
        if "deadline" in reason:
            out.rejected_slow += 1
        if not passed:
            out.unschedulable.append(task.name)
            return None
        if len(passed) == 1:
            return str(passed[0])
        ranked = self._post("prioritize", pod_body(task, uid, passed))
        return str(max(ranked, key=lambda h: (h["Score"], [-ord(c) for c in h["Host"]]))["Host"])

    def stop(self) -> None:
        """Stop every sidecar (last push, then its group is deleted from the Pushgateway)."""
        for sidecar in self.sidecars.values():
            sidecar.stop()

    def summary(self, tasks: list[TraceTask], out: ReplaySummary, plot_dir: Path) -> None:
        """Print the per-node table and write the timeline plot."""
        from rich.table import Table

        slow = out.slow
        table = Table(title="compressed trace replay: tasks per node (nodes that ran any)",
                      title_justify="left")
        for column in ("node", "tasks", "finished", "deadline misses (sidecar)",
                       "placed after the extender saw misses"):
            table.add_column(column)
        seen_at = out.first_seen_s
        for node in sorted(set(out.placed.values())):
            stats = self.sidecars[node].tracker.stats()
            after = sum(1 for t, n in out.placed.items()
                        if n == node and seen_at is not None and out.placed_at[t] >= seen_at)
            label = f"{node} [red](throttled x{SLOWDOWN:g})[/red]" if node == slow else node
            table.add_row(label, str(sum(1 for n in out.placed.values() if n == node)),
                          str(stats.tasks_total), str(stats.missed_total),
                          str(after) if node == slow else "")
        self.console.print(table)
        on_slow = [t for t, n in out.placed.items() if n == slow]
        seen = "never" if seen_at is None else f"{seen_at:.0f} s into the replay"
        self.console.print(
            f"{len(out.placed)} of {len(tasks)} tasks placed ({len(out.unschedulable)} fitted "
            f"nowhere). The throttled node {slow} took {len(on_slow)}; the extender saw its "
            f"misses {seen} and then rejected it in {out.rejected_slow} filter calls "
            f"(\"deadline misses ... > 50%\").")
        path = self._plot(slow, out, plot_dir)
        self.console.print(f"timeline plot: {path}")

    def _plot(self, slow: str, out: ReplaySummary, plot_dir: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plot_dir.mkdir(parents=True, exist_ok=True)
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        order = sorted(set(out.placed.values()))
        for task, node in out.placed.items():
            top.scatter(out.placed_at[task], order.index(node),
                        color="tab:red" if node == slow else "tab:blue", s=18)
        top.set_yticks(range(len(order)), order, fontsize=6)
        top.set_ylabel("node")
        top.set_title(f"placements (red: {slow}, throttled x{SLOWDOWN:g})")
        times = [t for t, _ in out.miss_seen]
        values = [np.nan if v is None else v for _, v in out.miss_seen]
        bottom.plot(times, values, color="tab:red")
        bottom.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        bottom.set_ylim(-0.05, 1.05)
        bottom.set_ylabel(f"deadline_miss_ratio of {slow}\n(as the extender holds it)")
        bottom.set_xlabel("seconds into the replay")
        fig.tight_layout()
        path = plot_dir / "demo-replay.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
