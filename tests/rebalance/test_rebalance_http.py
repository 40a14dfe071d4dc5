"""The rebalancer's HTTP endpoints and its command line (no cluster needed: no node is hot, so
a cycle never calls the API server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from kubernetes.client import ApiClient, Configuration, CoreV1Api
from prometheus_client import CollectorRegistry

from extender.cli import main
from extender.metrics.cache import Fetcher, MetricsCache
from extender.rebalance.controller import RebalanceMetrics, Rebalancer
from extender.rebalance.http import serve
from extender.rebalance.kube import ClusterApi
from extender.rebalance.settings import RebalanceSettings
from tests.support import REPO, StaticSource, healthy, settings

EXT = settings()


@pytest.fixture
def served() -> Iterator[tuple[str, Rebalancer, threading.Event]]:
    source = StaticSource(EXT, healthy(["a", "b"], cpu_utilisation={"a": 0.95}), ["a", "b"])
    unused = Configuration()
    unused.host = "http://127.0.0.1:9"  # never called: nothing is hot for long enough
    api = ClusterApi(CoreV1Api(ApiClient(unused)), EXT.policy, 1.0)
    registry = CollectorRegistry()
    rebalancer = Rebalancer(RebalanceSettings(), EXT, api, MetricsCache(EXT, Fetcher(EXT, source)),
                            metrics=RebalanceMetrics(registry))
    leading = threading.Event()
    server = serve(rebalancer, registry, 0, leading.is_set, host="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", rebalancer, leading
    finally:
        server.shutdown()
        server.server_close()


def test_summary_metrics_and_health(served: tuple[str, Rebalancer, threading.Event]) -> None:
    url, rebalancer, leading = served
    assert requests.get(url + "/readyz", timeout=5).text == "follower"
    leading.set()
    rebalancer.cycle()
    body = requests.get(url + "/api/v1/rebalance", timeout=5).json()
    assert body["leader"] is True and body["dry_run"] is False
    (cycle,) = body["cycles"]
    assert cycle["warming"]["a"][0]["metric"] == "cpu_utilisation" and not cycle["evictions"]
    text = requests.get(url + "/metrics", timeout=5).text
    assert "rebalance_warming_nodes 1.0" in text and "rebalance_cycles_total 1.0" in text
    assert requests.get(url + "/healthz", timeout=5).text == "ok"
    assert requests.get(url + "/nope", timeout=5).status_code == 404


def test_check_validates_the_shipped_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rebalance", "--config", str(REPO / "config" / "rebalance.yaml"), "--check"]) == 0
    assert "ok" in capsys.readouterr().out


def test_bad_settings_exit_2_with_the_reason(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "rebalance.yaml"
    bad.write_text("margin: 12\nextender_config: " + str(REPO / "config" / "extender.yaml") + "\n")
    assert main(["rebalance", "--config", str(bad), "--check"]) == 2
    assert "margin: expected 0..10" in capsys.readouterr().err
