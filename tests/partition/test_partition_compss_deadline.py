"""COMPSs's own deadline signal reaches the deadline term: a real Pushgateway and Prometheus.

COMPSs's real-time scheduler pushes `deadlines_missed_<worker>` (job `compss`); the partition
controller's `partition_compss_worker_info` maps the worker to its node; the extender's metrics
refresh (the real Fetcher) reads the catalog entry `compss_deadlines_missed` per node.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway, start_http_server

from extender import localserver
from extender.demo import launcher
from extender.demo.launcher import ScrapeTarget
from extender.metrics.cache import Fetcher
from extender.metrics.prometheus import PrometheusSource
from extender.partition.compss import DEADLINE_METRIC_PREFIX, compss_files, metric_safe
from extender.partition.plan import PartitionEntry
from extender.partition.reconcile import PartitionMetrics
from extender.settings import Settings, load_settings
from tests.controlplane import wait_for
from tests.partition.conftest import make_settings
from tests.support import CONFIG

CONFIG_DIR = CONFIG.parent

pytestmark = pytest.mark.prometheus
GIB = 2**30
WINDOW = "6s"  # >= 4 scrape intervals (0.5 s), short so the misses leave it soon


@pytest.fixture
def stack() -> Iterator[tuple[str, str, PartitionMetrics]]:
    """(Pushgateway URL, Prometheus URL, the controller's metrics served on loopback)."""
    registry = CollectorRegistry()
    metrics = PartitionMetrics(registry)
    port = localserver.free_port()
    httpd, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    gateway = launcher.pushgateway()
    gateway.start()
    try:
        targets = [ScrapeTarget("pushgateway", (urlparse(gateway.url).netloc,), honor_labels=True),
                   ScrapeTarget("partition-controller", (f"127.0.0.1:{port}",))]
        prometheus = launcher.prometheus(targets, scrape_interval_s=0.5)
        prometheus.start()
        try:
            yield gateway.url, prometheus.url, metrics
        finally:
            prometheus.stop()
    finally:
        gateway.stop()
        httpd.shutdown()
        httpd.server_close()


def extender_settings(prometheus_url: str, directory: Path) -> Settings:
    """The shipped config with the opt-in entry of config/catalog-compss.example.yaml added as
    its comments say (appended to the catalog, weighted in metrics-aware)."""
    for name in ("extender.yaml", "monitoring.yaml"):
        shutil.copy(CONFIG_DIR / name, directory / name)
    catalog = yaml.safe_load((CONFIG_DIR / "catalog.yaml").read_text())
    catalog["metrics"] += yaml.safe_load((CONFIG_DIR / "catalog-compss.example.yaml").read_text())["metrics"]
    (directory / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    # $rate_window is substituted when the settings load.
    return load_settings(directory / "extender.yaml", environ={}, overrides={
        "prometheus": {"url": prometheus_url}, "cache": {"rate_window": WINDOW},
        "policy": {"profiles": {"metrics-aware": {"weights": {"compss_deadlines_missed": 2}}}}})


def push(gateway: str, worker: str, missed: float) -> None:
    """What COMPSs's RTHeuristicScheduler does: a gauge named after a worker, pushAdd to job compss."""
    registry = CollectorRegistry()
    Gauge(DEADLINE_METRIC_PREFIX + metric_safe(worker), "Total deadlines missed per workflow",
          registry=registry).set(missed)
    pushadd_to_gateway(urlparse(gateway).netloc, job="compss", registry=registry, timeout=5)


def test_compss_deadline_misses_reach_the_node_of_the_worker_they_name(
        stack: tuple[str, str, PartitionMetrics], tmp_path: Path) -> None:
    gateway, prometheus, metrics = stack
    extender = extender_settings(prometheus, tmp_path)
    assert extender.policy.profiles["metrics-aware"].weights["compss_deadlines_missed"] == 2
    partition = make_settings()
    entries = [PartitionEntry(node, f"partition-worker-{node}", "10.0.0.1", 8000, 16 * GIB, 0, True)
               for node in ("node-a", "node-b")]
    files = compss_files(entries, partition)
    metrics.publish_workers(files.workers)
    a, b = (w.name for w in files.workers)
    for worker in (a, b, "a-worker-of-another-partition"):
        push(gateway, worker, 0)
    assert f"[{WINDOW}:]" in next(e.query for e in extender.catalog if e.name == "compss_deadlines_missed")
    fetcher = Fetcher(extender, PrometheusSource(extender.prometheus))

    def column(table_at: float) -> dict[str, float]:
        table, status = fetcher.collect(table_at)
        assert "compss_deadlines_missed" not in status.errors, status.errors
        j = table.metrics.index("compss_deadlines_missed")
        return {name: float(table.values[i, j]) for i, name in enumerate(table.names)
                if not math.isnan(table.values[i, j])}

    wait_for(lambda: column(time.time()).keys() == {"node-a", "node-b"} or None, timeout_s=30,
             what="both workers' zero series mapped to their nodes")
    push(gateway, a, 3)
    push(gateway, "a-worker-of-another-partition", 7)
    seen = wait_for(lambda: c if (c := column(time.time())).get("node-a", 0) >= 2 else None,
                    timeout_s=30, what="node-a's misses within the window")
    assert seen["node-b"] == 0
    assert set(seen) == {"node-a", "node-b"}, "a worker outside the published partition maps to no node"
    # Once the window has passed without new misses, the node is clean again.
    calm = wait_for(lambda: c if (c := column(time.time())).get("node-a") == 0 else None,
                    timeout_s=60, what="node-a's misses out of the window")
    assert calm["node-b"] == 0
