"""The reconciler against the real kube-apiserver, through the real client (and the fault proxy).

Each test has its own namespace and nodes (tests/partition/conftest.py); `Kubelet` binds the
workers, makes them Running and Ready and finishes graceful deletions, as kubelets would.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
import yaml
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from extender.partition import reconcile
from extender.partition.plan import (
    HASH_ANNOTATION,
    NODE_ANNOTATION,
    PARTITION_LABEL,
    render_worker,
    worker_name,
)
from extender.partition.reconcile import PartitionMetrics, Reconciler
from tests.controlplane import ControlPlane, ExtraApiServer, set_pod_running, wait_for
from tests.faultproxy import FaultProxy
from tests.partition.conftest import Kubelet, Running, api_settings

Start = Callable[..., Running]
Make = Callable[..., str]


def pods(core: CoreV1Api, ns: str, selector: str = f"{PARTITION_LABEL}=default") -> list[dict[str, Any]]:
    """The pods of the partition (raw JSON), by name."""
    raw = core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False).data
    items: list[dict[str, Any]] = json.loads(raw)["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def workers(core: CoreV1Api, ns: str) -> dict[str, dict[str, Any]]:
    """Live (not terminating) worker pods by node."""
    return {p["metadata"]["annotations"][NODE_ANNOTATION]: p for p in pods(core, ns)
            if not p["metadata"].get("deletionTimestamp")}


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions") or ())


def running_workers(core: CoreV1Api, ns: str, nodes: set[str]) -> dict[str, dict[str, Any]] | None:
    """The workers by node once exactly `nodes` have one, bound and Ready; else None."""
    found = workers(core, ns)
    return found if set(found) == nodes and all(ready(p) for p in found.values()) else None


def passes(running: Running) -> float:
    return running.metric("partition_reconcile_duration_seconds_count")


def after_next_pass(running: Running) -> None:
    """Wait until a reconcile pass has started and finished after this call."""
    seen = passes(running)

    def woken() -> bool:
        running.reconciler.changed.set()
        return passes(running) >= seen + 2

    wait_for(woken, timeout_s=10, what="two reconcile passes")


def configmap(core: CoreV1Api, ns: str) -> dict[str, str] | None:
    try:
        data: dict[str, str] = core.read_namespaced_config_map("partition", ns).data or {}
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return data


def published(core: CoreV1Api, ns: str) -> list[dict[str, Any]]:
    """The published workers; partition.yaml and resources.json must agree."""
    data = configmap(core, ns)
    if data is None:
        return []
    workers_: list[dict[str, Any]] = yaml.safe_load(data["partition.yaml"])["workers"]
    assert msgspec.json.decode(data["resources.json"])["workers"] == workers_
    return workers_


def events(core: CoreV1Api, ns: str) -> list[dict[str, Any]]:
    raw = core.list_namespaced_event(ns, _preload_content=False).data
    items: list[dict[str, Any]] = json.loads(raw)["items"]
    return items


class ManualClock:
    """Epoch seconds that move only when a test says so (whole seconds at start: the API server
    keeps condition timestamps to the second)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def set_allocatable(core: CoreV1Api, node: str, cpu: str) -> None:
    resources = {"cpu": cpu}
    core.patch_node_status(node, {"status": {"allocatable": resources, "capacity": resources}})


def set_not_ready(core: CoreV1Api, node: str, since: float) -> None:
    core.patch_node_status(node, {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "test",
         "lastHeartbeatTime": iso(since), "lastTransitionTime": iso(since)}]}})


def cordon(core: CoreV1Api, node: str, unschedulable: bool = True) -> None:
    core.patch_node(node, {"spec": {"unschedulable": unschedulable}})


