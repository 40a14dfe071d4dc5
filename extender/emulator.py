"""An emulated metrics estate: exporter-shaped series for emulated nodes, served on loopback.

Used by the demo and by integration tests that need a real Prometheus with realistic data and no
cluster. One HTTP server plays every exporter a metrics-aware scheduler reads:

    /node-exporter/metrics        node-exporter, all nodes, each series with instance="<ip>:9100"
    /kube-state-metrics/metrics   kube-state-metrics (nodes, pods, containers)
    /cadvisor/metrics             kubelet cAdvisor (containers, and pod cgroups as container="")
    /dcgm/metrics                 dcgm-exporter, GPU nodes only
    /scaphandre/<node>/metrics    Scaphandre, one endpoint per node, no host label at all

Design decisions:
- Series are shaped like the real exporters', including their traps, on purpose: node-exporter
  identifies a node only by `instance="<internal IP>:9100"` (the IP is a fake 10.20.x.y that is
  never contacted, so consumers must map it through `kube_node_info{internal_ip}`); dcgm-exporter
  names the node `Hostname` on half the GPU nodes and `hostname` on the other half (its 2026
  rename); Scaphandre's host power carries no node label (the node comes from target labels);
  cAdvisor has a pod-level series with `container=""` that double-counts a naive `sum by (pod)`.
- The load model is deterministic per seed: each node gets a background load and a few background
  pods; `place()` adds pods whose usage is their requests times a usage factor. Counters integrate
  the current rates over the injected clock, so `rate()` in Prometheus returns the emulated values.
- `reading(node)` is the ground truth a test compares query results with.
- Power: Scaphandre reports what RAPL sees (CPU packages and DRAM: idle + per busy core), GPUs
  are reported by dcgm-exporter; `NodeReading.power_w` is the sum of both.
"""

from __future__ import annotations

import csv
import math
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from extender.errors import ConfigError
from extender.localstack import ScrapeTarget

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NODE_EXPORTER_PORT = 9100
CPU_MODES = ("idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user")
# How busy time splits over the non-idle modes (iowait counts as busy for `1 - rate(idle)`).
BUSY_SPLIT = {"iowait": 0.03, "irq": 0.01, "nice": 0.02, "softirq": 0.04, "steal": 0.0,
              "system": 0.20, "user": 0.70}
CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
ConditionStatus = Literal["true", "false", "unknown"]
STATUSES: tuple[ConditionStatus, ...] = ("true", "false", "unknown")
MIB = 1024 * 1024
GIB = 1024 * MIB
DISK_DEVICE = "nvme0n1"
NET_DEVICES = ("eth0", "lo")
LOOPBACK_BPS = 50_000.0  # lo traffic per node; constant so that queries must exclude it themselves
IO_PER_CORE_BPS = 2 * MIB  # network and disk traffic a busy pod core adds (a modest data-loader)
DCGM_DRIVER = "550.90.07"
DCGM_JOB_LABELS = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-emulated",
                   "container": "nvidia-dcgm-exporter"}
"""Target labels of the dcgm job, as its Helm chart's ServiceMonitor sets them: scraped without
honor_labels, a GPU's workload labels therefore arrive as `exported_pod`, `exported_namespace`."""


# --- nodes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuModel:
    """What dcgm-exporter reports for a model, and its power envelope."""

    model_name: str
    """dcgm `modelName` label value."""
    memory_mib: int
    idle_w: float
    max_w: float


GPU_MODELS: dict[str, GpuModel] = {
    "A10": GpuModel("NVIDIA A10", 23028, 20.0, 150.0),
    "T4": GpuModel("Tesla T4", 15360, 10.0, 70.0),
    "P100": GpuModel("Tesla P100-PCIE-16GB", 16280, 30.0, 250.0),
    "V100M16": GpuModel("Tesla V100-SXM2-16GB", 16160, 40.0, 300.0),
    "V100M32": GpuModel("Tesla V100-SXM2-32GB", 32510, 40.0, 300.0),
    # G2/G3 are anonymised in OpenB; assumed to be V100-class boards.
    "G2": GpuModel("G2", 32510, 40.0, 300.0),
    "G3": GpuModel("G3", 32510, 40.0, 300.0),
}
UNKNOWN_GPU = GpuModel("unknown", 16384, 30.0, 250.0)


@dataclass(frozen=True)
class EmulatedNode:
    """One node of the OpenB node list, with a fake internal IP."""

    name: str
    ip: str
    cpu_milli: int
    memory_mib: int
    gpus: int = 0
    gpu_model: str = ""
    """OpenB model code (`T4`, `V100M32`, ...); empty for CPU-only nodes."""

    @property
    def cores(self) -> int:
        """Logical CPUs node-exporter lists (cpu_milli rounded up to whole CPUs)."""
        return max(1, math.ceil(self.cpu_milli / 1000))

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def gpu(self) -> GpuModel:
        return GPU_MODELS.get(self.gpu_model, replace(UNKNOWN_GPU, model_name=self.gpu_model))


