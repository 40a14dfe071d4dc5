"""The rebalancer in the replay: the same `detect` and `choose` as `extender rebalance`, on what
the simulated metrics pipeline shows.

Every `interval_s` of simulated time the replay hands over its lagged observation and its
running tasks; this module builds the extender's NodeTable from them (the simulator's own
`OursPolicy.table`, the same one its scheduling decisions see), runs `detect` with a debounce
state carried between ticks, and `choose` with the cool-downs and a token bucket, as the
controller does. The replay then moves each chosen task: it leaves its node and restarts on
the expected destination with its remaining work plus `simulation.restart_cost_s` (see
`extender.sim.replay`).
"""

from __future__ import annotations

from collections.abc import Mapping

from extender.openb import Nodes, Pods
from extender.policies.baselines import MILLI
from extender.policies.fragmentation import TargetWorkload
from extender.rebalance.choose import NodeRoom, PodView, choose
from extender.rebalance.controller import TokenBucket
from extender.rebalance.detect import Debounce, detect
from extender.rebalance.settings import RebalanceSettings
from extender.settings import Settings
from extender.sim.cluster import Cluster, task_of
from extender.sim.policies import OursPolicy
from extender.sim.replay import Observation


class SimRebalancer:
    """Chooses moves for the replay (see the module docstring)."""

    def __init__(self, settings: RebalanceSettings, extender: Settings, nodes: Nodes, pods: Pods,
                 workload: TargetWorkload) -> None:
        self.settings, self.extender = settings, extender
        self.nodes, self.pods = nodes, pods
        self.interval_s = settings.interval_s
        self.restart_cost_s = settings.simulation.restart_cost_s
        profile = settings.profile or extender.policy.default
        self.ours = OursPolicy(extender, profile, nodes, workload)
        self.state = Debounce()
        self.cooldown: dict[str, float] = {}
        self.started: dict[int, float] = {}
        """Task -> when it last (re)started, for `min_pod_age_s`."""
        self.bucket: TokenBucket | None = None
        self.hot_ticks = 0

    def moves(self, now: float, seen: Observation, cluster: Cluster,
              running: Mapping[int, tuple[int, float]]) -> list[tuple[int, int]]:
        """(task, destination node) pairs to move now; `running` maps each running task to its
        node and start time."""
        if self.bucket is None:
            limits = self.settings.limits
            self.bucket = TokenBucket(limits.rate_per_minute / 60.0, limits.burst, now)
        self.ours.observe(seen)
        table = self.ours.table(cluster.view(seen.cpu_utilisation))
        found = detect(table, self.settings.thresholds, self.state, now=now,
                       max_staleness_s=self.extender.cache.max_staleness_s,
                       debounce_cycles=self.settings.debounce_cycles)
        self.state = found.state
        if not found.hot:
            return []
        self.hot_ticks += 1
        names = self.nodes.names
        hot_rows = {self.ours.index[n] for n in found.hot}
        pods = []
        for i, (node, began) in running.items():
            if node not in hot_rows:
                continue
            task = task_of(self.pods, i, self.nodes.models)
            pods.append(PodView(namespace="sim", name=str(i), node=names[node],
                                demand=self.ours.demand(task, str(i)), owner_kind="ReplicaSet",
                                created_at=self.started.get(i, began)))
        idle_gpus = (cluster.gpu_free == MILLI).sum(axis=1)
        views = {name: NodeRoom(name, cpu_free_cores=float(cluster.cpu_free[r]) / 1000.0,
                                memory_free_bytes=float(cluster.memory_free[r]) * 2.0**20,
                                gpus_free=int(idle_gpus[r]))
                 for r, name in enumerate(names)}
        self.cooldown = {n: t for n, t in self.cooldown.items() if t > now}
        plan = choose(found, pods, views, table, self.ours.engine, self.settings, now=now,
                      budget=self.bucket.available(now), cooldown=self.cooldown)
        out = []
        for ev in plan.evictions:
            if not self.bucket.take(now):
                break
            i = int(ev.pod.name)
            out.append((i, self.ours.index[ev.destination]))
            self.started[i] = now
            self.state = self.state.reset(ev.pod.node)
            self.cooldown[ev.pod.node] = self.cooldown[ev.destination] = now + self.settings.cooldown_s
        return out

    def refused(self) -> None:
        """A chosen move the cluster could not take (e.g. no GPU of an accepted model)."""
        if self.bucket is not None:
            self.bucket.give_back()