def test_creates_one_pinned_sized_worker_per_eligible_node_and_publishes_it(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start) -> None:
    ns = k8s_namespace
    a = cluster("a", cpu="4", memory="16Gi")
    b = cluster("b", cpu="8", memory="32Gi", gpus=2)
    cluster("cp", labels={"node-role.kubernetes.io/control-plane": ""})
    running = controller()
    found = wait_for(lambda: running_workers(core, ns, {a, b}), timeout_s=20, what="a worker on a and b")
    pod_b = found[b]
    assert pod_b["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"] == [b]
    sized = next(c for c in pod_b["spec"]["containers"] if c["name"] == "worker")["resources"]
    assert sized["requests"] == {"cpu": "6400m", "memory": str(int(32 * 2**30 * 0.8)),
                                 "nvidia.com/gpu": "2"}
    wait_for(lambda: [(w["node"], w["ready"]) for w in published(core, ns)] == [(a, True), (b, True)],
             timeout_s=20, what="both ready workers in the ConfigMap")
    entry = published(core, ns)[1]
    assert entry["pod"] == worker_name(b, "partition-worker") and entry["gpus"] == 2
    assert entry["ip"] == pod_b["status"]["podIP"]
    reasons = {e["involvedObject"]["name"]: e["reason"] for e in events(core, ns)}
    assert reasons == {worker_name(a, "partition-worker"): "Created",
                       worker_name(b, "partition-worker"): "Created"}
    wait_for(lambda: running.metric("partition_workers_ready") == 2, timeout_s=10, what="ready metric")
    assert running.metric("partition_workers_desired") == 2
    assert running.metric("partition_api_calls_total", verb="create") >= 2


def test_node_added_gets_a_worker_and_removed_node_loses_it(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start) -> None:
    ns = k8s_namespace
    a = cluster("a")
    controller()
    wait_for(lambda: set(workers(core, ns)) == {a}, timeout_s=20, what="worker on a")
    b = cluster("b")
    wait_for(lambda: set(workers(core, ns)) == {a, b}, timeout_s=20, what="worker on new node b")
    core.delete_node(a)
    wait_for(lambda: set(workers(core, ns)) == {b}, timeout_s=20, what="worker of removed node a deleted")
    wait_for(lambda: [w["node"] for w in published(core, ns)] == [b], timeout_s=20,
             what="partition without a")


def test_cordoned_node_loses_its_worker_gracefully_and_gets_it_back_when_uncordoned(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start, kubelet: Kubelet) -> None:
    ns = k8s_namespace
    kubelet.finish_deletions = False  # the kubelet is slow to stop the containers
    a = cluster("a")
    running = controller()
    wait_for(lambda: running_workers(core, ns, {a}), timeout_s=20, what="worker on a, bound and ready")
    cordon(core, a)
    terminating = wait_for(lambda: next((p for p in pods(core, ns) if p["metadata"].get("deletionTimestamp")),
                                        None), timeout_s=20, what="graceful deletion started")
    after_next_pass(running)
    assert workers(core, ns) == {}, "no new worker while the node is cordoned"
    kubelet.finish(terminating["metadata"]["name"])
    after_next_pass(running)
    assert pods(core, ns) == []
    cordon(core, a, unschedulable=False)
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker back after uncordon")


def test_worker_is_not_recreated_while_its_predecessor_terminates(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start, kubelet: Kubelet) -> None:
    ns = k8s_namespace
    kubelet.finish_deletions = False
    a = cluster("a", cpu="4")
    running = controller()
    first = wait_for(lambda: running_workers(core, ns, {a}), timeout_s=20, what="worker on a")[a]
    set_allocatable(core, a, "8")
    wait_for(lambda: workers(core, ns) == {}, timeout_s=20, what="old worker terminating")
    after_next_pass(running)
    assert [p["metadata"]["uid"] for p in pods(core, ns)] == [first["metadata"]["uid"]]
    kubelet.finish(first["metadata"]["name"])
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="replacement created")
    assert workers(core, ns)[a]["metadata"]["uid"] != first["metadata"]["uid"]


