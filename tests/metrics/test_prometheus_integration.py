"""The real chain: emulated exporters -> a real Prometheus -> the cache -> the webhook.

One Prometheus per module, scraping every second; `$rate_window` is 5 s so rates settle fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask

from extender import localserver
from extender.demo import launcher
from extender.demo.emulator import GIB, EmulatedPod, Emulator, EmulatorServer, load_fleet
from extender.metrics.cache import Fetcher, MetricsCache, Snapshot
from extender.metrics.prometheus import PrometheusSource
from extender.policies.engine import Engine
from extender.policies.model import PodDemand
from extender.settings import Settings
from tests.support import OPENB, app_for, fixture, sample, settings

pytestmark = pytest.mark.prometheus

OPENB_NODES = OPENB / "openb_node_list_all_node.csv"


@dataclass
class Stack:
    emulator: Emulator
    server: EmulatorServer
    prometheus: localserver.LocalServer

    def settings(self, **sections: object) -> Settings:
        return settings(prometheus={"url": self.prometheus.url, "query_timeout_s": 2, "retries": 0},
                        cache={"rate_window": "5s", "max_staleness_s": 20, "refresh_interval_s": 1},
                        **sections)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    emulator = Emulator(load_fleet(OPENB_NODES, limit=10, seed=3), seed=3)
    with EmulatorServer(emulator) as server:
        prom = launcher.prometheus(server.scrape_targets(), scrape_interval_s=1).start()
        try:
            yield Stack(emulator, server, prom)
        finally:
            prom.stop()


def warm(cache: MetricsCache, emulator: Emulator, names: list[str]) -> Snapshot:
    """Refresh until every node's CPU utilisation matches the emulator's (rates need a full
    window of scrapes after start-up or a load change)."""
    def ready() -> Snapshot | None:
        snap = cache.refresh()
        table = snap.table
        ok = all(abs(table.value(n, "cpu_utilisation") - emulator.reading(n).cpu_utilisation) < 0.02
                 for n in names)
        return snap if ok else None

    return localserver.wait_until(ready, timeout_s=40, interval_s=0.5, what="CPU rates to settle")


def test_emulated_series_reach_the_cache_with_the_right_per_node_values(stack: Stack) -> None:
    s = stack.settings()
    names = [n.name for n in stack.emulator.nodes]
    cache = MetricsCache(s, Fetcher(s, PrometheusSource(s.prometheus)))
    snap = warm(cache, stack.emulator, names)
    table = snap.table
    assert set(names) <= set(table.names)
    # node-exporter identifies nodes by instance="<ip>:9100": mapped through kube_node_info.
    assert snap.status.unmatched == {}
    assert snap.status.kubernetes_nodes == len(names)
    gpu_nodes = [n.name for n in stack.emulator.nodes if n.gpus]
    assert gpu_nodes, "the sample must include GPU nodes"
    for name in names:
        truth = stack.emulator.reading(name)
        assert table.value(name, "cpu_cores") == truth.cores
        assert table.value(name, "memory_available_ratio") == pytest.approx(
            truth.memory_available_bytes / truth.memory_total_bytes, abs=0.01)
        assert table.value(name, "host_power_watts") == pytest.approx(truth.host_power_w, rel=0.01)
        assert table.value(name, "node_ready") == 1
        assert table.value(name, "node_pressure") == 0
    for name in gpu_nodes:  # both dcgm label spellings (Hostname / hostname) are read
        truth = stack.emulator.reading(name)
        mean = sum(g.utilisation for g in truth.gpus) / len(truth.gpus)
        assert table.value(name, "gpu_utilisation") == pytest.approx(mean, abs=0.01)
    assert {stack.emulator.dcgm_node_label(n) for n in gpu_nodes} == {"Hostname", "hostname"} or \
        len(gpu_nodes) == 1


def test_placed_load_shows_in_the_cache_and_moves_the_ranking(stack: Stack) -> None:
    s = stack.settings()
    names = [n.name for n in stack.emulator.nodes if not n.gpus][:3]
    cache = MetricsCache(s, Fetcher(s, PrometheusSource(s.prometheus)))
    before = warm(cache, stack.emulator, names).table.value(names[0], "cpu_utilisation")
    node = stack.emulator.nodes[[n.name for n in stack.emulator.nodes].index(names[0])]
    stack.emulator.place(EmulatedPod.single("load", "hog", cpu_cores=node.cores * 0.9,
                                    memory_bytes=GIB, usage_factor=1.0), names[0])
    try:
        def busy() -> bool:
            return cache.refresh().table.value(names[0], "cpu_utilisation") > before + 0.5

        localserver.wait_until(busy, timeout_s=30, interval_s=0.5, what="the hog to show")
        app = app_for(s, start_refresher=False)
        app.extensions["extender"].cache.refresh()
        request = fixture("names-0001-prioritize-cache-plain.json")["request"]
        request = {**request, "NodeNames": names}
        scores = {h["Host"]: h["Score"] for h in
                  app.test_client().post("/prioritize", json=request).get_json()}
        assert scores[names[0]] < min(scores[n] for n in names[1:])
    finally:
        stack.emulator.remove("load", "hog")


def test_prometheus_killed_and_restarted_no_failed_request_staleness_visible_recovery(
        stack: Stack) -> None:
    names = [n.name for n in stack.emulator.nodes]
    # A second Prometheus we may kill, on a fixed port so it can come back at the same URL.
    prom = launcher.prometheus(stack.server.scrape_targets(), scrape_interval_s=1).start()
    offset = [0.0]
    s = settings(prometheus={"url": prom.url, "query_timeout_s": 1, "retries": 0},
                 cache={"rate_window": "5s", "max_staleness_s": 20})
    app: Flask = app_for(s, start_refresher=False, clock=lambda: time.time() + offset[0])
    extender = app.extensions["extender"]
    client = app.test_client()
    request = {**fixture("names-0001-prioritize-cache-plain.json")["request"], "NodeNames": names}
    try:
        warm(extender.cache, stack.emulator, names)
        healthy = client.post("/prioritize", json=request).get_json()
        assert any(h["Score"] > 0 for h in healthy)
        prom.stop()
        down = extender.cache.refresh()
        assert not down.status.prometheus_up
        # Still answering, from the cache, and saying so.
        assert client.post("/prioritize", json=request).status_code == 200
        assert client.post("/filter", json=request).status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
        assert sample(client.get("/metrics").data, "extender_prometheus_up") == 0.0
        # Once the data is older than max_staleness it counts as missing: scores fall to the
        # missing score, never to an error.
        offset[0] = 60.0
        stale = client.post("/prioritize", json=request).get_json()
        assert all(h["Score"] == s.cache.missing_score for h in stale)
        node = client.get(f"/api/v1/nodes/{names[0]}").get_json()["node"]
        assert node["metrics"]["cpu_utilisation"]["fresh"] is False
        assert node["metrics"]["cpu_utilisation"]["age_s"] >= 60
        # Prometheus comes back at the same address: recovery without a restart.
        offset[0] = 0.0
        prom.start()
        warm(extender.cache, stack.emulator, names)
        assert extender.cache.current().status.prometheus_up
        recovered = client.post("/prioritize", json=request).get_json()
        assert any(h["Score"] > 0 for h in recovered)
        assert json.loads(client.get("/readyz").data)["status"] == "ok"
    finally:
        prom.stop()


def test_nodes_command_prints_the_live_snapshot(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from argparse import Namespace

    from extender.commands import nodes

    monkeypatch.setenv("EXTENDER_CACHE__RATE_WINDOW", "5s")
    monkeypatch.setenv("COLUMNS", "250")
    s = stack.settings()
    warm(MetricsCache(s, Fetcher(s, PrometheusSource(s.prometheus))),
         stack.emulator, [n.name for n in stack.emulator.nodes])
    args = Namespace(config=None, prometheus_url=stack.prometheus.url, metrics=None)
    assert nodes.run(args) == 0
    out = capsys.readouterr().out
    for node in stack.emulator.nodes:
        assert node.name in out
    assert "cpu_utilisation" in out and f"nodes from {stack.prometheus.url}" in out


def test_nodes_command_says_when_prometheus_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    from argparse import Namespace

    from extender.commands import nodes

    url = f"http://127.0.0.1:{localserver.free_port()}"
    assert nodes.run(Namespace(config=None, prometheus_url=url, metrics=None)) == 1
    assert "Prometheus unreachable" in capsys.readouterr().out


def test_what_a_controllers_pods_use_reaches_the_cache_and_the_estimate(stack: Stack) -> None:
    """cAdvisor x kube_pod_owner through a real Prometheus: a Job whose pods request 10m and
    use a core each makes its next pod's expected load a core, not 10m."""
    nodes = [n.name for n in stack.emulator.nodes[:3]]
    for i, node in enumerate(nodes):
        stack.emulator.place(EmulatedPod.single("batch", f"sweep-{i}", cpu_cores=0.01,
                                                memory_bytes=4 * 2**20, usage_factor=100.0,
                                                ), node)
    try:
        s = stack.settings(estimate={"window": "30s"})
        cache = MetricsCache(s, Fetcher(s, PrometheusSource(s.prometheus)))
        job = ("batch", "Job", "sweep-0")  # EmulatedPod.single: a Job of its own per pod

        def measured() -> float | None:
            owners = cache.refresh().table.owners
            value = owners.cpu_cores.get(job) if owners else None
            return value if value is not None and abs(value - 1.0) < 0.05 else None

        localserver.wait_until(measured, timeout_s=40, interval_s=0.5, what="the Job's use")
        table = cache.current().table
        assert table.owners is not None
        assert table.owners.memory_bytes[job] == pytest.approx(400 * 2**20, rel=0.05)
        pod = PodDemand(namespace="batch", name="sweep-next", cpu_cores=0.01,
                        owner_kind="Job", owner_name="sweep-0")
        expected = Engine(s).estimate(pod, table)
        assert expected.load_cpu_cores == pytest.approx(1.0, abs=0.05)
        assert "from its Job's pods" in expected.estimate
    finally:
        for i in range(len(nodes)):
            stack.emulator.remove("batch", f"sweep-{i}")
