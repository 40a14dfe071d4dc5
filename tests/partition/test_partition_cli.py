"""`extender partition`: options, --dry-run and a SIGTERM against the real API server (through the
fault proxy, which counts the calls) via a kubeconfig."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes.client import CoordinationV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from extender.errors import ConfigError
from extender.localserver import free_port
from extender.partition import cli
from extender.partition.plan import NODE_ANNOTATION, PARTITION_LABEL, worker_name
from tests.controlplane import ControlPlane, wait_for
from tests.faultproxy import FaultProxy
from tests.partition.conftest import CONFIG, TEST_LABEL, Kubelet


def kubeconfig(tmp_path: Path, server: str, token: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "tester"}}],
    }))
    return path


def config_file(tmp_path: Path, namespace: str, **keys: object) -> Path:
    """The shipped config for this test: its namespace, only its nodes, COMPSs off, `keys` over it."""
    config = yaml.safe_load(CONFIG.read_text())
    config.update(namespace=namespace, **keys)
    config["eligibility"]["node_selector"] = {TEST_LABEL: namespace}
    config["compss"]["enabled"] = False
    path = tmp_path / "partition.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_dry_run_prints_the_plan_per_node_and_changes_nothing(
        control_plane: ControlPlane, proxy: FaultProxy, core: CoreV1Api, k8s_namespace: str,
        cluster: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns = k8s_namespace
    new, cordoned = cluster("new"), cluster("cordoned")
    core.patch_node(cordoned, {"spec": {"unschedulable": True}})
    pod = worker_name(cordoned, "partition-worker")
    core.create_namespaced_pod(ns, {"metadata": {"name": pod, "labels": {PARTITION_LABEL: "default"},
                                                 "annotations": {NODE_ANNOTATION: cordoned}},
                                    "spec": {"containers": [{"name": "worker", "image": "x"}]}})
    args = parse("--config", str(config_file(tmp_path, ns)),
                 "--kubeconfig", str(kubeconfig(tmp_path, proxy.url, control_plane.admin_token)),
                 "--namespace", ns, "--dry-run")
    assert cli.run(args) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert ["create", new, worker_name(new, "partition-worker"), "no", "worker"] in lines
    assert ["delete", cordoned, pod, "cordoned"] in lines
    assert ["skip", cordoned, "-", "cordoned"] in lines
    assert proxy.methods() == {"GET"}


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
        control_plane: ControlPlane, proxy: FaultProxy, core: CoreV1Api, k8s_namespace: str,
        cluster: Callable[..., str], kubelet: Kubelet, tmp_path: Path) -> None:
    ns = k8s_namespace
    port = free_port()
    path = config_file(tmp_path, ns, metrics_port=port, resync_interval_s=5)
    config = yaml.safe_load(path.read_text())
    config["leader"].update(identity="me", lease_duration_s=8, renew_deadline_s=5, retry_period_s=1)
    path.write_text(yaml.safe_dump(config))
    node = cluster("a")
    leases = CoordinationV1Api(core.api_client)
    scraped: list[str] = []

    def holder() -> str | None:
        try:
            spec = leases.read_namespaced_lease("extender-partition", ns).spec
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return spec.holder_identity if spec else None

    def worker_exists() -> bool:
        try:
            core.read_namespaced_pod(worker_name(node, "partition-worker"), ns)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def operator() -> None:
        wait_for(lambda: holder() == "me" and worker_exists(), timeout_s=20, what="leading and acting")
        metrics = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: "partition_workers_ready 1.0" in requests.get(metrics, timeout=2).text,
                 timeout_s=20, what="metrics served")
        scraped.append(requests.get(metrics, timeout=2).text)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    helper = threading.Thread(target=operator, daemon=True)
    helper.start()
    try:
        code = cli.run(parse("--config", str(path), "--kubeconfig",
                             str(kubeconfig(tmp_path, proxy.url, control_plane.admin_token))))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    helper.join(5)
    assert code == 0
    assert not holder(), "the lease is released for the next leader"
    assert leases.read_namespaced_lease("extender-partition", ns) is not None
    for name in ("partition_workers_desired", "partition_reconcile_duration_seconds_count",
                 "partition_reconcile_errors_total", 'partition_api_calls_total{verb="create"}'):
        assert name in scraped[0]