def test_not_ready_node_keeps_its_worker_for_the_grace_period_then_loses_it(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start) -> None:
    ns = k8s_namespace
    clock = ManualClock()
    a = cluster("a")
    running = controller(clock=clock, eligibility={"not_ready_grace_s": 3.0})
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker on a")
    set_not_ready(core, a, since=clock.now)
    after_next_pass(running)
    clock.now += 2.9
    after_next_pass(running)
    assert a in workers(core, ns), "a short NotReady spell must not delete the worker"
    clock.now += 0.2  # past the grace end, whatever the float rounding of the timestamps
    # The plan's wake-up time, not a new event, triggers the deletion.
    wait_for(lambda: workers(core, ns) == {}, timeout_s=20, what="worker deleted after the grace period")
    # The event follows the delete call, which the worker's disappearance may beat.
    wait_for(lambda: "NotReady" in {e["message"][:8] for e in events(core, ns)} or None,
             timeout_s=10, what="the NotReady deletion's event")


def test_failed_worker_is_recreated_after_a_backoff_that_doubles_until_it_gets_ready(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start, kubelet: Kubelet) -> None:
    ns = k8s_namespace
    clock = ManualClock()
    a = cluster("a")
    running = controller(clock=clock, rollout={"backoff_initial_s": 30.0, "backoff_max_s": 300.0})
    wait_for(lambda: running_workers(core, ns, {a}), timeout_s=20, what="worker on a")
    kubelet.run_pods = False  # from now on workers never become Ready: a crash loop

    def crash() -> None:
        name = workers(core, ns)[a]["metadata"]["name"]
        core.patch_namespaced_pod_status(name, ns, {"status": {
            "phase": "Failed", "conditions": [{"type": "Ready", "status": "False"}]}})
        wait_for(lambda: pods(core, ns) == [], timeout_s=20, what="failed worker deleted")
        after_next_pass(running)

    crash()
    assert pods(core, ns) == [], "recreated before the backoff ended"
    clock.now += 30
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker recreated after backoff")
    # A second failure before ever being Ready doubles the wait.
    crash()
    clock.now += 30
    after_next_pass(running)
    assert pods(core, ns) == []
    clock.now += 31  # 60 s in all, with room for float rounding
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker recreated after doubled backoff")
    # A worker that made it to Ready starts the next failure over at the initial delay.
    set_pod_running(core, workers(core, ns)[a]["metadata"]["name"], ns)
    after_next_pass(running)
    crash()
    clock.now += 30
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker recreated after the initial delay")


def test_allocatable_change_replaces_that_nodes_worker_only(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start) -> None:
    ns = k8s_namespace
    a, b = cluster("a", cpu="4"), cluster("b", cpu="4")
    controller()
    before = {n: p["metadata"]["uid"] for n, p in
              wait_for(lambda: running_workers(core, ns, {a, b}), timeout_s=20, what="workers").items()}
    set_allocatable(core, b, "16")
    wait_for(lambda: b in (w := workers(core, ns)) and w[b]["metadata"]["uid"] != before[b],
             timeout_s=20, what="b replaced")
    after = workers(core, ns)
    assert after[a]["metadata"]["uid"] == before[a]
    cpu = next(c for c in after[b]["spec"]["containers"] if c["name"] == "worker")
    assert cpu["resources"]["requests"]["cpu"] == "12800m"
    wait_for(lambda: "Replacing" in {e["reason"] for e in events(core, ns)} or None,
             timeout_s=10, what="the replacement's event")


