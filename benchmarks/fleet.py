"""A synthetic fleet of N nodes behind a fake `MetricsSource`, for benchmarks.

Every catalog query is answered with one series per node, labelled the way the real exporters
label them (node-exporter by `instance="<ip>:9100"`, resolved through the kube_node_info aliases;
kube-state-metrics and the Pushgateway by `node`; dcgm-exporter by `hostname`), so a refresh runs
the same resolution code as production. Values are drawn once from a seeded generator with
realistic shapes, and the fleet is deliberately imperfect:
- GPU series exist only on a quarter of the nodes, host power only on bare metal (RAPL), the
  deadline-miss ratio only where the sidecar runs: the other nodes have those terms missing;
- a few nodes are busy, NotReady, under pressure or cordoned, so filter has something to reject;
- `prime()` runs two refreshes, the first `STALE_AGE_S` in the past, the second with the
  `STALE_METRICS` queries failing, so those metrics are stale (kept with their old timestamps)
  exactly as after an exporter outage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from extender.errors import QueryFailed
from extender.metrics.cache import MetricsCache, Snapshot
from extender.metrics.prometheus import Sample
from extender.settings import Settings

GPU_SHARE = 0.25  # nodes with dcgm-exporter series
BARE_METAL_SHARE = 0.7  # nodes with Scaphandre host power (RAPL is absent on VMs)
SIDECAR_SHARE = 0.6  # nodes that publish a deadline-miss ratio
STALE_METRICS = frozenset({"disk_throughput"})  # answered in the first refresh only
STALE_AGE_S = 120.0  # above the default max_staleness_s (90 s)
GIB = 2**30


def node_names(count: int) -> list[str]:
    """`count` node names shaped like a managed node pool's (about 26 bytes each)."""
    return [f"gke-prod-pool-{i % 8}-{i:05d}-x7k2" for i in range(count)]


def internal_ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _values(names: list[str], seed: int) -> dict[str, dict[str, float]]:
    """Raw exporter values (before the catalog's `scale`) per metric and node."""
    rng = np.random.default_rng(seed)
    n = len(names)
    cores = rng.choice([16.0, 32.0, 64.0, 96.0], n)
    gpu = rng.random(n) < GPU_SHARE
    metal = rng.random(n) < BARE_METAL_SHARE
    sidecar = rng.random(n) < SIDECAR_SHARE
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "cpu_utilisation": (rng.beta(2.0, 3.0, n), np.ones(n, bool)),
        "cpu_cores": (cores, np.ones(n, bool)),
        "memory_available_ratio": (rng.beta(3.0, 2.0, n), np.ones(n, bool)),
        "memory_total_bytes": (cores * 4 * GIB, np.ones(n, bool)),
        "network_receive_bytes": (rng.lognormal(16.0, 1.5, n), np.ones(n, bool)),
        "network_transmit_bytes": (rng.lognormal(16.0, 1.5, n), np.ones(n, bool)),
        "disk_io_now": (rng.poisson(2.0, n).astype(float), np.ones(n, bool)),
        "disk_throughput": (rng.lognormal(16.0, 1.0, n), np.ones(n, bool)),
        "node_ready": ((rng.random(n) > 0.005).astype(float), np.ones(n, bool)),
        "node_pressure": ((rng.random(n) < 0.005).astype(float), np.ones(n, bool)),
        "node_unschedulable": ((rng.random(n) < 0.01).astype(float), np.ones(n, bool)),
        "gpu_utilisation": (rng.random(n), gpu),
        "gpu_memory_free_ratio": (rng.random(n), gpu),
        "gpu_power_watts": (rng.uniform(200.0, 2800.0, n), gpu),
        "gpu_temperature": (rng.uniform(35.0, 88.0, n), gpu),
        "host_power_watts": (rng.uniform(100e6, 900e6, n), metal),  # microwatts
        "deadline_miss_ratio": (rng.beta(1.0, 20.0, n), sidecar),
    }
    return {metric: {name: float(v) for name, v, ok in zip(names, values, present, strict=True) if ok}
            for metric, (values, present) in columns.items()}


def _identity_label(node_labels: Sequence[str]) -> str:
    # node-exporter series carry `instance` (host:port) unless relabelled: the common, harder case.
    if "instance" in node_labels:
        return "instance"
    return node_labels[0] if node_labels else "node"


@dataclass
class FleetSource:
    """A MetricsSource for `count` synthetic nodes (see the module docstring).

    Catalog entries this fleet has no generator for answer no series (missing for every node).
    Queries named in `failing` raise QueryFailed, as a broken exporter's would.
    """

    settings: Settings
    count: int
    seed: int = 7
    failing: frozenset[str] = frozenset()
    failing_after_first: frozenset[str] = frozenset()
    """Fail these from the second refresh on (for a source living in a refresh child process,
    where `failing` cannot be set from outside)."""
    names: list[str] = field(init=False)
    _refreshes: int = field(init=False, default=0)
    _by_query: dict[str, tuple[str, str]] = field(init=False)
    _values: Mapping[str, Mapping[str, float]] = field(init=False)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a fleet needs at least one node, got {self.count}")
        self.names = node_names(self.count)
        self._values = _values(self.names, self.seed)
        self._by_query = {entry.query: (entry.name, _identity_label(entry.node_labels))
                          for entry in self.settings.catalog}
        self._ips = {name: internal_ip(i) for i, name in enumerate(self.names)}

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Answer `promql` with one series per node that has the metric."""
        t = at or 0.0
        aliases = self.settings.node_aliases
        if promql == aliases.query:
            self._refreshes += 1  # the alias query opens every refresh
            if self._refreshes > 1:
                self.failing = self.failing | self.failing_after_first
            alias = aliases.alias_labels[0] if aliases.alias_labels else "internal_ip"
            return [Sample({aliases.node_label: name, alias: self._ips[name]}, 1.0, t)
                    for name in self.names]
        metric, label = self._by_query.get(promql, ("", ""))
        if metric in self.failing:
            raise QueryFailed(f"{metric}: exporter down (simulated)")
        values = self._values.get(metric, {})
        if label == "instance":
            return [Sample({"instance": f"{self._ips[name]}:9100"}, v, t) for name, v in values.items()]
        return [Sample({label: name}, v, t) for name, v in values.items()]


class OffsetClock:
    """`time.time()` shifted by `offset_s`: lets one refresh happen "in the past"."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


def prime(cache: MetricsCache, source: FleetSource | None, clock: OffsetClock) -> Snapshot:
    """Fill `cache` with every metric `STALE_AGE_S` ago, then refresh now with `STALE_METRICS`
    failing: those keep their old, stale values; everything else is fresh. With `source` None
    the source lives in a refresh process and must have been built with
    `failing_after_first=STALE_METRICS`."""
    clock.offset_s = -STALE_AGE_S
    cache.refresh()
    clock.offset_s = 0.0
    if source is not None:
        source.failing = STALE_METRICS
    return cache.refresh()
