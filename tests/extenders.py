"""`extender serve` processes for tests and benchmarks that run them against a real control plane
and a real Prometheus (tests/informer/test_burst_e2e.py, benchmarks/scheduler_bench.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from extender import localserver
from tests.controlplane import ControlPlane
from tests.support import CONFIG, REPO


def extender_config(workdir: Path, plane: ControlPlane, prometheus_url: str,
                    namespace: str) -> Path:
    from extender.settings import merge, read_yaml

    path = workdir / "extender.yaml"
    path.write_text(yaml.safe_dump(merge(read_yaml(CONFIG), {
        "catalog_file": str(REPO / "config" / "catalog.yaml"),
        "monitoring": {"catalog_file": str(REPO / "config" / "monitoring.yaml")},
        "policy": {"learned_model": str(REPO / "config" / "learned-model.json")},
        "prometheus": {"url": prometheus_url, "query_timeout_s": 2, "retries": 0},
        "cache": {"refresh_interval_s": 1, "rate_window": "5s", "max_staleness_s": 20},
        "estimate": {"window": "30s"},
        "informer": {"enabled": True, "kubeconfig": str(plane.kubeconfig),
                     "namespace": namespace, "backoff_min_s": 0.1, "backoff_max_s": 1},
    })))
    return path


def start_extenders(count: int, config: Path, workdir: Path) -> list[localserver.LocalServer]:
    servers = []
    for i in range(count):
        port = localserver.free_port()
        server = localserver.LocalServer(
            f"extender-{i}", port,
            [sys.executable, "-m", "extender.cli", "--log-level", "WARNING", "serve", "--config",
             str(config), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2"],
            workdir, "/healthz").start(timeout_s=60)
        servers.append(server)
    return servers