def watched(core: CoreV1Api, ns: str, since_rv: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The worker pods' watch events after `since_rv`, replayed by the API server's watch cache."""
    resp = core.list_namespaced_pod(ns, label_selector=f"{PARTITION_LABEL}=default", watch=True,
                                    resource_version=since_rv, timeout_seconds=1, _preload_content=False)
    for line in resp.data.splitlines():
        event = json.loads(line)
        yield event["type"], event["object"]


def max_unavailable_during(history: Iterator[tuple[str, dict[str, Any]]], nodes: set[str]) -> int:
    """Replays the pod history: the most eligible nodes without a ready worker at once."""
    up: dict[str, bool] = {n: True for n in nodes}
    worst = 0
    for kind, obj in history:
        owner = obj["metadata"]["annotations"][NODE_ANNOTATION]
        up[owner] = kind != "DELETED" and not obj["metadata"].get("deletionTimestamp") and ready(obj)
        worst = max(worst, sum(1 for ok in up.values() if not ok))
    return worst


def test_restart_with_new_config_adopts_workers_then_replaces_them_one_at_a_time(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start) -> None:
    ns = k8s_namespace
    names = {cluster(f"n{i}") for i in range(4)}
    first = controller()
    wait_for(lambda: running_workers(core, ns, names), timeout_s=30, what="4 ready workers")
    first.halt()
    hashes = {n: p["metadata"]["annotations"][HASH_ANNOTATION] for n, p in workers(core, ns).items()}
    rv = core.list_namespaced_pod(ns, limit=1).metadata.resource_version
    controller(sizing={"cpu_fraction": 0.5})
    wait_for(lambda: (w := running_workers(core, ns, names)) is not None and all(
        p["metadata"]["annotations"][HASH_ANNOTATION] != hashes[n] for n, p in w.items()),
        timeout_s=60, what="all workers replaced and ready")
    assert max_unavailable_during(watched(core, ns, rv), names) == 1


def test_restart_with_same_config_adopts_existing_workers_without_changes(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start, proxy: FaultProxy) -> None:
    ns = k8s_namespace
    names = {cluster(s) for s in ("a", "b", "c")}
    first = controller()
    wait_for(lambda: running_workers(core, ns, names), timeout_s=20, what="3 workers")
    first.halt()
    creates, deletes = proxy.count("POST", "pods"), proxy.count("DELETE", "pods")
    second = controller()
    after_next_pass(second)
    assert (proxy.count("POST", "pods"), proxy.count("DELETE", "pods")) == (creates, deletes)
    assert len(pods(core, ns)) == 3


def test_create_conflict_means_the_worker_already_exists(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, proxied: ApiClient, proxy: FaultProxy) -> None:
    ns = k8s_namespace
    a = cluster("a")
    registry = CollectorRegistry()
    reconciler = Reconciler(api_settings(ns), CoreV1Api(proxied), metrics=PartitionMetrics(registry))
    reconciler.observe()
    # Another replica (or our previous life) creates the worker between our list and our create.
    core.create_namespaced_pod(ns, render_worker(reconciler.nodes.snapshot()[a], reconciler.settings))
    result = reconciler.reconcile_once()
    assert [x.kind for x in result.actions] == ["create"]
    assert proxy.count("POST", "pods") == 1  # ours, refused with 409
    assert len(pods(core, ns)) == 1
    assert reconciler.failed_calls == 0
    assert registry.get_sample_value("partition_reconcile_errors_total") == 0


def test_server_errors_are_counted_and_retried(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start, proxy: FaultProxy) -> None:
    ns = k8s_namespace
    a = cluster("a")
    proxy.fail("GET", "nodes", 500)
    proxy.fail("POST", "pods", 500)
    proxy.fail("PUT", "configmaps", 500)
    running = controller()
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker created after a 500")
    wait_for(lambda: [w["node"] for w in published(core, ns)] == [a], timeout_s=20,
             what="ConfigMap after a 500")
    assert running.metric("partition_reconcile_errors_total") >= 3
    assert proxy.count("POST", "pods") == 2


def test_expired_watch_is_followed_by_a_relist(
        control_plane: ControlPlane, etcd_apiserver: ExtraApiServer, core: CoreV1Api, k8s_namespace: str,
        cluster: Make, kubelet: Kubelet) -> None:
    ns = k8s_namespace
    a = cluster("a")
    # Through an API server without watch cache, whose watches read etcd: a watch from a
    # resourceVersion that etcd has compacted gets 410 Gone from the real server.
    with FaultProxy(etcd_apiserver.url, etcd_apiserver.ca_file) as proxy, \
            proxy.api_client(control_plane.admin_token) as client:
        running = Running(api_settings(ns, resync_interval_s=2.0), client).start()
        try:
            wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker on a")
            # The next node watch is held between its list and its start; etcd moves on and drops
            # the history meanwhile, as a compaction does.
            held = proxy.hold("GET", "nodes", watch=True)
            assert held.wait_held(10), "no node watch within a resync"
            lists = proxy.count("GET", "nodes")
            for i in range(2):
                core.create_namespaced_config_map(ns, {"metadata": {"name": f"bump-{i}"}})
            control_plane.compact_etcd()
            held.release()
            wait_for(lambda: proxy.count("GET", "nodes") > lists, timeout_s=10, what="relist after 410")
            assert b'"code":410' in held.first_line, held.first_line
            b = cluster("b")
            wait_for(lambda: set(workers(core, ns)) == {a, b}, timeout_s=20,
                     what="worker on b after the relist")
            assert running.metric("partition_reconcile_errors_total") == 0
        finally:
            running.halt()


def test_one_node_change_costs_calls_for_that_node_only(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start, proxy: FaultProxy) -> None:
    ns = k8s_namespace
    names = {cluster(f"n{i:02d}") for i in range(40)}
    # No periodic relist within the measurement: only the change's own calls are counted.
    running = controller(events=False, resync_interval_s=120.0)
    wait_for(lambda: running_workers(core, ns, names), timeout_s=60, what="40 ready workers")
    wait_for(lambda: len(w := published(core, ns)) == 40 and all(x["ready"] for x in w),
             timeout_s=30, what="partition published")
    after_next_pass(running)
    kinds = (("POST", "pods"), ("DELETE", "pods"), ("PUT", "configmaps"), ("GET", "nodes"))
    calls = {k: proxy.count(*k) for k in kinds}
    target = f"{ns}-n07"
    cordon(core, target)
    wait_for(lambda: target not in workers(core, ns), timeout_s=20, what="n07 worker deleted")
    wait_for(lambda: len(published(core, ns)) == 39, timeout_s=20, what="partition updated")
    after_next_pass(running)
    delta = {k: proxy.count(*k) - v for k, v in calls.items()}
    assert delta == {("POST", "pods"): 0, ("DELETE", "pods"): 1, ("PUT", "configmaps"): 1,
                     ("GET", "nodes"): 0}


def test_foreign_pods_are_never_touched(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start, proxy: FaultProxy) -> None:
    ns = k8s_namespace
    a = cluster("a")
    core.create_namespaced_pod(ns, {"metadata": {"name": "bystander", "labels": {PARTITION_LABEL: "other"},
                                                 "annotations": {NODE_ANNOTATION: a}},
                                    "spec": {"containers": [{"name": "c", "image": "x"}]}})
    running = controller()
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker on a")
    after_next_pass(running)
    assert proxy.count("DELETE", "pods") == 0
    assert [p["metadata"]["name"] for p in pods(core, ns, f"{PARTITION_LABEL}=other")] == ["bystander"]


def test_partition_too_big_for_a_configmap_is_an_error_not_a_truncation(
        core: CoreV1Api, k8s_namespace: str, cluster: Make, controller: Start,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ns = k8s_namespace
    monkeypatch.setattr(reconcile, "CONFIGMAP_MAX_BYTES", 100)
    a = cluster("a")
    running = controller()
    wait_for(lambda: a in workers(core, ns), timeout_s=20, what="worker on a")
    wait_for(lambda: running.metric("partition_reconcile_errors_total") >= 1, timeout_s=20, what="error")
    assert configmap(core, ns) is None
