"""The reconciler against a fake Kubernetes API on loopback, through the real client."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import yaml
from kubernetes.client import ApiClient, CoreV1Api
from prometheus_client import CollectorRegistry

from extender.localserver import wait_until
from extender.partition import reconcile
from extender.partition.plan import HASH_ANNOTATION, NODE_ANNOTATION, PARTITION_LABEL
from extender.partition.reconcile import PartitionMetrics, Reconciler
from tests.partition.conftest import NS, Running, make_settings
from tests.partition.fakeapi import FakeKubernetes, node, running_status

Start = Callable[..., Running]


def workers(api: FakeKubernetes) -> dict[str, dict[str, Any]]:
    """Live (not terminating) worker pods by node."""
    return {p["metadata"]["annotations"][NODE_ANNOTATION]: p for p in api.list("pods", NS)
            if not p["metadata"].get("deletionTimestamp")}


def passes(running: Running) -> float:
    return running.metric("partition_reconcile_duration_seconds_count")


def after_next_pass(running: Running) -> None:
    """Wait until a reconcile pass has started and finished after this call."""
    seen = passes(running)

    def woken() -> bool:
        running.reconciler.changed.set()
        return passes(running) >= seen + 2

    wait_until(woken, timeout_s=10, what="two reconcile passes")


def published(api: FakeKubernetes) -> list[dict[str, Any]]:
    """The published workers; partition.yaml and resources.json must agree."""
    cm = api.get("configmaps", "partition", NS)
    assert cm is not None
    workers_: list[dict[str, Any]] = yaml.safe_load(cm["data"]["partition.yaml"])["workers"]
    assert msgspec.json.decode(cm["data"]["resources.json"])["workers"] == workers_
    return workers_


class ManualClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def test_creates_one_pinned_sized_worker_per_eligible_node_and_publishes_it(
        api: FakeKubernetes, controller: Start) -> None:
    api.put("nodes", node("a", cpu="4", memory="16Gi"))
    api.put("nodes", node("b", cpu="8", memory="32Gi", gpus=2))
    api.put("nodes", node("cp", labels={"node-role.kubernetes.io/control-plane": ""}))
    running = controller()
    wait_until(lambda: set(workers(api)) == {"a", "b"}, what="a worker on a and b")
    b = workers(api)["b"]
    assert b["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["b"]
    sized = next(c for c in b["spec"]["containers"] if c["name"] == "worker")["resources"]
    assert sized["requests"] == {"cpu": "6400m", "memory": str(int(32 * 2**30 * 0.8)),
                                 "nvidia.com/gpu": "2"}
    wait_until(lambda: [w["node"] for w in published(api)] == ["a", "b"], what="ConfigMap")
    entry = published(api)[1]
    assert entry["pod"] == "partition-worker-b" and entry["ready"] and entry["gpus"] == 2
    assert entry["ip"] == b["status"]["podIP"]
    reasons = {e["involvedObject"]["name"]: e["reason"] for e in api.list("events", NS)}
    assert reasons == {"partition-worker-a": "Created", "partition-worker-b": "Created"}
    wait_until(lambda: running.metric("partition_workers_ready") == 2, what="ready metric")
    assert running.metric("partition_workers_desired") == 2
    assert running.metric("partition_api_calls_total", verb="create") >= 2


def test_node_added_gets_a_worker_and_removed_node_loses_it(
        api: FakeKubernetes, controller: Start) -> None:
    api.put("nodes", node("a"))
    controller()
    wait_until(lambda: set(workers(api)) == {"a"}, what="worker on a")
    api.put("nodes", node("b"))
    wait_until(lambda: set(workers(api)) == {"a", "b"}, what="worker on new node b")
    api.delete("nodes", None, "a")
    wait_until(lambda: set(workers(api)) == {"b"}, what="worker of removed node a deleted")
    wait_until(lambda: [w["node"] for w in published(api)] == ["b"], what="partition without a")


def test_cordoned_node_loses_its_worker_gracefully_and_gets_it_back_when_uncordoned(
        api: FakeKubernetes, controller: Start) -> None:
    api.graceful = True
    api.put("nodes", node("a"))
    running = controller()
    wait_until(lambda: "a" in workers(api), what="worker on a")
    api.put("nodes", node("a", unschedulable=True))
    wait_until(lambda: api.list("pods", NS)[0]["metadata"].get("deletionTimestamp"),
               what="graceful deletion started")
    after_next_pass(running)
    assert workers(api) == {}, "no new worker while the node is cordoned"
    api.finish_deletions()
    after_next_pass(running)
    assert api.list("pods", NS) == []
    api.put("nodes", node("a", unschedulable=False))
    wait_until(lambda: "a" in workers(api), what="worker back after uncordon")


def test_worker_is_not_recreated_while_its_predecessor_terminates(
        api: FakeKubernetes, controller: Start) -> None:
    api.graceful = True
    api.put("nodes", node("a", cpu="4"))
    running = controller()
    wait_until(lambda: "a" in workers(api), what="worker on a")
    first = api.list("pods", NS)[0]["metadata"]["uid"]
    api.put("nodes", node("a", cpu="8"))
    wait_until(lambda: workers(api) == {}, what="old worker terminating")
    after_next_pass(running)
    assert [p["metadata"]["uid"] for p in api.list("pods", NS)] == [first]
    api.finish_deletions()
    wait_until(lambda: "a" in workers(api), what="replacement created")
    assert workers(api)["a"]["metadata"]["uid"] != first


def test_not_ready_node_keeps_its_worker_for_the_grace_period_then_loses_it(
        api: FakeKubernetes, controller: Start) -> None:
    clock = ManualClock()
    api.put("nodes", node("a"))
    running = controller(clock=clock, eligibility={"not_ready_grace_s": 3.0})
    wait_until(lambda: "a" in workers(api), what="worker on a")
    api.put("nodes", node("a", ready=False, since=iso(clock.now)))
    after_next_pass(running)
    clock.now += 2.9
    after_next_pass(running)
    assert "a" in workers(api), "a short NotReady spell must not delete the worker"
    clock.now += 0.2  # past the grace end, whatever the float rounding of the timestamps
    # The plan's wake-up time, not a new event, triggers the deletion.
    wait_until(lambda: workers(api) == {}, what="worker deleted after the grace period")
    assert "NotReady" in {e["message"][:8] for e in api.list("events", NS)}


def test_failed_worker_is_recreated_after_a_backoff_that_doubles_until_it_gets_ready(
        api: FakeKubernetes, api_client: ApiClient) -> None:
    clock = ManualClock()
    settings = make_settings(compss={"enabled": False},
                             rollout={"backoff_initial_s": 30.0, "backoff_max_s": 300.0})
    running = Running(settings, api_client, clock=clock)
    api.put("nodes", node("a"))
    running.start()
    try:
        wait_until(lambda: "a" in workers(api), what="worker on a")
        api.kubelet = False  # from now on workers never become Ready: a crash loop

        def crash() -> None:
            pod = workers(api)["a"]
            pod["status"] = running_status("10.0.0.9", phase="Failed", ready=False)
            api.put("pods", pod, NS)
            wait_until(lambda: api.list("pods", NS) == [], what="failed worker deleted")
            after_next_pass(running)

        crash()
        assert api.list("pods", NS) == [], "recreated before the backoff ended"
        clock.now += 30
        wait_until(lambda: "a" in workers(api), what="worker recreated after backoff")
        # A second failure before ever being Ready doubles the wait.
        crash()
        clock.now += 30
        after_next_pass(running)
        assert api.list("pods", NS) == []
        clock.now += 31  # 60 s in all, with room for float rounding
        wait_until(lambda: "a" in workers(api), what="worker recreated after doubled backoff")
        # A worker that made it to Ready starts the next failure over at the initial delay.
        pod = workers(api)["a"]
        pod["status"] = running_status("10.0.0.9")
        api.put("pods", pod, NS)
        after_next_pass(running)
        crash()
        clock.now += 30
        wait_until(lambda: "a" in workers(api), what="worker recreated after the initial delay")
    finally:
        running.halt()


def test_allocatable_change_replaces_that_nodes_worker_only(
        api: FakeKubernetes, controller: Start) -> None:
    api.put("nodes", node("a", cpu="4"))
    api.put("nodes", node("b", cpu="4"))
    controller()
    wait_until(lambda: set(workers(api)) == {"a", "b"}, what="workers")
    before = {n: p["metadata"]["uid"] for n, p in workers(api).items()}
    api.put("nodes", node("b", cpu="16"))
    wait_until(lambda: "b" in workers(api) and workers(api)["b"]["metadata"]["uid"] != before["b"],
               what="b replaced")
    after = workers(api)
    assert after["a"]["metadata"]["uid"] == before["a"]
    cpu = next(c for c in after["b"]["spec"]["containers"] if c["name"] == "worker")
    assert cpu["resources"]["requests"]["cpu"] == "12800m"
    assert "Replacing" in {e["reason"] for e in api.list("events", NS)}


def max_unavailable_during(api: FakeKubernetes, nodes: set[str], since_rv: int) -> int:
    """Replays the pod history: the most eligible nodes without a ready worker at once."""
    ready: dict[str, bool] = {n: True for n in nodes}
    worst = 0
    for rv, resource, kind, obj in api.history:
        if resource != "pods" or rv <= since_rv:
            continue
        owner = obj["metadata"]["annotations"][NODE_ANNOTATION]
        conditions = obj.get("status", {}).get("conditions", [])
        is_ready = kind != "DELETED" and not obj["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        ready[owner] = is_ready
        worst = max(worst, sum(1 for ok in ready.values() if not ok))
    return worst


def test_restart_with_new_config_adopts_workers_then_replaces_them_one_at_a_time(
        api: FakeKubernetes, controller: Start) -> None:
    names = {f"n{i}" for i in range(4)}
    for name in sorted(names):
        api.put("nodes", node(name))
    first = controller()
    wait_until(lambda: set(workers(api)) == names, what="4 workers")
    first.halt()
    hashes = {n: p["metadata"]["annotations"][HASH_ANNOTATION] for n, p in workers(api).items()}
    rv = api.rv
    controller(sizing={"cpu_fraction": 0.5})
    wait_until(lambda: all(p["metadata"]["annotations"][HASH_ANNOTATION] != hashes[n]
                           for n, p in workers(api).items()) and set(workers(api)) == names,
               what="all workers replaced")
    assert max_unavailable_during(api, names, rv) == 1


def test_restart_with_same_config_adopts_existing_workers_without_changes(
        api: FakeKubernetes, controller: Start) -> None:
    for name in ("a", "b", "c"):
        api.put("nodes", node(name))
    first = controller()
    wait_until(lambda: set(workers(api)) == {"a", "b", "c"}, what="3 workers")
    first.halt()
    creates, deletes = api.count("POST", "pods"), api.count("DELETE", "pods")
    second = controller()
    after_next_pass(second)
    assert (api.count("POST", "pods"), api.count("DELETE", "pods")) == (creates, deletes)
    assert len(api.list("pods", NS)) == 3


def test_create_conflict_means_the_worker_already_exists(
        api: FakeKubernetes, api_client: ApiClient) -> None:
    api.put("nodes", node("a"))
    registry = CollectorRegistry()
    reconciler = Reconciler(make_settings(compss={"enabled": False}), CoreV1Api(api_client),
                            metrics=PartitionMetrics(registry))
    reconciler.observe()
    # Another replica (or our previous life) creates the worker between our list and our create.
    from extender.partition.plan import render_worker

    api.create("pods", render_worker(reconciler.nodes.snapshot()["a"], reconciler.settings), NS)
    result = reconciler.reconcile_once()
    assert [a.kind for a in result.actions] == ["create"]
    assert api.count("POST", "pods") == 1  # ours, refused with 409
    assert len(api.list("pods", NS)) == 1
    assert reconciler.failed_calls == 0
    assert registry.get_sample_value("partition_reconcile_errors_total") == 0


def test_server_errors_are_counted_and_retried(api: FakeKubernetes, controller: Start) -> None:
    api.put("nodes", node("a"))
    api.fail("GET", "nodes", 500)
    api.fail("POST", "pods", 500)
    api.fail("PUT", "configmaps", 500)
    running = controller()
    wait_until(lambda: "a" in workers(api), what="worker created after a 500")
    wait_until(lambda: [w["node"] for w in published(api)] == ["a"], what="ConfigMap after a 500")
    assert running.metric("partition_reconcile_errors_total") >= 3
    assert api.count("POST", "pods") == 2


def test_expired_watch_is_followed_by_a_relist(api: FakeKubernetes, controller: Start) -> None:
    api.put("nodes", node("a"))
    running = controller()
    wait_until(lambda: "a" in workers(api), what="worker on a")
    lists = api.count("GET", "nodes")
    api.expire_watches()
    wait_until(lambda: api.count("GET", "nodes") > lists, what="relist after 410")
    api.put("nodes", node("b"))
    wait_until(lambda: set(workers(api)) == {"a", "b"}, what="worker on b after the relist")
    assert running.metric("partition_reconcile_errors_total") == 0


def test_one_node_change_costs_calls_for_that_node_only(
        api: FakeKubernetes, controller: Start) -> None:
    for i in range(40):
        api.put("nodes", node(f"n{i:02d}"))
    running = controller(events=False)
    wait_until(lambda: len(workers(api)) == 40, what="40 workers")
    wait_until(lambda: len(published(api)) == 40 and all(w["ready"] for w in published(api)),
               what="partition published")
    after_next_pass(running)
    calls = {(m, r): api.count(m, r) for m, r in (("POST", "pods"), ("DELETE", "pods"),
                                             ("PUT", "configmaps"), ("GET", "nodes"))}
    api.put("nodes", node("n07", unschedulable=True))
    wait_until(lambda: "n07" not in workers(api), what="n07 worker deleted")
    wait_until(lambda: len(published(api)) == 39, what="partition updated")
    after_next_pass(running)
    delta = {k: api.count(*k) - v for k, v in calls.items()}
    assert delta == {("POST", "pods"): 0, ("DELETE", "pods"): 1, ("PUT", "configmaps"): 1,
                     ("GET", "nodes"): 0}


def test_foreign_pods_are_never_touched(api: FakeKubernetes, controller: Start) -> None:
    api.put("nodes", node("a"))
    api.create("pods", {"metadata": {"name": "bystander", "labels": {PARTITION_LABEL: "other"},
                                     "annotations": {NODE_ANNOTATION: "a"}},
                        "spec": {"containers": [{"name": "c", "image": "x"}]}}, NS)
    running = controller()
    wait_until(lambda: "partition-worker-a" in {p["metadata"]["name"] for p in api.list("pods", NS)},
               what="worker on a")
    after_next_pass(running)
    assert api.count("DELETE", "pods") == 0


def test_partition_too_big_for_a_configmap_is_an_error_not_a_truncation(
        api: FakeKubernetes, controller: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "CONFIGMAP_MAX_BYTES", 100)
    api.put("nodes", node("a"))
    running = controller()
    wait_until(lambda: "a" in workers(api), what="worker on a")
    wait_until(lambda: running.metric("partition_reconcile_errors_total") >= 1, what="error")
    assert api.get("configmaps", "partition", NS) is None