def node_ip(row: int) -> str:
    """The fake internal IP of the node on CSV data row `row` (0-based): 10.20.x.y, y in 1..250."""
    return f"10.20.{row // 250}.{row % 250 + 1}"


def load_nodes(path: Path | str, *, limit: int | None = None, seed: int = 0) -> list[EmulatedNode]:
    """Read an OpenB node list (`sn,cpu_milli,memory_mib,gpu,model`).

    `limit` keeps a seeded sample of that many nodes with CPU-only and GPU nodes in their CSV
    proportions (at least one of each when both exist and limit >= 2) and GPU nodes spread over the
    GPU models round-robin, so that a small demo still shows every kind; the result keeps CSV order.
    Raises ConfigError naming the file, line and column of bad input.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or ()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    missing = {"sn", "cpu_milli", "memory_mib", "gpu", "model"} - set(header)
    if missing:
        raise ConfigError(f"{path}: missing columns {', '.join(sorted(missing))}")
    nodes = [_parse_node(path, index, row) for index, row in enumerate(rows)]
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        dupes = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"{path}: duplicate node names {', '.join(dupes[:5])}")
    if limit is None or limit >= len(nodes):
        return nodes
    if limit < 1:
        raise ConfigError(f"{path}: limit: expected >= 1, got {limit}")
    return _sample(nodes, limit, random.Random(seed))


def _parse_node(path: Path, index: int, row: dict[str, str]) -> EmulatedNode:
    line = index + 2  # 1-based, after the header

    def number(column: str, minimum: int) -> int:
        raw = (row.get(column) or "").strip()
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise ConfigError(f"{path}: line {line}: {column}: expected an integer >= {minimum}, "
                              f"got {raw!r}")
        return value

    name = (row.get("sn") or "").strip()
    if not name:
        raise ConfigError(f"{path}: line {line}: sn: empty node name")
    gpus = number("gpu", 0)
    model = (row.get("model") or "").strip()
    if gpus and not model:
        raise ConfigError(f"{path}: line {line}: model: a node with {gpus} GPUs needs a model")
    return EmulatedNode(name=name, ip=node_ip(index), cpu_milli=number("cpu_milli", 1),
                        memory_mib=number("memory_mib", 1), gpus=gpus,
                        gpu_model=model if gpus else "")


def _sample(nodes: list[EmulatedNode], limit: int, rng: random.Random) -> list[EmulatedNode]:
    order = {node.name: i for i, node in enumerate(nodes)}
    cpu_only = [node for node in nodes if not node.gpus]
    gpu = [node for node in nodes if node.gpus]
    n_cpu = round(limit * len(cpu_only) / len(nodes))
    if cpu_only and gpu and limit >= 2:
        n_cpu = min(max(n_cpu, 1), limit - 1)
    picked = rng.sample(cpu_only, n_cpu)
    by_model: dict[str, list[EmulatedNode]] = {}
    for node in gpu:
        by_model.setdefault(node.gpu_model, []).append(node)
    pools = [rng.sample(group, len(group)) for _, group in sorted(by_model.items())]
    while len(picked) < limit and any(pools):
        for pool in pools:
            if pool and len(picked) < limit:
                picked.append(pool.pop())
    return sorted(picked, key=lambda node: order[node.name])


# --- workload -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """A container's requests (limits equal requests, as for Guaranteed pods)."""

    name: str
    cpu_cores: float
    memory_bytes: int
    gpus: float = 0.0
    """Whole GPUs, or a fraction of one GPU (OpenB's gpu_milli / 1000)."""


@dataclass(frozen=True)
class Pod:
    """A pod to place on an emulated node."""

    namespace: str
    name: str
    containers: tuple[Container, ...]
    usage_factor: float | None = None
    """Share of the requests the pod actually uses; None takes the emulator's default."""
    ready: bool = True

    @classmethod
    def single(cls, namespace: str, name: str, *, cpu_cores: float, memory_bytes: int,
               gpus: float = 0.0, usage_factor: float | None = None) -> Pod:
        """A pod with one container called `main`."""
        return cls(namespace, name, (Container("main", cpu_cores, memory_bytes, gpus),),
                   usage_factor)

    @property
    def cpu_cores(self) -> float:
        return sum(c.cpu_cores for c in self.containers)

    @property
    def memory_bytes(self) -> int:
        return sum(c.memory_bytes for c in self.containers)

    @property
    def gpus(self) -> float:
        return sum(c.gpus for c in self.containers)


