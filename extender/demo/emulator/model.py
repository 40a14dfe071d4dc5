"""The load model: emulated nodes' state, the ground truth the exporters report, and counters.

Deterministic per seed: each node gets a background load and a few background pods; `place()` adds
pods whose usage is their requests times a usage factor. Counters integrate the current rates over
the injected clock, so `rate()` in Prometheus returns the emulated values. `reading(node)` is the
ground truth a test compares query results with.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from extender.demo.emulator.fleet import GIB, MIB, EmulatedNode
from extender.demo.emulator.workload import Background, EmulatedContainer, EmulatedPod, PowerModel
from extender.demo.launcher import ScrapeTarget

NODE_EXPORTER_PORT = 9100
CPU_MODES = ("idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user")
# How busy time splits over the non-idle modes (iowait counts as busy for `1 - rate(idle)`).
BUSY_SPLIT = {"iowait": 0.03, "irq": 0.01, "nice": 0.02, "softirq": 0.04, "steal": 0.0,
              "system": 0.20, "user": 0.70}
CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
ConditionStatus = Literal["true", "false", "unknown"]
STATUSES: tuple[ConditionStatus, ...] = ("true", "false", "unknown")
LOOPBACK_BPS = 50_000.0  # lo traffic per node; constant so that queries must exclude it themselves
IO_PER_CORE_BPS = 2 * MIB  # network and disk traffic a busy pod core adds (a modest data-loader)


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    utilisation: float
    """0..1 (dcgm reports percent)."""
    fb_used_mib: int
    fb_free_mib: int
    power_w: float
    temperature_c: float
    pods: tuple[tuple[str, str, str], ...]
    """(namespace, pod, container) using this GPU."""


@dataclass(frozen=True)
class NodeReading:
    """What the exporters currently report for one node (rates per second)."""

    node: str
    ip: str
    cores: int
    cpu_utilisation: float
    """0..1, what `1 - avg(rate(node_cpu_seconds_total{mode="idle"}))` measures."""
    cpu_demand_cores: float
    """Cores the node's work wants; above `cores` the node is overcommitted (CPU pressure)."""
    load1: float
    memory_total_bytes: int
    memory_available_bytes: int
    receive_bps: float
    transmit_bps: float
    drop_pps: float
    disk_read_bps: float
    disk_write_bps: float
    disk_io_now: float
    filesystem_size_bytes: int
    filesystem_avail_bytes: int
    cpu_pressure: float
    """PSI cpu waiting seconds per second."""
    memory_pressure: float
    gpus: tuple[GpuReading, ...]
    host_power_w: float
    """Scaphandre's `scaph_host_power_microwatts` / 1e6."""
    power_w: float
    """Host plus GPUs."""
    conditions: dict[str, ConditionStatus]
    unschedulable: bool
    pods: tuple[str, ...]
    """`namespace/name` of the pods on the node."""



@dataclass
class NodeState:
    node: EmulatedNode
    background: Background
    uptime_s: float
    fs_size_bytes: int
    dcgm_node_label: str
    gpu_uuids: tuple[str, ...]
    conditions: dict[str, ConditionStatus] = field(default_factory=dict)
    unschedulable: bool = False
    pods: dict[tuple[str, str], EmulatedPod] = field(default_factory=dict)
    gpu_assignment: dict[tuple[str, str, str], list[tuple[int, float]]] = field(
        default_factory=dict)
    """(namespace, pod, container) -> [(gpu index, share)]."""
    counters: dict[str, float] = field(default_factory=dict)
    cached: NodeReading | None = None
    """The current reading; reset by every change of this node."""
    last: float = 0.0
    """Clock time up to which `counters` are integrated."""
    cpu_prefixes: tuple[str, ...] = ()
    """Pre-rendered `node_cpu_seconds_total{...} ` per CPU and mode, CPU-major: most of
    node-exporter's page."""
    cpu_offsets: tuple[float, ...] = ()
    """Per-CPU seconds added to every mode's counter, so the CPUs do not look cloned (the rates,
    and so `rate()`, are the same on every CPU)."""


