"""Kepler (>= 0.10) through a real Prometheus: the node's CPU package and GPU power from
`kepler_node_*_watts{node_name}`, and the `power` profile ranking nodes alike whichever power
exporter a cluster runs (Scaphandre, Kepler, or some nodes each).

One emulator, three Prometheus servers scraping it: Scaphandre + dcgm-exporter on every node,
Kepler only (no Scaphandre, no dcgm), and a mixed cluster (Kepler on half the nodes, Scaphandre
on the others).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from extender import localserver
from extender.demo import launcher
from extender.demo.emulator import Emulator, EmulatorServer, load_fleet
from extender.demo.emulator.exporters import kepler_zones
from extender.metrics.cache import Fetcher, MetricsCache, Snapshot
from extender.metrics.prometheus import PrometheusSource
from extender.policies.engine import Engine
from extender.policies.model import PodDemand
from extender.policies.scoring import term_points
from extender.settings import Settings
from tests.support import OPENB, settings

pytestmark = pytest.mark.prometheus


@dataclass
class Stacks:
    emulator: Emulator
    names: list[str]
    servers: dict[str, localserver.LocalServer]

    def settings(self, cluster: str) -> Settings:
        return settings(prometheus={"url": self.servers[cluster].url, "query_timeout_s": 2,
                                    "retries": 0},
                        cache={"rate_window": "5s", "max_staleness_s": 20})


@pytest.fixture(scope="module")
def stacks() -> Iterator[Stacks]:
    emulator = Emulator(load_fleet(OPENB / "openb_node_list_all_node.csv", limit=10, seed=5),
                        seed=5)
    names = [n.name for n in emulator.nodes]
    half = set(names[::2])
    with EmulatorServer(emulator) as server:
        kepler_only = [t for t in server.scrape_targets(scaphandre_nodes=(), kepler_nodes=names)
                       if t.job != "dcgm-exporter"]
        mixed = server.scrape_targets(scaphandre_nodes=set(names) - half, kepler_nodes=half)
        servers: dict[str, localserver.LocalServer] = {}
        try:
            for cluster, targets in (("scaphandre", server.scrape_targets()),
                                     ("kepler", kepler_only), ("mixed", mixed)):
                servers[cluster] = launcher.prometheus(targets, scrape_interval_s=1).start()
            yield Stacks(emulator, names, servers)
        finally:
            for prom in servers.values():
                prom.stop()


def refreshed(stacks: Stacks, cluster: str) -> Snapshot:
    """A snapshot once every node has its CPU power in and its CPU utilisation rate settled."""
    s = stacks.settings(cluster)
    cache = MetricsCache(s, Fetcher(s, PrometheusSource(s.prometheus)))

    def ready() -> Snapshot | None:
        snap = cache.refresh()
        table = snap.table
        # Rates need a full window of scrapes: wait until CPU utilisation is the emulator's.
        ok = set(stacks.names) <= set(table.names) and all(
            table.value(n, "node_cpu_power_watts") == table.value(n, "node_cpu_power_watts")
            and abs(table.value(n, "cpu_utilisation")
                    - stacks.emulator.reading(n).cpu_utilisation) < 0.01
            for n in stacks.names)
        return snap if ok else None

    return localserver.wait_until(ready, timeout_s=40, interval_s=0.5, what=f"{cluster} data")


def test_kepler_gives_each_nodes_package_watts_not_the_sum_of_its_nested_zones(
        stacks: Stacks) -> None:
    snap = refreshed(stacks, "kepler")
    table = snap.table
    assert snap.status.unmatched == {}  # node_name is the node's name
    for name in stacks.names:
        truth = stacks.emulator.reading(name)
        zones = kepler_zones(truth.host_power_w)
        value = table.value(name, "node_cpu_power_watts")
        assert value == pytest.approx(zones["package"], rel=0.01)
        assert value < 0.6 * sum(zones.values())  # summing zones would count it 2-3 times
        if truth.gpus:  # no dcgm-exporter here: the GPU power is Kepler's
            assert table.value(name, "node_gpu_power_watts") == pytest.approx(
                sum(g.power_w for g in truth.gpus), rel=0.01)
        else:
            assert table.value(name, "node_gpu_power_watts") != table.value(
                name, "node_gpu_power_watts")  # NaN: no GPUs, no series
    # Scaphandre's own entry reports nothing here.
    assert snap.status.series["host_power_watts"] == 0


def power_points(s: Settings, snap: Snapshot, pod: PodDemand) -> dict[str, dict[str, float]]:
    """node -> term -> points of the `power` profile for `pod` (every term evaluated)."""
    names = list(snap.table.names)
    now = float(np.nanmax(snap.table.sampled_at))
    outcome = Engine(s).evaluate(pod, snap.table, names, now, pending=False)
    assert outcome.profile == "power" and outcome.evaluation is not None
    terms, points = term_points(outcome.evaluation, snap.table.metrics)
    return {name: dict(zip(terms, row, strict=True))
            for name, row in zip(names, points.tolist(), strict=True)}


@pytest.mark.parametrize("gpus", [0, 1])
def test_power_profile_ranks_nodes_alike_on_scaphandre_kepler_and_mixed_clusters(
        stacks: Stacks, gpus: int) -> None:
    pod = PodDemand(namespace="default", name="p", cpu_cores=1.0, memory_bytes=2**30,
                    gpus=gpus, gpu_milli=1000 * gpus, policy="power")
    points = {cluster: power_points(stacks.settings(cluster), refreshed(stacks, cluster), pod)
              for cluster in ("scaphandre", "kepler", "mixed")}
    totals = {cluster: {n: sum(p[n].values()) for n in stacks.names}
              for cluster, p in points.items()}
    for cluster in ("kepler", "mixed"):
        # No node is penalised for the exporter its cluster does not run: the same points.
        for name in stacks.names:
            assert totals[cluster][name] == pytest.approx(totals["scaphandre"][name], abs=0.05), \
                (cluster, name, points[cluster][name], points["scaphandre"][name])
        # Same order: every pair of nodes more than sampling noise apart keeps its order.
        base = totals["scaphandre"]
        flipped = [(a, b) for a in stacks.names for b in stacks.names
                   if base[a] > base[b] + 0.1 and not totals[cluster][a] > totals[cluster][b]]
        assert flipped == [], cluster
    # The power term is counted on every node of every cluster, never imputed.
    for cluster in points:
        assert all(points[cluster][n]["node_cpu_power_watts"] > 0 for n in stacks.names)


def test_kepler_pages_name_the_node_in_node_name_only(stacks: Stacks) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    node = stacks.names[0]
    every = stacks.emulator.render("kepler")
    one = stacks.emulator.render("kepler", node)
    samples = [s for f in text_string_to_metric_families(one) for s in f.samples]
    assert {s.labels["node_name"] for s in samples} == {node}
    assert all("instance" not in s.labels and "node" not in s.labels for s in samples)
    assert {s.labels["zone"] for s in samples if s.name == "kepler_node_cpu_watts"} == {
        "package", "core", "uncore", "dram", "psys"}
    assert all(f'node_name="{n}"' in every for n in stacks.names)
    with pytest.raises(KeyError):
        stacks.emulator.render("kepler", "nowhere")