@dataclass(frozen=True)
class Background:
    """A node's load apart from its pods: system daemons and work the scheduler does not see."""

    cpu: float = 0.05
    """Share of the node's cores busy (0..1)."""
    memory: float = 0.1
    """Share of the node's memory used (0..1)."""
    gpu: float = 0.0
    """Utilisation of every GPU (0..1), added to the pods' use."""
    receive_bps: float = 1 * MIB
    transmit_bps: float = 1 * MIB
    drop_pps: float = 0.0
    """Received packets dropped per second on eth0."""
    disk_read_bps: float = 1 * MIB
    disk_write_bps: float = 1 * MIB
    disk_io_now: float = 1.0
    """I/Os in flight on the disk."""
    disk_used: float = 0.3
    """Share of the root filesystem used (0..1)."""

    def validated(self) -> Background:
        """Self, or ValueError naming the first field out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            high = 1.0 if f.name in {"cpu", "memory", "gpu", "disk_used"} else math.inf
            if not 0.0 <= value <= high:
                raise ValueError(f"background {f.name}: expected 0..{high:g}, got {value!r}")
        return self


@dataclass(frozen=True)
class PowerModel:
    """Node power: RAPL's view (idle + per busy core) plus each GPU between its idle and max."""

    idle_w: float = 60.0
    per_core_w: float = 3.0
    """Extra watts per fully busy core."""
    per_gib_w: float = 0.05
    """DRAM watts per GiB installed (RAPL's DRAM domain), always on."""

    def host_w(self, node: EmulatedNode, cpu_utilisation: float) -> float:
        """What Scaphandre reports: CPU packages and DRAM, no GPUs."""
        return (self.idle_w + self.per_gib_w * node.memory_bytes / GIB
                + self.per_core_w * node.cores * cpu_utilisation)

    @staticmethod
    def gpu_w(model: GpuModel, utilisation: float) -> float:
        """One GPU's board power at `utilisation` (0..1)."""
        return model.idle_w + (model.max_w - model.idle_w) * utilisation


# --- ground truth -------------------------------------------------------------------------------


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


# --- the emulator -------------------------------------------------------------------------------


