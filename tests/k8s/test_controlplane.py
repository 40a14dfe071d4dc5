"""The real control plane fixture works: Ready nodes, a scheduler that binds, controllers, RBAC."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from kubernetes.client import BatchV1Api, CoreV1Api, V1Pod
from kubernetes.client.exceptions import ApiException

from tests.controlplane import (
    ControlPlane,
    ControlPlaneError,
    create_node,
    find_binaries,
    set_pod_running,
    wait_for,
)


def _unique(stem: str) -> str:
    return f"{stem}-{secrets.token_hex(3)}"


def test_create_node_is_ready_untainted_with_gpus(control_plane: ControlPlane) -> None:
    core = CoreV1Api(control_plane.api_client())
    name = _unique("cp-node")
    node = create_node(core, name, cpu="16", memory="64Gi", gpus=4, labels={"pool": "gpu"})
    try:
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert [c.status for c in ready] == ["True"]
        assert not node.spec.taints
        assert node.status.allocatable == {"cpu": "16", "memory": "64Gi", "pods": "110",
                                           "nvidia.com/gpu": "4"}
        assert node.metadata.labels["pool"] == "gpu"
    finally:
        core.delete_node(name)


def test_kube_scheduler_binds_a_pod_to_the_node(control_plane: ControlPlane, k8s_namespace: str) -> None:
    core = CoreV1Api(control_plane.api_client())
    node_name, scheduler_name = _unique("cp-sched-node"), _unique("cp-scheduler")
    create_node(core, node_name, labels={"cp-test": node_name})
    profile = {"schedulerName": scheduler_name}
    scheduler = control_plane.start_scheduler({"profiles": [profile]}, scheduler_name)
    try:
        core.create_namespaced_pod(k8s_namespace, {
            "metadata": {"name": "p"},
            "spec": {"schedulerName": scheduler_name, "nodeSelector": {"cp-test": node_name},
                     "containers": [{"name": "c", "image": "busybox",
                                     "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
        })

        def bound() -> V1Pod | None:
            pod: V1Pod = core.read_namespaced_pod("p", k8s_namespace)
            return pod if pod.spec.node_name else None

        pod = wait_for(bound, timeout_s=30, what="kube-scheduler to bind the pod")
        assert pod.spec.node_name == node_name
        assert any(c.type == "PodScheduled" and c.status == "True" for c in pod.status.conditions)
        set_pod_running(core, "p", k8s_namespace)
        status = core.read_namespaced_pod("p", k8s_namespace).status
        assert status.phase == "Running"
        assert {c.type: c.status for c in status.conditions}["Ready"] == "True"
        assert status.container_statuses[0].state.running is not None
    finally:
        scheduler.stop()
        core.delete_node(node_name)
    assert not scheduler.alive()
    assert scheduler.log_path.exists()


def test_controller_manager_makes_a_jobs_pods(controller_manager: ControlPlane, k8s_namespace: str) -> None:
    client = controller_manager.api_client()
    BatchV1Api(client).create_namespaced_job(k8s_namespace, {
        "metadata": {"name": "j"},
        "spec": {"parallelism": 2, "completions": 2, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}},
    })
    core = CoreV1Api(client)

    def two_pods() -> list[V1Pod] | None:
        pods: list[V1Pod] = core.list_namespaced_pod(k8s_namespace, label_selector="job-name=j").items
        return pods if len(pods) == 2 else None

    pods = wait_for(two_pods, timeout_s=30, what="the Job controller to create 2 pods")
    assert [p.metadata.owner_references[0].kind for p in pods] == ["Job", "Job"]


def test_unprivileged_user_is_forbidden_to_list_nodes(control_plane: ControlPlane) -> None:
    CoreV1Api(control_plane.api_client()).list_node(limit=1)  # the admin may
    for token in (control_plane.user_token, control_plane.other_user_token):
        with pytest.raises(ApiException) as caught:
            CoreV1Api(control_plane.api_client(token)).list_node(limit=1)
        assert caught.value.status == 403
    assert control_plane.user_name in str(caught.value.body) or control_plane.other_user_name in str(
        caught.value.body)


def test_missing_binaries_give_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    folder, reason = find_binaries()
    assert folder is None
    assert str(tmp_path) in reason and "kube-apiserver" in reason


def test_a_process_that_fails_to_start_shows_its_log(tmp_path: Path) -> None:
    bins = tmp_path / "bin"
    bins.mkdir()
    etcd = bins / "etcd"
    etcd.write_text("#!/bin/sh\necho 'etcd: bad flag --unsafe-no-fsync' >&2\nexit 3\n")
    etcd.chmod(0o755)
    with pytest.raises(ControlPlaneError, match=r"(?s)etcd exited with 3.*bad flag"):
        ControlPlane.start(bins, tmp_path / "work", timeout_s=10)
