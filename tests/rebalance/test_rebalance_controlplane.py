"""The rebalancer against a real kube-apiserver and kube-controller-manager.

Metrics come through the extender's own cache from a `MetricsSource` built here
(`tests.support.StaticSource`: what Prometheus would answer per catalog query), not through a
Prometheus server: what is under test is detection, choice and the Eviction API, and a static
source lets a test decide exactly when a node is hot and when its data goes stale. The pods are
a real Deployment's (the ReplicaSet controller owns them); the disruption controller fills the
PodDisruptionBudget status the Eviction API checks. No kubelet runs: pods are bound through
`nodeName` and marked Running by the test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from kubernetes.client import AppsV1Api, CoreV1Api, PolicyV1Api
from prometheus_client import CollectorRegistry

from extender.metrics.cache import Fetcher, MetricsCache
from extender.rebalance.controller import CycleReport, RebalanceMetrics, Rebalancer
from extender.rebalance.kube import ClusterApi
from extender.rebalance.settings import RebalanceSettings
from tests.controlplane import ControlPlane, create_node, set_pod_running, wait_for
from tests.support import StaticSource, healthy, settings

EXT = settings()
REPLICAS = 4
PER_NODE = 2
GIB = 2**30


@dataclass
class Setup:
    ns: str
    core: CoreV1Api
    hot: str
    cool: list[str]
    source: StaticSource
    clock: list[float]
    rebalancer: Rebalancer
    metrics: RebalanceMetrics

    def cycles(self, n: int) -> list[CycleReport]:
        return [self.rebalancer.cycle() for _ in range(n)]

    def pods(self) -> dict[str, Any]:
        listed = self.core.list_namespaced_pod(self.ns, label_selector="app=work")
        return {p.metadata.name: p for p in listed.items}

    def live(self) -> set[str]:
        return {n for n, p in self.pods().items() if p.metadata.deletion_timestamp is None}

    def skips(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("rebalance_skips_total", {"reason": reason})
        return value or 0.0


def _deployment(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "work"}},
                 "template": {
                     "metadata": {"labels": {"app": "work"}},
                     "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                              "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                              "resources": {"requests": {"cpu": "500m",
                                                                         "memory": "256Mi"}}}]}}}}


def make(cp: ControlPlane, ns: str, *, hot_cpu: float = 0.99, cool_cpu: float = 0.10,
         cool_memory: float = 0.8, **changes: Any) -> Setup:
    core = CoreV1Api(cp.api_client())
    hot, cool = f"{ns}-hot", [f"{ns}-cool{i}" for i in range(3)]
    for name in (hot, *cool):
        create_node(core, name, cpu="8", memory="32Gi")
    apps = AppsV1Api(cp.api_client())
    apps.create_namespaced_deployment(ns, _deployment("work", hot))
    # A pod without a controller on the same node, asking for more: never a candidate.
    core.create_namespaced_pod(ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "labels": {"app": "bare"}},
        "spec": {"nodeName": hot, "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                                  "resources": {"requests": {"cpu": "2"}}}]}})
    wait_for(lambda: len(core.list_namespaced_pod(ns, label_selector="app=work").items) == REPLICAS
             or None, timeout_s=60, what="the Deployment's pods")
    for pod in core.list_namespaced_pod(ns).items:
        set_pod_running(core, pod.metadata.name, ns)
    names = [hot, *cool]
    values = healthy(names, cpu_utilisation={hot: hot_cpu, **{n: cool_cpu for n in cool}},
                     memory_available_ratio={n: cool_memory for n in cool},
                     cpu_cores={n: 8 for n in names}, memory_total_bytes={n: 32 * GIB for n in names})
    source = StaticSource(EXT, values, names)
    clock = [time.time()]
    base = RebalanceSettings()
    rules = msgspec.structs.replace(
        base, debounce_cycles=2, min_pod_age_s=0, cooldown_s=600,
        limits=msgspec.structs.replace(base.limits, per_node=PER_NODE, per_namespace=10), **changes)
    metrics = RebalanceMetrics(CollectorRegistry())
    cache = MetricsCache(EXT, Fetcher(EXT, source), clock=lambda: clock[0])
    api = ClusterApi(core, EXT.policy, 10.0, events=rules.events and not rules.dry_run)
    rebalancer = Rebalancer(rules, EXT, api, cache, metrics=metrics, clock=lambda: clock[0])
    return Setup(ns, core, hot, cool, source, clock, rebalancer, metrics)


@pytest.fixture
def cp(controller_manager: ControlPlane) -> Iterator[ControlPlane]:
    yield controller_manager


def test_a_node_hot_for_the_debounce_period_loses_exactly_the_allowed_pods(
        cp: ControlPlane, k8s_namespace: str) -> None:
    s = make(cp, k8s_namespace)
    before = s.live()
    (first,) = s.cycles(1)
    assert first.warming and not first.hot and not first.evictions  # one hot cycle of two
    assert s.live() == before
    (second,) = s.cycles(1)
    evicted = [r for r in second.evictions if r.outcome == "evicted"]
    assert len(evicted) == PER_NODE, second
    assert all(r.eviction.pod.node == s.hot and r.eviction.destination in s.cool
               for r in evicted)
    assert "expected to go to" in evicted[0].eviction.explanation
    gone = {r.eviction.pod.name for r in evicted}
    assert gone <= before and "bare" not in gone
    # Evicted through the API: deleted (Terminating, no kubelet to confirm) or already gone.
    wait_for(lambda: not (gone & s.live()) or None, timeout_s=30, what="evicted pods deleted")
    assert sum(1 for r in second.skips if r.reason == "excluded:no_controller") == 1
    events = s.core.list_namespaced_event(k8s_namespace).items
    assert {e.involved_object.name for e in events if e.reason == "Rebalanced"} == gone
    node_events = s.core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={s.hot}").items
    assert sum(1 for e in node_events if e.reason == "RebalancedPod") == PER_NODE
    # Still hot by the metrics, but the node is in cool-down and its debounce restarted.
    assert not any(r.outcome == "evicted" for c in s.cycles(3) for r in c.evictions)
    value = s.metrics.registry.get_sample_value("rebalance_evictions_total",
                                                {"reason": "cpu_utilisation", "dry_run": "false"})
    assert value == PER_NODE


def test_a_pdb_with_max_unavailable_zero_blocks_the_eviction(cp: ControlPlane,
                                                               k8s_namespace: str) -> None:
    s = make(cp, k8s_namespace)
    PolicyV1Api(cp.api_client()).create_namespaced_pod_disruption_budget(k8s_namespace, {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "work"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "work"}}}})

    def observed() -> bool | None:
        pdb = PolicyV1Api(cp.api_client()).read_namespaced_pod_disruption_budget(
            "work", k8s_namespace)
        status = pdb.status
        return bool(status and status.observed_generation and status.expected_pods == REPLICAS) or None

    wait_for(observed, timeout_s=60, what="the disruption controller to fill the PDB status")
    before = s.live()
    reports = s.cycles(2)
    outcomes = [r.outcome for r in reports[-1].evictions]
    assert outcomes and set(outcomes) == {"pdb"}
    assert s.skips("pdb") == len(outcomes)
    assert s.live() == before
    assert s.rebalancer.bucket.tokens == RebalanceSettings().limits.burst  # refused: given back


def test_dry_run_evicts_nothing_and_publishes_what_it_would_do(cp: ControlPlane,
                                                                 k8s_namespace: str) -> None:
    s = make(cp, k8s_namespace, dry_run=True)
    before = s.live()
    reports = s.cycles(3)
    would = [r for c in reports for r in c.evictions]
    assert would and {r.outcome for r in would} == {"dry-run"}
    assert s.live() == before
    assert not [e for e in s.core.list_namespaced_event(k8s_namespace).items
                if e.reason == "Rebalanced"]
    summary = s.rebalancer.summary()
    assert summary["dry_run"] is True and summary["cycles"][-1].evictions


def test_a_node_whose_metrics_go_stale_triggers_nothing(cp: ControlPlane,
                                                        k8s_namespace: str) -> None:
    s = make(cp, k8s_namespace)
    before = s.live()
    (first,) = s.cycles(1)
    assert first.warming
    s.source.down = True  # Prometheus unreachable: the cache keeps the old values...
    s.clock[0] += EXT.cache.max_staleness_s + 1  # ...until they are stale
    reports = s.cycles(4)
    assert all(not c.hot and not c.evictions for c in reports)
    assert s.hot in reports[-1].stale
    s.source.down = False  # fresh again: the debounce starts over, one cycle is not enough
    (again,) = s.cycles(1)
    assert not again.hot and not again.evictions
    assert s.live() == before


def test_a_pod_that_would_score_no_better_elsewhere_stays(cp: ControlPlane,
                                                          k8s_namespace: str) -> None:
    # The other nodes are cool by CPU but short of memory: the extender prefers the hot node.
    s = make(cp, k8s_namespace, hot_cpu=0.86, cool_cpu=0.55, cool_memory=0.31)
    before = s.live()
    reports = s.cycles(3)
    assert reports[-1].hot and not any(c.evictions for c in reports)
    assert s.skips("not_better") >= REPLICAS
    assert s.live() == before