@dataclass
class _NodeState:
    node: EmulatedNode
    background: Background
    uptime_s: float
    fs_size_bytes: int
    dcgm_node_label: str
    gpu_uuids: tuple[str, ...]
    conditions: dict[str, ConditionStatus] = field(default_factory=dict)
    unschedulable: bool = False
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
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
        self._lock = threading.RLock()
        self._seed = seed
        self._states: dict[str, _NodeState] = {}
        rng = random.Random(seed)
        gpu_ordinal = 0
        for node in nodes:
            if node.name in self._states:
                raise ValueError(f"duplicate node name {node.name!r}")
            label = ""
            if node.gpus:
                label = "Hostname" if gpu_ordinal % 2 == 0 else "hostname"
                gpu_ordinal += 1
            self._states[node.name] = self._initial_state(node, rng, label)
        if background_pods:
            for node in nodes:
                for pod in self._background_pods(node, rng):
                    self.place(pod, node.name)

    @property
    def nodes(self) -> list[EmulatedNode]:
        """The emulated nodes, in the order given."""
        return [state.node for state in self._states.values()]

    def dcgm_node_label(self, node: str) -> str:
        """`Hostname` or `hostname`: dcgm-exporter's node label on `node` ('' without GPUs)."""
        return self._state(node).dcgm_node_label

    # -- mutations --

    def place(self, pod: Pod, node: str) -> None:
        """Run `pod` on `node`: its usage (requests x usage factor) shows from now on.

        ValueError if the pod already runs somewhere or a factor is out of range; KeyError for an
        unknown node. Overcommitting is allowed: the node saturates and shows CPU pressure.
        """
        if pod.usage_factor is not None and not 0 <= pod.usage_factor <= 1:
            raise ValueError(f"{pod.namespace}/{pod.name}: usage_factor must be 0..1")
        with self._lock:
            state = self._state(node)
            key = (pod.namespace, pod.name)
            for other in self._states.values():
                if key in other.pods:
                    raise ValueError(f"pod {pod.namespace}/{pod.name} already runs on "
                                     f"{other.node.name}")
            self._advance([state])
            state.pods[key] = pod
            state.cached = None
            for container in pod.containers:
                if container.gpus > 0 and state.node.gpus:
                    state.gpu_assignment[(pod.namespace, pod.name, container.name)] = (
                        self._assign_gpus(state, container.gpus))

    def remove(self, namespace: str, name: str) -> None:
        """Stop a pod (KeyError if it is not running)."""
        with self._lock:
            for state in self._states.values():
                if (namespace, name) in state.pods:
                    self._advance([state])
                    pod = state.pods.pop((namespace, name))
                    state.cached = None
                    for c in pod.containers:
                        key = (namespace, name, c.name)
                        state.gpu_assignment.pop(key, None)
                        state.counters.pop(_container_counter(key), None)
                    return
        raise KeyError(f"pod {namespace}/{name} is not running")

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> None:
        """Flip a running pod's Ready condition (`kube_pod_status_ready`); KeyError if absent."""
        with self._lock:
            for state in self._states.values():
                pod = state.pods.get((namespace, name))
                if pod is not None:
                    state.pods[(namespace, name)] = replace(pod, ready=ready)
                    state.cached = None
                    return
        raise KeyError(f"pod {namespace}/{name} is not running")

    def set_background(self, node: str, **changes: float) -> None:
        """Change fields of a node's `Background` load (ValueError when out of range)."""
        with self._lock:
            state = self._state(node)
            updated = replace(state.background, **changes).validated()
            self._advance([state])
            state.background = updated
            state.cached = None

    def set_condition(self, node: str, condition: str, status: ConditionStatus) -> None:
        """Set a kube-state-metrics node condition, e.g. ("Ready", "false") for NotReady."""
        if condition not in CONDITIONS:
            raise ValueError(f"condition: expected one of {', '.join(CONDITIONS)}, "
                             f"got {condition!r}")
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {status!r}")
        with self._lock:
            state = self._state(node)
            state.conditions[condition] = status
            state.cached = None

    def cordon(self, node: str, unschedulable: bool = True) -> None:
        """Set `kube_node_spec_unschedulable` (kubectl cordon / uncordon)."""
        with self._lock:
            state = self._state(node)
            state.unschedulable = unschedulable
            state.cached = None

    # -- ground truth --

    def reading(self, node: str) -> NodeReading:
        """The values the exporters report for `node` right now."""
        with self._lock:
            return self._reading(self._state(node))

    def readings(self) -> list[NodeReading]:
        """`reading()` of every node, in node order."""
        with self._lock:
            return [self._reading(state) for state in self._states.values()]

    # -- exposition --

    def render(self, exporter: str, node: str | None = None) -> str:
        """One exporter's current page in the Prometheus text format (0.0.4).

        `exporter` is node-exporter, kube-state-metrics, cadvisor, dcgm or scaphandre (which needs
        `node`). ValueError for an unknown exporter, KeyError for an unknown node.
        """
        with self._lock:
            if exporter == "scaphandre":
                if node is None:
                    raise ValueError("scaphandre is rendered per node")
                state = self._state(node)
                self._advance([state])
                return _render(self._scaphandre(state))
            if exporter in ("node-exporter", "cadvisor"):  # the pages with counters
                self._advance(self._states.values())
            families = {
                "node-exporter": self._node_exporter,
                "kube-state-metrics": self._kube_state_metrics,
                "cadvisor": self._cadvisor,
                "dcgm": self._dcgm,
            }
            if exporter not in families:
                raise ValueError(f"unknown exporter {exporter!r}")
            return _render(families[exporter]())

    def scrape_targets(self, url: str, *, job_prefix: str = "") -> list[ScrapeTarget]:
        """Scrape jobs for a local Prometheus reading this emulator served at `url`.

        node-exporter, kube-state-metrics and cadvisor are scraped with honor_labels (their node
        labels must survive); dcgm as its Helm chart does (target labels namespace/pod/container,
        so workload labels become exported_*); Scaphandre with one target per node whose target
        labels carry `node` and the per-node `__metrics_path__` (its series have no host label).
        """
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.netloc:
            raise ValueError(f"emulator url: expected http://host:port, got {url!r}")
        host = parts.netloc
        base = parts.path.rstrip("/")
        scaph = [{"targets": [host],
                  "labels": {"node": name, "__metrics_path__": f"{base}/scaphandre/{name}/metrics"}}
                 for name in self._states]
        return [
            ScrapeTarget(f"{job_prefix}node-exporter", (host,), honor_labels=True,
                         metrics_path=f"{base}/node-exporter/metrics"),
            ScrapeTarget(f"{job_prefix}kube-state-metrics", (host,), honor_labels=True,
                         metrics_path=f"{base}/kube-state-metrics/metrics"),
            ScrapeTarget(f"{job_prefix}cadvisor", (host,), honor_labels=True,
                         metrics_path=f"{base}/cadvisor/metrics"),
            ScrapeTarget(f"{job_prefix}dcgm-exporter", (host,), labels=dict(DCGM_JOB_LABELS),
                         metrics_path=f"{base}/dcgm/metrics"),
            ScrapeTarget(f"{job_prefix}scaphandre", (), extra={"static_configs": scaph}),
        ]

    # -- internals --

    def _state(self, node: str) -> _NodeState:
        try:
            return self._states[node]
        except KeyError:
            raise KeyError(f"unknown emulated node {node!r}") from None

    def _initial_state(self, node: EmulatedNode, rng: random.Random, label: str) -> _NodeState:
        background = Background(
            cpu=rng.uniform(0.02, 0.10), memory=rng.uniform(0.05, 0.15),
            gpu=0.0, receive_bps=rng.uniform(0.2, 20) * MIB,
            transmit_bps=rng.uniform(0.2, 10) * MIB,
            drop_pps=round(rng.uniform(0, 2), 2), disk_read_bps=rng.uniform(0.1, 8) * MIB,
            disk_write_bps=rng.uniform(0.1, 8) * MIB, disk_io_now=float(rng.randint(0, 3)),
            disk_used=rng.uniform(0.15, 0.6))
        uuids = tuple(f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node.name}.gpu{i}.{self._seed}')}"
                      for i in range(node.gpus))
        state = _NodeState(node=node, background=background,
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
        reading = self._reading(state)
        rates = _rates(reading)
        state.counters = {key: rate * state.uptime_s for key, rate in rates.items()}
        return state

    def _background_pods(self, node: EmulatedNode, rng: random.Random) -> list[Pod]:
        pods = []
        target = rng.uniform(0.05, 0.55) * node.cores  # requested cores of background pods
        count = rng.randint(1, 3)
        for k in range(count):
            namespace = rng.choice(("batch", "inference", "default"))
            containers = [Container("main", round(target / count, 1),
                                    int(node.memory_bytes * rng.uniform(0.05, 0.2) / count))]
            if rng.random() < 0.3:
                containers.append(Container("sidecar", 0.1, 128 * MIB))
            pods.append(Pod(namespace, f"{node.name}-bg-{k}", tuple(containers),
                            usage_factor=round(rng.uniform(0.3, 0.9), 2)))
        if node.gpus and rng.random() < 0.6:
            gpus = float(rng.randint(1, node.gpus)) if rng.random() < 0.5 else 0.5
            pods.append(Pod.single("training", f"{node.name}-gpu-0", cpu_cores=2.0,
                                   memory_bytes=8 * GIB, gpus=gpus,
                                   usage_factor=round(rng.uniform(0.4, 0.95), 2)))
        return pods

    @staticmethod
    def _assign_gpus(state: _NodeState, gpus: float) -> list[tuple[int, float]]:
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

    def _factor(self, pod: Pod) -> float:
        return self.usage_factor if pod.usage_factor is None else pod.usage_factor

    def _reading(self, state: _NodeState) -> NodeReading:
        # Cached: every scrape integrates every node's counters, and mutations are rare.
        if state.cached is None:
            state.cached = self._compute_reading(state)
        return state.cached

    def _compute_reading(self, state: _NodeState) -> NodeReading:
        node, bg = state.node, state.background
        pod_cores = sum(p.cpu_cores * self._factor(p) for p in state.pods.values())
        pod_memory = sum(p.memory_bytes * self._factor(p) for p in state.pods.values())
        demand = bg.cpu * node.cores + pod_cores
        cpu = min(1.0, demand / node.cores)
        used_memory = min(0.98 * node.memory_bytes, bg.memory * node.memory_bytes + pod_memory)
        io = pod_cores * min(1.0, node.cores / demand) * IO_PER_CORE_BPS if demand else 0.0
        gpu_use = [bg.gpu] * node.gpus
        gpu_pods: list[list[tuple[str, str, str]]] = [[] for _ in range(node.gpus)]
        for key, shares in state.gpu_assignment.items():
            factor = self._factor(state.pods[key[:2]])
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

    def _advance(self, states: Iterable[_NodeState]) -> None:
        """Integrate the counters of `states` up to now at their current rates."""
        now = self._clock()
        for state in states:
            dt = now - state.last
            if dt <= 0:
                continue
            state.last = now
            reading = self._reading(state)
            for key, rate in _rates(reading).items():
                state.counters[key] = state.counters.get(key, 0.0) + rate * dt
            # An overcommitted node shares its cores out in proportion to demand.
            demand = reading.cpu_demand_cores
            scale = min(1.0, reading.cores / demand) if demand else 1.0
            for pod in state.pods.values():
                for c in pod.containers:
                    key = _container_counter((pod.namespace, pod.name, c.name))
                    state.counters[key] = (state.counters.get(key, 0.0)
                                           + c.cpu_cores * self._factor(pod) * scale * dt)

    # -- renderings (each returns families: (name, type, help, [(labels, value)])) --

    def _node_exporter(self) -> list[_Family]:
        cpu: list[str] = []
        gauges: dict[str, list[_Sample]] = {name: [] for name in _NODE_GAUGES}
        counters: dict[str, list[_Sample]] = {name: [] for name in _NODE_COUNTERS}
        for state in self._states.values():
            r = self._reading(state)
            c = state.counters
            inst = {"instance": f"{r.ip}:{NODE_EXPORTER_PORT}"}
            per_cpu = [c[f"cpu_{mode}"] / r.cores for mode in CPU_MODES]
            values = [round(seconds + offset, 2)
                      for offset in state.cpu_offsets for seconds in per_cpu]
            cpu.append("".join(map("{}{}\n".format, state.cpu_prefixes, values)))
            gauges["node_load1"].append((inst, r.load1))
            gauges["node_memory_MemAvailable_bytes"].append((inst, r.memory_available_bytes))
            gauges["node_memory_MemTotal_bytes"].append((inst, r.memory_total_bytes))
            gauges["node_disk_io_now"].append(({**inst, "device": DISK_DEVICE}, r.disk_io_now))
            for mount, device, fstype, size, avail in (
                ("/", f"/dev/{DISK_DEVICE}p1", "ext4", r.filesystem_size_bytes,
                 r.filesystem_avail_bytes),
                ("/run", "tmpfs", "tmpfs", r.memory_total_bytes // 10,
                 r.memory_total_bytes // 10 - 4 * MIB),
            ):
                labels = {**inst, "device": device, "fstype": fstype, "mountpoint": mount}
                gauges["node_filesystem_avail_bytes"].append((labels, avail))
                gauges["node_filesystem_size_bytes"].append((labels, size))
            for dev in NET_DEVICES:
                labels = {**inst, "device": dev}
                for metric in ("node_network_receive_bytes_total",
                               "node_network_transmit_bytes_total",
                               "node_network_receive_drop_total"):
                    counters[metric].append((labels, round(c[f"{metric}:{dev}"])))
            for metric in ("node_disk_read_bytes_total", "node_disk_written_bytes_total"):
                counters[metric].append(({**inst, "device": DISK_DEVICE}, round(c[metric])))
            for metric in ("node_pressure_cpu_waiting_seconds_total",
                           "node_pressure_memory_waiting_seconds_total"):
                counters[metric].append((inst, round(c[metric], 3)))
            gauges["node_uname_info"].append(({**inst, "nodename": r.node, "machine": "x86_64",
                                               "release": "6.8.0-49-generic", "sysname": "Linux"},
                                              1))
        families: list[_Family] = [("node_cpu_seconds_total", "counter",
                                    "Seconds the CPUs spent in each mode.", "".join(cpu))]
        families += [(n, "gauge", h, gauges[n]) for n, h in _NODE_GAUGES.items()]
        families += [(n, "counter", h, counters[n]) for n, h in _NODE_COUNTERS.items()]
        return families

    def _kube_state_metrics(self) -> list[_Family]:
        info: list[_Sample] = []
        cond: list[_Sample] = []
        unsched: list[_Sample] = []
        alloc: list[_Sample] = []
        cap: list[_Sample] = []
        pod_info: list[_Sample] = []
        requests: list[_Sample] = []
        ready: list[_Sample] = []
        phase: list[_Sample] = []
        for state in self._states.values():
            n = state.node
            info.append(({"node": n.name, "internal_ip": n.ip, "kernel_version": "6.8.0-49-generic",
                          "os_image": "Ubuntu 24.04.1 LTS", "container_runtime_version":
                          "containerd://1.7.22", "kubelet_version": "v1.35.0",
                          "kubeproxy_version": "v1.35.0", "provider_id": f"emulated://{n.name}",
                          "pod_cidr": "",
                          "system_uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, n.name))},
                         1))
            for condition, current in state.conditions.items():
                for status in STATUSES:
                    cond.append(({"node": n.name, "condition": condition, "status": status},
                                 int(status == current)))
            unsched.append(({"node": n.name}, int(state.unschedulable)))
            resources = [("cpu", "core", n.cpu_milli / 1000), ("memory", "byte", n.memory_bytes),
                         ("pods", "integer", 110),
                         ("ephemeral_storage", "byte", state.fs_size_bytes)]
            if n.gpus:
                resources.append(("nvidia_com_gpu", "integer", n.gpus))
            for resource, unit, value in resources:
                labels = {"node": n.name, "resource": resource, "unit": unit}
                alloc.append((labels, value))
                cap.append((labels, value))
            for pod in state.pods.values():
                base = {"namespace": pod.namespace, "pod": pod.name, "uid": _pod_uid(pod)}
                pod_info.append(({**base, "host_ip": n.ip, "pod_ip": _pod_ip(pod), "node": n.name,
                                  "created_by_kind": "Job", "created_by_name": pod.name,
                                  "priority_class": "", "host_network": "false"}, 1))
                for container in pod.containers:
                    labels = {**base, "container": container.name, "node": n.name}
                    requests.append(({**labels, "resource": "cpu", "unit": "core"},
                                     container.cpu_cores))
                    requests.append(({**labels, "resource": "memory", "unit": "byte"},
                                     container.memory_bytes))
                    if container.gpus:
                        requests.append(({**labels, "resource": "nvidia_com_gpu",
                                          "unit": "integer"}, math.ceil(container.gpus)))
                current = "true" if pod.ready else "false"
                for status in STATUSES:
                    ready.append(({**base, "condition": status}, int(status == current)))
                for name in ("Pending", "Succeeded", "Failed", "Unknown", "Running"):
                    phase.append(({**base, "phase": name}, int(name == "Running")))
        return [
            ("kube_node_info", "gauge", "Information about a cluster node.", info),
            ("kube_node_status_condition", "gauge", "The condition of a cluster node.", cond),
            ("kube_node_spec_unschedulable", "gauge",
             "Whether a node can schedule new pods.", unsched),
            ("kube_node_status_allocatable", "gauge",
             "The allocatable for different resources of a node that are available for "
             "scheduling.", alloc),
            ("kube_node_status_capacity", "gauge",
             "The capacity for different resources of a node.", cap),
            ("kube_pod_info", "gauge", "Information about pod.", pod_info),
            ("kube_pod_container_resource_requests", "gauge",
             "The number of requested request resource by a container.", requests),
            ("kube_pod_status_ready", "gauge", "Describes whether the pod is ready to serve "
             "requests.", ready),
            ("kube_pod_status_phase", "gauge", "The pods current phase.", phase),
        ]

    def _cadvisor(self) -> list[_Family]:
        usage: list[_Sample] = []
        working_set: list[_Sample] = []
        quota: list[_Sample] = []
        period: list[_Sample] = []
        for state in self._states.values():
            r = self._reading(state)
            for pod in state.pods.values():
                base = {"namespace": pod.namespace, "pod": pod.name, "node": r.node}
                pod_cpu = 0.0
                pod_memory = 0
                for c in pod.containers:
                    labels = {**base, "container": c.name,
                              "image": "registry.invalid/emulated:1",
                              "id": f"/kubepods/pod{_pod_uid(pod)}/{c.name}",
                              "name": f"{c.name}-{pod.name}"}
                    key = _container_counter((pod.namespace, pod.name, c.name))
                    cpu_s = state.counters.get(key, 0.0)
                    memory = int(c.memory_bytes * self._factor(pod))
                    pod_cpu += cpu_s
                    pod_memory += memory
                    usage.append((labels, round(cpu_s, 3)))
                    working_set.append((labels, memory))
                    quota.append((labels, round(c.cpu_cores * 100_000)))
                    period.append((labels, 100_000))
                # The pod cgroup itself: container="" (a naive sum by (pod) counts it twice).
                pod_labels = {**base, "container": "", "image": "", "name": "",
                              "id": f"/kubepods/pod{_pod_uid(pod)}"}
                usage.append((pod_labels, round(pod_cpu, 3)))
                working_set.append((pod_labels, pod_memory))
        return [
            ("container_cpu_usage_seconds_total", "counter",
             "Cumulative cpu time consumed in seconds.", usage),
            ("container_memory_working_set_bytes", "gauge",
             "Current working set in bytes.", working_set),
            ("container_spec_cpu_quota", "gauge", "CPU quota of the container.", quota),
            ("container_spec_cpu_period", "gauge", "CPU period of the container.", period),
        ]

    def _dcgm(self) -> list[_Family]:
        series: dict[str, list[_Sample]] = {name: [] for name in _DCGM}
        for state in self._states.values():
            if not state.node.gpus:
                continue
            r = self._reading(state)
            for g in r.gpus:
                labels = {"gpu": str(g.index), "UUID": g.uuid, "pci_bus_id":
                          f"00000000:{0x17 + g.index:02X}:00.0", "device": f"nvidia{g.index}",
                          "modelName": state.node.gpu.model_name,
                          state.dcgm_node_label: r.node, "DCGM_FI_DRIVER_VERSION": DCGM_DRIVER}
                if g.pods:
                    namespace, pod, container = g.pods[0]
                    labels.update(namespace=namespace, pod=pod, container=container)
                series["DCGM_FI_DEV_GPU_UTIL"].append((labels, round(g.utilisation * 100)))
                series["DCGM_FI_DEV_FB_USED"].append((labels, g.fb_used_mib))
                series["DCGM_FI_DEV_FB_FREE"].append((labels, g.fb_free_mib))
                series["DCGM_FI_DEV_POWER_USAGE"].append((labels, g.power_w))
                series["DCGM_FI_DEV_GPU_TEMP"].append((labels, round(g.temperature_c)))
        return [(name, "gauge", help_text, series[name]) for name, help_text in _DCGM.items()]


    def _scaphandre(self, state: _NodeState) -> list[_Family]:
        r = self._reading(state)
        power_uw = round(r.host_power_w * 1e6)
        # Processes share the busy-core power by their CPU use; idle power belongs to nobody.
        busy_w = self.power.per_core_w * r.cores * r.cpu_utilisation
        demand = r.cpu_demand_cores or 1.0
        processes: list[_Sample] = []
        for pid, pod in enumerate(state.pods.values(), start=4000):
            share = pod.cpu_cores * self._factor(pod) / demand
            processes.append(({"exe": "python3", "pid": str(pid),
                               "cmdline": f"python3 /app/{pod.name}.py",
                               "container_scheduler": "kubernetes",
                               "kubernetes_pod_name": pod.name,
                               "kubernetes_pod_namespace": pod.namespace},
                              round(busy_w * share * 1e6)))
        processes.append(({"exe": "kubelet", "pid": "812", "cmdline": "/usr/bin/kubelet"},
                          round(busy_w * 0.01 * 1e6)))
        return [
            ("scaph_host_power_microwatts", "gauge",
             "Power measurement on the whole host, in microwatts", [({}, power_uw)]),
            ("scaph_host_energy_microjoules", "counter",
             "Energy measurement for the whole host, as extracted from the sensor, in "
             "microjoules.", [({}, round(state.counters["energy_uj"]))]),
            ("scaph_process_power_consumption_microwatts", "gauge",
             "Power consumption due to the process, measured on at the topology level, in "
             "microwatts", processes),
        ]


# --- counters and text format -------------------------------------------------------------------

_Sample = tuple[dict[str, str], float]
_Family = tuple[str, str, str, list[_Sample] | str]
"""Name, type, help and the samples (or their lines, already rendered)."""

_NODE_GAUGES = {
    "node_load1": "1m load average.",
    "node_memory_MemAvailable_bytes": "Memory information field MemAvailable_bytes.",
    "node_memory_MemTotal_bytes": "Memory information field MemTotal_bytes.",
    "node_disk_io_now": "The number of I/Os currently in progress.",
    "node_filesystem_avail_bytes": "Filesystem space available to non-root users in bytes.",
    "node_filesystem_size_bytes": "Filesystem size in bytes.",
    "node_uname_info": "Labeled system information as provided by the uname system call.",
}
_NODE_COUNTERS = {
    "node_network_receive_bytes_total": "Network device statistic receive_bytes.",
    "node_network_transmit_bytes_total": "Network device statistic transmit_bytes.",
    "node_network_receive_drop_total": "Network device statistic receive_drop.",
    "node_disk_read_bytes_total": "The total number of bytes read successfully.",
    "node_disk_written_bytes_total": "The total number of bytes written successfully.",
    "node_pressure_cpu_waiting_seconds_total": "Total time in seconds that processes have "
    "waited for CPU time",
    "node_pressure_memory_waiting_seconds_total": "Total time in seconds that processes have "
    "waited for memory",
}
_DCGM = {
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
}


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


def _container_counter(key: tuple[str, str, str]) -> str:
    return "container_cpu:" + "/".join(key)


def _pod_uid(pod: Pod) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{pod.namespace}.{pod.name}"))


def _pod_ip(pod: Pod) -> str:
    digest = uuid.uuid5(uuid.NAMESPACE_DNS, f"{pod.namespace}.{pod.name}").int
    return f"10.244.{digest % 250}.{digest // 250 % 250 + 1}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _render(families: Iterable[_Family]) -> str:
    out: list[str] = []
    for name, kind, help_text, samples in families:
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        if isinstance(samples, str):
            out.append(samples)
            continue
        for labels, value in samples:
            if labels:
                body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{body}}} {value}\n")
            else:
                out.append(f"{name} {value}\n")
    return "".join(out)


# --- HTTP ---------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that hangs up mid-answer (Prometheus stopping) is not our error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class EmulatorServer:
    """Serves an Emulator over HTTP on 127.0.0.1 (a thread per request); a context manager."""

    def __init__(self, emulator: Emulator, *, port: int = 0):
        self.emulator = emulator
        handler = _handler(emulator)
        self._httpd = _HTTPServer(("127.0.0.1", port), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> EmulatorServer:
        # A short poll interval makes stop() prompt (shutdown waits for the loop to notice).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def scrape_targets(self, *, job_prefix: str = "") -> list[ScrapeTarget]:
        """`Emulator.scrape_targets` for this server's URL."""
        return self.emulator.scrape_targets(self.url, job_prefix=job_prefix)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_PATHS = {
    "/node-exporter/metrics": "node-exporter",
    "/kube-state-metrics/metrics": "kube-state-metrics",
    "/cadvisor/metrics": "cadvisor",
    "/dcgm/metrics": "dcgm",
}


def _handler(emulator: Emulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = urlsplit(self.path).path
            node = None
            exporter = _PATHS.get(path)
            parts = path.strip("/").split("/")
            if exporter is None and len(parts) == 3 and parts[0] == "scaphandre" \
                    and parts[2] == "metrics":
                exporter, node = "scaphandre", parts[1]
            if exporter is None:
                self._send(404, "text/plain", f"not found: {path}\n")
                return
            try:
                body = emulator.render(exporter, node)
            except KeyError as exc:
                self._send(404, "text/plain", f"{exc.args[0]}\n")
                return
            self._send(200, CONTENT_TYPE, body)

        def _send(self, status: int, content_type: str, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Scrapes every second would flood stderr."""

    return Handler
