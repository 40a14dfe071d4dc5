"""One real Prometheus per session scraping the emulator, the extras, and the extender's own
service discovery (HTTP SD and a file SD list), with the extender served on loopback.

Rate windows are 5 s (scrapes every second) through `cache.rate_window`, which both the scoring
catalog and the monitoring templates use: the shipped templates are what is tested.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from werkzeug.serving import make_server

from extender import localserver
from extender.demo import launcher
from extender.demo.emulator import EmulatedNode, EmulatorServer, load_fleet
from extender.demo.launcher import ScrapeTarget
from extender.monitoring.catalog import DiscoverySettings
from extender.monitoring.discovery import Worker, target_groups, write_file_sd
from tests.monitoring.world import APPS, PARTITION_NAMESPACE, Extras, World, build_world
from tests.support import OPENB, REPO, app_for, settings

OPENB_NODES = OPENB / "openb_node_list_all_node.csv"
WINDOW = "5s"


@dataclass
class Stack:
    world: World
    prometheus_url: str
    app: Flask
    app_url: str
    monitoring_yaml: Path
    resources_file: Path
    file_sd: Path


def pick_nodes() -> list[EmulatedNode]:
    """Three CPU-only nodes and three GPU nodes of different models (both dcgm label spellings)."""
    nodes = load_fleet(OPENB_NODES)
    cpu = [n for n in nodes if not n.gpus][:3]
    gpu: list[EmulatedNode] = []
    for node in nodes:
        if node.gpus and node.gpu_model not in {g.gpu_model for g in gpu} and len(gpu) < 3:
            gpu.append(node)
    return cpu + gpu


def monitoring_copy(tmp: Path, **sections: Any) -> Path:
    """A copy of config/monitoring.yaml with `sections` merged into its top-level keys."""
    tmp.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((REPO / "config" / "monitoring.yaml").read_text())
    for key, value in sections.items():
        data[key] = {**(data.get(key) or {}), **value}
    path = tmp / "monitoring.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def app_settings(monitoring_yaml: Path, prometheus_url: str, **monitoring: Any) -> Any:
    return settings(prometheus={"url": prometheus_url, "query_timeout_s": 2.0},
                    cache={"refresh_interval_s": 1.0, "rate_window": WINDOW},
                    monitoring={"catalog_file": str(monitoring_yaml), **monitoring})


class Served:
    """A Flask app on a loopback werkzeug server (threaded), in a thread."""

    def __init__(self, app: Flask) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def worker_records(world: World) -> list[Worker]:
    # Loopback IPs: the SD targets Prometheus scrapes must stay on this machine.
    return [Worker(node=node, pod=pod, ip="127.0.0.1", ready=True) for pod, node in world.workers()]


def write_resources(path: Path, workers: list[Worker]) -> None:
    """A resources.json as the partition controller publishes it."""
    import json

    path.write_text(json.dumps({"workers": [
        {"node": w.node, "pod": w.pod, "ip": w.ip, "cpus": 1.0, "memory_bytes": 2**30, "gpus": 0,
         "ready": w.ready} for w in workers]}))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("monitoring")
    world = build_world(pick_nodes())
    with EmulatorServer(world.emulator) as emulated, Extras(world) as extras:
        extras_host = extras.url.removeprefix("http://")
        resources = tmp / "resources.json"
        write_resources(resources, worker_records(world))
        sidecar_port = int(extras_host.rsplit(":", 1)[1])  # extras answers /metrics: targets are up
        config = monitoring_copy(tmp / "config", discovery={
            "resources_file": str(resources), "namespace": PARTITION_NAMESPACE,
            "sidecar_port": sidecar_port})
        prom_port = localserver.free_port()
        prom_url = f"http://127.0.0.1:{prom_port}"
        app = app_for(app_settings(config, prom_url))
        served = Served(app)
        file_sd = tmp / "file-sd.json"
        write_file_sd(file_sd, target_groups(
            worker_records(world), DiscoverySettings(namespace=PARTITION_NAMESPACE,
                                                     sidecar_port=sidecar_port)))
        apps = [{"targets": [extras_host], "labels": {
            "namespace": "shop", "pod": a.pod, "__metrics_path__": f"/app/{a.pod}/metrics"}}
            for a in APPS]
        apps.append({"targets": [f"127.0.0.1:{localserver.free_port()}"],  # nobody listens
                     "labels": {"namespace": "shop", "pod": "web-2"}})
        targets = [
            *emulated.scrape_targets(),
            ScrapeTarget("extras", (extras_host,), honor_labels=True, metrics_path="/extras/metrics"),
            ScrapeTarget("shop", (), extra={"static_configs": apps}),
            ScrapeTarget("partition-http-sd", (), extra={"http_sd_configs": [
                {"url": f"{served.url}/api/v1/sd/targets", "refresh_interval": "1s"}]}),
            ScrapeTarget("partition-file-sd", (), extra={"file_sd_configs": [
                {"files": [str(file_sd)], "refresh_interval": "1s"}]}),
        ]
        (tmp / "prometheus").mkdir()
        prometheus = launcher.prometheus(targets, scrape_interval_s=1, port=prom_port,
                                           workdir=tmp / "prometheus")
        prometheus.start()
        try:
            yield Stack(world, prom_url, app, served.url, config, resources, file_sd)
        finally:
            prometheus.stop()
            app.extensions["extender"].cache.stop()
            served.stop()
