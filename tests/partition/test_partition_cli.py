"""`extender partition`: options, --dry-run against the fake API through a kubeconfig."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

import pytest
import requests
import yaml

from extender.errors import ConfigError
from extender.localserver import free_port, wait_until
from extender.partition import cli
from tests.partition.conftest import CONFIG, NS
from tests.partition.fakeapi import FakeKubernetes, node


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
    }))
    return path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_dry_run_prints_the_plan_per_node_and_changes_nothing(
        api: FakeKubernetes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.put("nodes", node("new"))
    api.put("nodes", node("cordoned", unschedulable=True))
    api.create("pods", {"metadata": {"name": "partition-worker-cordoned",
                                     "labels": {"extract.io/partition": "default"},
                                     "annotations": {"extract.io/partition-node": "cordoned"}},
                        "spec": {"containers": [{"name": "worker", "image": "x"}]}}, NS)
    args = parse("--config", str(CONFIG), "--kubeconfig", str(kubeconfig(tmp_path, api.url)),
                 "--namespace", NS, "--dry-run")
    assert cli.run(args) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert ["create", "new", "partition-worker-new", "no", "worker"] in lines
    assert ["delete", "cordoned", "partition-worker-cordoned", "cordoned"] in lines
    assert ["skip", "cordoned", "-", "cordoned"] in lines
    assert {r.method for r in api.requests} == {"GET"}


def test_unreadable_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    args = parse("--config", str(CONFIG), "--kubeconfig", str(missing), "--dry-run")
    with pytest.raises(ConfigError, match=f"{missing}: cannot configure the Kubernetes client"):
        cli.run(args)


def test_no_kubeconfig_outside_a_cluster_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    args = parse("--config", str(CONFIG), "--dry-run")
    with pytest.raises(ConfigError, match="in-cluster service account: cannot configure"):
        cli.run(args)


def test_bad_config_is_reported_before_touching_the_cluster(tmp_path: Path) -> None:
    bad = tmp_path / "partition.yaml"
    bad.write_text("sizing: {cpu_fraction: 2}\n")
    with pytest.raises(ConfigError, match="cpu_fraction"):
        cli.run(parse("--config", str(bad), "--dry-run"))


def test_sigterm_stops_the_controller_releases_the_lease_and_exits_zero(
        api: FakeKubernetes, tmp_path: Path) -> None:
    port = free_port()
    config = yaml.safe_load(CONFIG.read_text())
    config.update(namespace=NS, metrics_port=port, resync_interval_s=5)
    config["leader"].update(identity="me", lease_duration_s=8, renew_deadline_s=5, retry_period_s=1)
    path = tmp_path / "partition.yaml"
    path.write_text(yaml.safe_dump(config))
    api.put("nodes", node("a"))
    scraped: list[str] = []

    def lease() -> dict[str, str]:
        spec: dict[str, str] = (api.get("leases", "extender-partition", NS) or {}).get("spec", {})
        return spec

    def operator() -> None:
        wait_until(lambda: lease().get("holderIdentity") == "me"
                   and api.get("pods", "partition-worker-a", NS), what="leading and acting")
        metrics = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: "partition_workers_ready 1.0" in requests.get(metrics, timeout=2).text,
                   what="metrics served")
        scraped.append(requests.get(metrics, timeout=2).text)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    helper = threading.Thread(target=operator, daemon=True)
    helper.start()
    try:
        code = cli.run(parse("--config", str(path), "--kubeconfig",
                             str(kubeconfig(tmp_path, api.url))))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    helper.join(5)
    assert code == 0
    assert api.get("leases", "extender-partition", NS) is not None
    assert not lease().get("holderIdentity"), "the lease is released for the next leader"
    for name in ("partition_workers_desired", "partition_reconcile_duration_seconds_count",
                 "partition_reconcile_errors_total", 'partition_api_calls_total{verb="create"}'):
        assert name in scraped[0]
