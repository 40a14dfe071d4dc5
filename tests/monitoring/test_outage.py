"""Prometheus down: history and uncached levels answer 503, cached node values still answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from extender import localserver
from extender.client import MonitoringClient, Unavailable
from extender.demo import launcher
from extender.demo.emulator import Emulator, EmulatorServer
from tests.monitoring.conftest import Served, app_settings, monitoring_copy, pick_nodes
from tests.support import app_for

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Flask, localserver.LocalServer]]:
    """Its own small emulator and Prometheus, which the test stops."""
    tmp: Path = tmp_path_factory.mktemp("outage")
    emulator = Emulator(pick_nodes()[:2], seed=7)
    with EmulatorServer(emulator) as served:
        with launcher.prometheus(served.scrape_targets(), scrape_interval_s=1).start() as prom:
            app = app_for(app_settings(monitoring_copy(tmp), prom.url))
            try:
                yield app, prom
            finally:
                app.extensions["extender"].cache.stop()


def test_history_fails_with_503_while_cached_node_values_are_still_served(outage) -> None:
    app, prometheus = outage
    client = app.test_client()

    def cached() -> list[dict[str, float]]:
        return client.get("/api/v1/metrics/memory_available_ratio").json["series"]

    before = localserver.wait_until(lambda: len(cached()) == 2 and cached(), timeout_s=30,
                                   what="cached values")
    assert client.get("/api/v1/metrics/memory_available_ratio",
                      query_string={"start": "-2s", "step": "1"}).status_code == 200
    prometheus.stop()

    history = client.get("/api/v1/metrics/memory_available_ratio",
                         query_string={"start": "-1m", "step": "10s"})
    assert history.status_code == 503 and history.headers["Retry-After"]
    assert history.json["error"].startswith("Prometheus is unreachable")
    assert "node-level current values of cached metrics are still served" in history.json["error"]
    for level in ("pod", "cluster"):
        answer = client.get("/api/v1/metrics/cpu_usage_cores", query_string={"level": level})
        assert answer.status_code == 503, level
    uncached = client.get("/api/v1/metrics/memory_available_bytes")  # node level, not cached
    assert uncached.status_code == 503

    current = client.get("/api/v1/metrics/memory_available_ratio")
    assert current.status_code == 200 and current.json["source"] == "cache"
    assert [(s["labels"], s["value"], s["timestamp"]) for s in current.json["series"]] == [
        (s["labels"], s["value"], s["timestamp"]) for s in before]  # the last known samples
    assert all(s["age_s"] >= 0 for s in current.json["series"])


def test_the_client_raises_unavailable_on_503_and_status_0_when_unreachable(outage) -> None:
    app, prometheus = outage
    prometheus.stop()
    served = Served(app)
    try:
        api = MonitoringClient(served.url, timeout_s=5)
        with pytest.raises(Unavailable) as info:
            api.history("memory_available_ratio", start="-1m", step="10s")
        assert info.value.status == 503 and "Prometheus is unreachable" in info.value.message
        assert api.current("memory_available_ratio").source == "cache"
    finally:
        served.stop()
    dead = MonitoringClient(f"http://127.0.0.1:{localserver.free_port()}", timeout_s=1)
    with pytest.raises(Exception) as info:
        dead.metrics()
    assert getattr(info.value, "status", None) == 0
