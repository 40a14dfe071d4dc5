"""Shared test helpers: settings, a static MetricsSource, fixture loading."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from flask import Flask

from extender.metrics.prometheus import MetricsSource, Sample
from extender.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "extender.yaml"
FIXTURES = REPO / "data" / "kube-scheduler"
"""Requests recorded from a real kube-scheduler (see the folder's README)."""
OPENB = REPO / "data" / "openb"
"""The OpenB trace (see the folder's README for its source and licence)."""


WITH_POD: dict[str, Any] = {"policy": {"profiles": {"metrics-aware": {
    "hotspot": {"score_with_pod": True}}}}}
"""Overrides that turn on `hotspot.score_with_pod` in the default profile."""


def settings(**sections: Mapping[str, Any]) -> Settings:
    """The shipped default settings with `sections` deep-merged over them."""
    return load_settings(CONFIG, environ={}, overrides=sections)


def app_for(s: Settings, source: MetricsSource | None = None, **options: Any) -> Flask:
    """The webhook app over `source` (default: the Prometheus of `s`), as `extender serve`
    builds it: the monitoring catalog loaded from the settings, one collector."""
    from extender.metrics.cache import Fetcher, collector_for
    from extender.monitoring.catalog import load_for
    from extender.server import create_app

    collector = collector_for(s) if source is None else Fetcher(s, source)
    return create_app(s, load_for(s), collector, **options)


def sample(exposition: str | bytes, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels}` in a Prometheus text exposition (parsed with
    prometheus_client's parser, so a malformed page fails the test), None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def replace(s: Settings, **fields: Any) -> Settings:
    return msgspec.structs.replace(s, **fields)


class StaticSource:
    """A MetricsSource answering each catalog query from a {metric: {node: value}} table.

    Node-level series carry a `node` label; the alias query answers kube_node_info for `nodes`.
    Set `down = True` to simulate an unreachable Prometheus, `rules = False` a Prometheus
    without the recording rules.
    """

    def __init__(self, s: Settings, values: Mapping[str, Mapping[str, float]],
                 nodes: list[str] | None = None) -> None:
        from extender.metrics.rules import recorded_query

        self.by_query = {entry.query: entry.name for entry in (*s.catalog, *s.owner_catalog)}
        # An entry's recorded series holds what its raw query returns, while `rules` is set
        # (the recording rules are loaded); else it has no series.
        self.recorded = {recorded_query(e.recorded, s.cache.max_staleness_s): e.name
                         for e in s.catalog if e.recorded is not None}
        self.rules = True
        self.alias_query = s.node_aliases.query
        self.values = {k: dict(v) for k, v in values.items()}
        self.nodes = nodes if nodes is not None else sorted({n for v in values.values() for n in v})
        self.down = False
        self.queries: list[str] = []

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        from extender.errors import PrometheusUnreachable

        self.queries.append(promql)
        if self.down:
            raise PrometheusUnreachable("connection refused (simulated)")
        t = at or 0.0
        if promql == self.alias_query:
            return [Sample({"node": n, "internal_ip": f"10.0.0.{i}"}, 1.0, t)
                    for i, n in enumerate(self.nodes)]
        if promql in self.recorded and not self.rules:
            return []
        metric = self.by_query.get(promql) or self.recorded[promql]
        return [Sample({"node": n}, v, t) for n, v in self.values.get(metric, {}).items()]


class RecordingBinder:
    """The webhook's Binder for tests without a cluster: records binds, and reads back the pods
    a test put in `pods` (as the API server would hold them)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def bound(self) -> list[str]:
        return [node for *_, node in self.calls]

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        self.calls.append((namespace, name, uid, node))

    def read(self, namespace: str, name: str) -> Any:
        from extender import protocol as wire

        pod = self.pods.get((namespace, name))
        return None if pod is None else wire.decode(json.dumps(pod).encode(), wire.Pod)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def all_fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def healthy(nodes: list[str], **overrides: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Catalog values for healthy, half-idle nodes; `overrides` replace per metric and node."""
    base = {
        "cpu_utilisation": 0.5, "cpu_cores": 32, "memory_available_ratio": 0.5,
        "memory_total_bytes": 128 * 2**30, "network_receive_bytes": 1e7,
        "network_transmit_bytes": 1e7, "disk_io_now": 1, "disk_throughput": 1e7,
        "node_ready": 1, "node_pressure": 0, "node_unschedulable": 0,
        "deadline_miss_ratio": 0.0,
    }
    values = {metric: {n: v for n in nodes} for metric, v in base.items()}
    for metric, per_node in overrides.items():
        values.setdefault(metric, {}).update(per_node)
    return values


class PidSource:
    """A picklable MetricsSource whose CPU value is the process id that answered (for the
    child-process refresh tests)."""

    def __init__(self, s: Settings) -> None:
        self.cpu_query = s.metric("cpu_utilisation").query

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        import os

        if promql != self.cpu_query:
            return []
        return [Sample({"node": "a"}, float(os.getpid()), at or 0.0)]
