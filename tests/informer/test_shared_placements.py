"""Every extender process counts the same recent placements: the pod informer merged into the
ledger by UID, against the real kube-apiserver (tests/controlplane.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from kubernetes.client import CoreV1Api

from extender.informer import PodInformer
from extender.kube import ApiBinder
from tests.controlplane import ControlPlane, wait_for
from tests.informer.test_informer import FAST, bind, pod
from tests.support import StaticSource, app_for, fixture, healthy, sample, settings

NODES = ["shared-a", "shared-b", "shared-c"]


def extender_settings(plane: ControlPlane, namespace: str, **sections: Any) -> Any:
    return settings(informer={"enabled": True, "kubeconfig": str(plane.kubeconfig),
                              "namespace": namespace, **FAST}, **sections)


@pytest.fixture
def replicas(control_plane: ControlPlane, k8s_namespace: str) -> Iterator[list[Flask]]:
    """Two extender apps (two replicas), each with its own pod informer, over equal nodes."""
    informers = []
    apps = []
    for _ in range(2):
        s = extender_settings(control_plane, k8s_namespace)
        informer = PodInformer(s.informer, control_plane.api_client).start()
        assert informer.wait_synced(30), informer.status()
        informers.append(informer)
        app = app_for(s, StaticSource(s, healthy(NODES)), bound_pods=informer,
                      start_refresher=False, clock=time.time)
        app.extensions["extender"].cache.refresh()
        apps.append(app)
    yield apps
    for informer in informers:
        assert informer.stop()


def placements(app: Flask, node: str) -> list[dict[str, Any]]:
    answer = app.test_client().get(f"/api/v1/nodes/{node}").get_json()
    return answer["placements"]  # type: ignore[no-any-return]


def prioritize(app: Flask, wire_pod: dict[str, Any]) -> dict[str, int]:
    request = {**fixture("names-0001-prioritize-cache-plain.json")["request"], "Pod": wire_pod,
               "NodeNames": NODES}
    answer = app.test_client().post("/prioritize", json=request)
    assert answer.status_code == 200
    return {h["Host"]: h["Score"] for h in answer.get_json()}


def test_a_pod_bound_by_anyone_counts_on_its_node_in_every_replica_once(
        control_plane: ControlPlane, k8s_namespace: str, replicas: list[Flask]) -> None:
    core = CoreV1Api(control_plane.api_client())
    created = core.create_namespaced_pod(k8s_namespace, pod("burst-0", containers=[
        {"name": "c", "image": "x", "resources": {"requests": {"cpu": "16", "memory": "1Gi"}}}]))
    wire_pod = control_plane.api_client().sanitize_for_serialization(created)
    first, second = replicas
    scores = prioritize(first, wire_pod)  # replica 1's favourite: a guess
    guess = min(NODES, key=lambda n: (-scores[n], n))
    assert [p["pod"] for p in placements(first, guess)] == [f"{k8s_namespace}/burst-0"]
    elsewhere = next(n for n in NODES if n != guess)
    bind(core, k8s_namespace, "burst-0", elsewhere)  # kube-scheduler chose another node

    def moved(app: Flask) -> bool:
        return [p["pod"] for p in placements(app, elsewhere)] == [f"{k8s_namespace}/burst-0"]

    wait_for(lambda: moved(first) and moved(second), timeout_s=15, what="the binding in both")
    assert placements(first, guess) == []  # the guess moved, not doubled
    assert placements(second, elsewhere)[0]["cpu_cores"] == 16.0
    # The second replica never saw the pod's calls: it still ranks the bound node lower.
    after = prioritize(second, {**wire_pod, "metadata": {**wire_pod["metadata"],
                                                         "name": "burst-1", "uid": "u-burst-1"}})
    assert after[elsewhere] < max(after.values())
    metrics = second.test_client().get("/metrics").data
    assert sample(metrics, "extender_placements_total", source="informer") == 1.0

    core.delete_namespaced_pod("burst-0", k8s_namespace, grace_period_seconds=0)
    wait_for(lambda: not placements(first, elsewhere) and not placements(second, elsewhere),
             timeout_s=15, what="the deleted pod to leave both ledgers")


def test_a_dead_informer_degrades_readiness_but_never_the_answers(
        control_plane: ControlPlane, k8s_namespace: str, tmp_path: Any) -> None:
    s = extender_settings(control_plane, k8s_namespace)
    broken = tmp_path / "kubeconfig"
    text = control_plane.kubeconfig.read_text()
    broken.write_text(text.replace(control_plane.url, "https://127.0.0.1:9"))  # nothing listens
    informer = PodInformer(s.informer, lambda: _client_from(broken)).start()
    try:
        app = app_for(s, StaticSource(s, healthy(NODES)), bound_pods=informer,
                      start_refresher=False)
        app.extensions["extender"].cache.refresh()
        client = app.test_client()
        wait_for(lambda: informer.status().errors > 0 or None, timeout_s=15, what="a failure")
        ready = client.get("/readyz")
        assert ready.status_code == 200  # still answering: not taken out of the Service
        body = ready.get_json()
        assert body["status"] == "degraded" and body["informer"]["up"] is False
        assert "own placements" in body["informer"]["note"]
        assert body["informer"]["last_error"]
        assert sample(client.get("/metrics").data, "extender_informer_up") == 0.0
        check = client.get("/api/v1/selfcheck").get_json()
        assert check["ok"] is False and check["informer"]["up"] is False
        request = {**fixture("names-0001-prioritize-cache-plain.json")["request"],
                   "NodeNames": NODES}
        assert client.post("/prioritize", json=request).status_code == 200
        assert client.post("/filter", json=request).status_code == 200
    finally:
        assert informer.stop()


def _client_from(kubeconfig: Any) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def test_bind_on_a_replica_that_never_saw_the_pod_takes_its_requests_from_the_api(
        control_plane: ControlPlane, k8s_namespace: str) -> None:
    core = CoreV1Api(control_plane.api_client())
    core.create_namespaced_pod(k8s_namespace, pod("bind-me", containers=[
        {"name": "c", "image": "x", "resources": {"requests": {"cpu": "3", "memory": "2Gi"}}}]))
    s = settings(server={"bind_enabled": True})
    app = app_for(s, StaticSource(s, healthy(NODES)), binder=ApiBinder(core),
                  start_refresher=False)
    app.extensions["extender"].cache.refresh()
    client = app.test_client()
    answer = client.post("/bind", json={"PodName": "bind-me", "PodNamespace": k8s_namespace,
                                        "PodUID": "", "Node": "shared-c"})
    assert answer.status_code == 200 and answer.get_json()["Error"] == ""
    assert core.read_namespaced_pod("bind-me", k8s_namespace).spec.node_name == "shared-c"
    placed = placements(app, "shared-c")
    assert [(p["pod"], p["cpu_cores"], p["memory_bytes"]) for p in placed] == [
        (f"{k8s_namespace}/bind-me", 3.0, 2 * 2**30)]
    # A pod that no longer exists: the binding fails and is reported, nothing is recorded.
    gone = client.post("/bind", json={"PodName": "no-such-pod", "PodNamespace": k8s_namespace,
                                      "PodUID": "", "Node": "shared-a"}).get_json()
    assert gone["Error"].startswith("binding failed") and placements(app, "shared-a") == []
