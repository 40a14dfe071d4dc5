"""Helpers of the sidecar tests: a manual clock, settings, real Pushgateway access."""

from __future__ import annotations

import gc
import warnings
from typing import Any

import msgspec
import requests

from extender import localserver
from extender.sidecar.settings import (
    EstimatorSettings,
    JitterSettings,
    PushSettings,
    SidecarSettings,
    WindowSettings,
)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def make_settings(**changes: Any) -> SidecarSettings:
    """Settings with round test numbers: limit = expected * 1.5 + 1; 60 s window."""
    base = SidecarSettings(
        jitter=JitterSettings(relative=0.5, absolute_s=1.0),
        estimator=EstimatorSettings(alpha=0.1, min_samples=5, clamp=3.0, max_types=100),
        window=WindowSettings(seconds=60.0, buckets=60),
        push=PushSettings(interval_s=0.2, timeout_s=1.0, backoff_initial_s=0.05,
                          backoff_max_s=0.2),
    )
    return msgspec.structs.replace(base, **changes)


def start(server: localserver.LocalServer) -> localserver.LocalServer:
    """`server.start()`, then collect the log handle it leaves in a reference cycle.

    LocalServer.start() never closes its log file; the handle is freed by a later GC pass, at a
    random point of another test, where `filterwarnings = error` turns the ResourceWarning into a
    failure. Collecting here keeps it out of the tests (to be fixed in extender/localstack.py).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        server.start()
        gc.collect()
    return server


def gateway_values(url: str, node: str, worker: str) -> dict[str, float] | None:
    """Metric values of the group (job=extract-deadline, node, worker), None if no group."""
    data = requests.get(url + "/api/v1/metrics", timeout=5).json()["data"]
    for group in data:
        labels = group["labels"]
        if (labels.get("job"), labels.get("node"), labels.get("worker")) != (
                "extract-deadline", node, worker):
            continue
        values: dict[str, float] = {}
        for name, family in group.items():
            if isinstance(family, dict) and "metrics" in family:
                # Labelled families (bad events by reason) are summed; histograms give counts.
                values[name] = sum(float(m.get("value", m.get("count", "nan")))
                                   for m in family["metrics"])
        return values
    return None


def by_node(prometheus_url: str, query: str) -> dict[str, float]:
    """An instant PromQL query against a real Prometheus, as {node label: value}."""
    answer = requests.get(prometheus_url + "/api/v1/query", params={"query": query}, timeout=5)
    answer.raise_for_status()
    return {r["metric"].get("node", "?"): float(r["value"][1])
            for r in answer.json()["data"]["result"]}
