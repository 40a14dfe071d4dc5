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


def serve_argv(config: Path, port: int, monitoring_port: int | None, *,
               threads: int = 2) -> list[str]:
    """`extender serve` on 127.0.0.1:`port`, the monitoring listener on `monitoring_port` (None:
    everything on `port`, the single-listener arrangement)."""
    monitoring = "" if monitoring_port is None else f"127.0.0.1:{monitoring_port}"
    return [sys.executable, "-m", "extender.cli", "--log-level", "WARNING", "serve", "--config",
            str(config), "--bind", f"127.0.0.1:{port}", "--monitoring-bind", monitoring,
            "--workers", "1", "--threads", str(threads), "--monitoring-threads", "2"]


def start_extenders(count: int, config: Path, workdir: Path) -> list[localserver.LocalServer]:
    """`count` extenders, each with the verbs and the Monitoring API on one port (the callers
    read /api/v1 at the URL they schedule with)."""
    servers = []
    for i in range(count):
        port = localserver.free_port()
        server = localserver.LocalServer(f"extender-{i}", port, serve_argv(config, port, None),
                                         workdir, "/healthz").start(timeout_s=60)
        servers.append(server)
    return servers