class Emulator:
    """A thread-safe, deterministic load model of emulated nodes and its exporter renderings.

    `clock` (seconds, monotonic) drives counters; tests inject a fake one. Every mutation first
    integrates the counters up to now at the old rates, so rates change stepwise at that instant.
    """

    def __init__(self, nodes: Sequence[EmulatedNode], *, seed: int = 0,
                 usage_factor: float = 0.7, power: PowerModel | None = None,
                 background_pods: bool = True, clock: Callable[[], float] = time.monotonic):
        if not nodes:
            raise ValueError("the emulator needs at least one node")
        if not 0 < usage_factor <= 1:
            raise ValueError(f"usage_factor: expected 0 < factor <= 1, got {usage_factor}")
        self.usage_factor = usage_factor
        self.power = power or PowerModel()
        self._clock = clock
        self.lock = threading.RLock()
        self._seed = seed
        self.states: dict[str, NodeState] = {}
        rng = random.Random(seed)
        gpu_ordinal = 0
        for node in nodes:
            if node.name in self.states:
                raise ValueError(f"duplicate node name {node.name!r}")
            label = ""
            if node.gpus:
                label = "Hostname" if gpu_ordinal % 2 == 0 else "hostname"
                gpu_ordinal += 1
            self.states[node.name] = self._initial_state(node, rng, label)
        if background_pods:
            for node in nodes:
                for pod in self._background_pods(node, rng):
                    self.place(pod, node.name)

    @property
    def nodes(self) -> list[EmulatedNode]:
        """The emulated nodes, in the order given."""
        return [state.node for state in self.states.values()]

    def dcgm_node_label(self, node: str) -> str:
        """`Hostname` or `hostname`: dcgm-exporter's node label on `node` ('' without GPUs)."""
        return self._state(node).dcgm_node_label

    # -- mutations --

    def place(self, pod: EmulatedPod, node: str) -> None:
        """Run `pod` on `node`: its usage (requests x usage factor) shows from now on.

        ValueError if the pod already runs somewhere or a factor is negative; KeyError for an
        unknown node. Overcommitting is allowed: the node saturates and shows CPU pressure. A
        factor above 1 is a pod using more than it requests (as burstable pods do: 10m
        requested, a core used).
        """
        if pod.usage_factor is not None and not 0 <= pod.usage_factor:
            raise ValueError(f"{pod.namespace}/{pod.name}: usage_factor must be >= 0")
        with self.lock:
            state = self._state(node)
            key = (pod.namespace, pod.name)
            for other in self.states.values():
                if key in other.pods:
                    raise ValueError(f"pod {pod.namespace}/{pod.name} already runs on "
                                     f"{other.node.name}")
            self.advance([state])
            state.pods[key] = pod
            state.cached = None
            for container in pod.containers:
                if container.gpus > 0 and state.node.gpus:
                    state.gpu_assignment[(pod.namespace, pod.name, container.name)] = (
                        self._assign_gpus(state, container.gpus))

    def remove(self, namespace: str, name: str) -> None:
        """Stop a pod (KeyError if it is not running)."""
        with self.lock:
            for state in self.states.values():
                if (namespace, name) in state.pods:
                    self.advance([state])
                    pod = state.pods.pop((namespace, name))
                    state.cached = None
                    for c in pod.containers:
                        key = (namespace, name, c.name)
                        state.gpu_assignment.pop(key, None)
                        state.counters.pop(container_counter(key), None)
                    return
        raise KeyError(f"pod {namespace}/{name} is not running")

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> None:
        """Flip a running pod's Ready condition (`kube_pod_status_ready`); KeyError if absent."""
        with self.lock:
            for state in self.states.values():
                pod = state.pods.get((namespace, name))
                if pod is not None:
                    state.pods[(namespace, name)] = replace(pod, ready=ready)
                    state.cached = None
                    return
        raise KeyError(f"pod {namespace}/{name} is not running")

    def set_background(self, node: str, **changes: float) -> None:
        """Change fields of a node's `Background` load (ValueError when out of range)."""
        with self.lock:
            state = self._state(node)
            updated = replace(state.background, **changes).validated()
            self.advance([state])
            state.background = updated
            state.cached = None

    def set_condition(self, node: str, condition: str, status: ConditionStatus) -> None:
        """Set a kube-state-metrics node condition, e.g. ("Ready", "false") for NotReady."""
        if condition not in CONDITIONS:
            raise ValueError(f"condition: expected one of {', '.join(CONDITIONS)}, "
                             f"got {condition!r}")
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
        with self.lock:
            state = self._state(node)
            state.conditions[condition] = status
            state.cached = None

    def cordon(self, node: str, unschedulable: bool = True) -> None:
        """Set `kube_node_spec_unschedulable` (kubectl cordon / uncordon)."""
        with self.lock:
            state = self._state(node)
            state.unschedulable = unschedulable
            state.cached = None

    # -- ground truth --

    def reading(self, node: str) -> NodeReading:
        """The values the exporters report for `node` right now."""
        with self.lock:
            return self.state_reading(self._state(node))

    def readings(self) -> list[NodeReading]:
        """`reading()` of every node, in node order."""
        with self.lock:
            return [self.state_reading(state) for state in self.states.values()]

    # -- exposition (rendered by `exporters.py`) --

    def render(self, exporter: str, node: str | None = None) -> str:
        """One exporter's current page in the Prometheus text format (0.0.4); see
        `exporters.render`."""
        from extender.demo.emulator.exporters import render

        return render(self, exporter, node)

    def scrape_targets(self, url: str, *, job_prefix: str = "",
                       scaphandre_nodes: Collection[str] | None = None,
                       kepler_nodes: Collection[str] = ()) -> list[ScrapeTarget]:
        """Scrape jobs for a local Prometheus reading this emulator served at `url`; see
        `exporters.scrape_targets`."""
        from extender.demo.emulator.exporters import scrape_targets

        return scrape_targets(self, url, job_prefix=job_prefix,
                              scaphandre_nodes=scaphandre_nodes, kepler_nodes=kepler_nodes)

    # -- internals --

    def _state(self, node: str) -> NodeState:
        try:
            return self.states[node]
        except KeyError:
            raise KeyError(f"unknown emulated node {node!r}") from None

    def _initial_state(self, node: EmulatedNode, rng: random.Random, label: str) -> NodeState:
        background = Background(
            cpu=rng.uniform(0.02, 0.10), memory=rng.uniform(0.05, 0.15),
            gpu=0.0, receive_bps=rng.uniform(0.2, 20) * MIB,
            transmit_bps=rng.uniform(0.2, 10) * MIB,
            drop_pps=round(rng.uniform(0, 2), 2), disk_read_bps=rng.uniform(0.1, 8) * MIB,
            disk_write_bps=rng.uniform(0.1, 8) * MIB, disk_io_now=float(rng.randint(0, 3)),
            disk_used=rng.uniform(0.15, 0.6))
        uuids = tuple(f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node.name}.gpu{i}.{self._seed}')}"
                      for i in range(node.gpus))
        state = NodeState(node=node, background=background,
                           uptime_s=rng.uniform(1, 30) * 86400,
                           fs_size_bytes=rng.choice((480, 960, 1920)) * 1000**3,
                           dcgm_node_label=label, gpu_uuids=uuids,
                           conditions={c: "true" if c == "Ready" else "false"
                                       for c in CONDITIONS},
                           cpu_offsets=tuple(rng.uniform(0, 600) for _ in range(node.cores)),
                           last=self._clock(),
                           cpu_prefixes=tuple(
                               f'node_cpu_seconds_total{{instance="{node.ip}:{NODE_EXPORTER_PORT}"'
                               f',cpu="{i}",mode="{mode}"}} '
                               for i in range(node.cores) for mode in CPU_MODES))
        # Counters start at plausible totals for the uptime, as on a node booted days ago.
        reading = self.state_reading(state)
        rates = _rates(reading)
        state.counters = {key: rate * state.uptime_s for key, rate in rates.items()}
        return state

    def _background_pods(self, node: EmulatedNode, rng: random.Random) -> list[EmulatedPod]:
        pods = []
        target = rng.uniform(0.05, 0.55) * node.cores  # requested cores of background pods
        count = rng.randint(1, 3)
        for k in range(count):
            namespace = rng.choice(("batch", "inference", "default"))
            containers = [EmulatedContainer("main", round(target / count, 1),
                                    int(node.memory_bytes * rng.uniform(0.05, 0.2) / count))]
            if rng.random() < 0.3:
                containers.append(EmulatedContainer("sidecar", 0.1, 128 * MIB))
            pods.append(EmulatedPod(namespace, f"{node.name}-bg-{k}", tuple(containers),
                            usage_factor=round(rng.uniform(0.3, 0.9), 2)))
        if node.gpus and rng.random() < 0.6:
            gpus = float(rng.randint(1, node.gpus)) if rng.random() < 0.5 else 0.5
            pods.append(EmulatedPod.single("training", f"{node.name}-gpu-0", cpu_cores=2.0,
                                   memory_bytes=8 * GIB, gpus=gpus,
                                   usage_factor=round(rng.uniform(0.4, 0.95), 2)))
        return pods

    @staticmethod
    def _assign_gpus(state: NodeState, gpus: float) -> list[tuple[int, float]]:
        # Whole GPUs go to the least used devices; a fraction shares the least used device.
        used = [0.0] * state.node.gpus
        for shares in state.gpu_assignment.values():
            for index, share in shares:
                used[index] += share
        assignment = []
        remaining = gpus
        candidates = sorted(range(state.node.gpus), key=lambda i: (used[i], i))
        for index in candidates:
            if remaining <= 0:
                break
            share = min(1.0, remaining)
            assignment.append((index, share))
            remaining -= share
        return assignment

    def usage_of(self, pod: EmulatedPod) -> float:
        """The share of its requests `pod` uses."""
        return self.usage_factor if pod.usage_factor is None else pod.usage_factor

    def state_reading(self, state: NodeState) -> NodeReading:
        # Cached: every scrape integrates every node's counters, and mutations are rare.
        if state.cached is None:
            state.cached = self._compute_reading(state)
        return state.cached

    def _compute_reading(self, state: NodeState) -> NodeReading:
        node, bg = state.node, state.background
        pod_cores = sum(p.cpu_cores * self.usage_of(p) for p in state.pods.values())
        pod_memory = sum(p.memory_bytes * self.usage_of(p) for p in state.pods.values())
        demand = bg.cpu * node.cores + pod_cores
        cpu = min(1.0, demand / node.cores)
        used_memory = min(0.98 * node.memory_bytes, bg.memory * node.memory_bytes + pod_memory)
        io = pod_cores * min(1.0, node.cores / demand) * IO_PER_CORE_BPS if demand else 0.0
        gpu_use = [bg.gpu] * node.gpus
        gpu_pods: list[list[tuple[str, str, str]]] = [[] for _ in range(node.gpus)]
        for key, shares in state.gpu_assignment.items():
            factor = self.usage_of(state.pods[key[:2]])
            for index, share in shares:
                gpu_use[index] += share * factor
                gpu_pods[index].append(key)
        gpus = []
        for i in range(node.gpus):
            util = min(1.0, gpu_use[i])
            total = node.gpu.memory_mib
            used = int(total * min(0.98, 0.01 + 0.9 * util))
            gpus.append(GpuReading(
                index=i, uuid=state.gpu_uuids[i], utilisation=round(util, 4), fb_used_mib=used,
                fb_free_mib=total - used, power_w=round(self.power.gpu_w(node.gpu, util), 3),
                temperature_c=round(30 + 50 * util, 1), pods=tuple(sorted(gpu_pods[i]))))
        host_w = self.power.host_w(node, cpu)
        size = state.fs_size_bytes
        return NodeReading(
            node=node.name, ip=node.ip, cores=node.cores, cpu_utilisation=cpu,
            cpu_demand_cores=demand, load1=round(demand, 2),
            memory_total_bytes=node.memory_bytes,
            memory_available_bytes=int(node.memory_bytes - used_memory),
            receive_bps=bg.receive_bps + io, transmit_bps=bg.transmit_bps + io / 2,
            drop_pps=bg.drop_pps, disk_read_bps=bg.disk_read_bps + io / 2,
            disk_write_bps=bg.disk_write_bps + io / 2,
            disk_io_now=bg.disk_io_now + round(pod_cores / 4),
            filesystem_size_bytes=size, filesystem_avail_bytes=int(size * (1 - bg.disk_used)),
            cpu_pressure=min(1.0, max(0.0, demand / node.cores - 0.8) * 2),
            memory_pressure=min(1.0, max(0.0, used_memory / node.memory_bytes - 0.9) * 5),
            gpus=tuple(gpus), host_power_w=host_w,
            power_w=host_w + sum(g.power_w for g in gpus),
            conditions=dict(state.conditions), unschedulable=state.unschedulable,
            pods=tuple(f"{ns}/{name}" for ns, name in state.pods))

    def advance(self, states: Iterable[NodeState]) -> None:
        """Integrate the counters of `states` up to now at their current rates."""
        now = self._clock()
        for state in states:
            dt = now - state.last
            if dt <= 0:
                continue
            state.last = now
            reading = self.state_reading(state)
            for key, rate in _rates(reading).items():
                state.counters[key] = state.counters.get(key, 0.0) + rate * dt
            # An overcommitted node shares its cores out in proportion to demand.
            demand = reading.cpu_demand_cores
            scale = min(1.0, reading.cores / demand) if demand else 1.0
            for pod in state.pods.values():
                for c in pod.containers:
                    key = container_counter((pod.namespace, pod.name, c.name))
                    state.counters[key] = (state.counters.get(key, 0.0)
                                           + c.cpu_cores * self.usage_of(pod) * scale * dt)


def _rates(r: NodeReading) -> dict[str, float]:
    """Per-second increments of every node-level counter (cpu_* are summed over all CPUs)."""
    busy = r.cpu_utilisation * r.cores
    rates = {f"cpu_{mode}": busy * share for mode, share in BUSY_SPLIT.items()}
    rates["cpu_idle"] = r.cores - busy
    rates.update({
        "node_network_receive_bytes_total:eth0": r.receive_bps,
        "node_network_transmit_bytes_total:eth0": r.transmit_bps,
        "node_network_receive_drop_total:eth0": r.drop_pps,
        "node_network_receive_bytes_total:lo": LOOPBACK_BPS,
        "node_network_transmit_bytes_total:lo": LOOPBACK_BPS,
        "node_network_receive_drop_total:lo": 0.0,
        "node_disk_read_bytes_total": r.disk_read_bps,
        "node_disk_written_bytes_total": r.disk_write_bps,
        "node_pressure_cpu_waiting_seconds_total": r.cpu_pressure,
        "node_pressure_memory_waiting_seconds_total": r.memory_pressure,
        "energy_uj": r.host_power_w * 1e6,
    })
    return rates


def container_counter(key: tuple[str, str, str]) -> str:
    return "container_cpu:" + "/".join(key)
