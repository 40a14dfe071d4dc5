"""The pure planning function: observed nodes and workers -> actions."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest
import yaml

from extender.partition.plan import (
    GPU_RESOURCE,
    HASH_ANNOTATION,
    NODE_ANNOTATION,
    PARTITION_LABEL,
    ObservedNode,
    ObservedWorker,
    PartitionEntry,
    Resources,
    backoff_delay,
    partition_document,
    partition_entries,
    plan,
    render_worker,
    worker_name,
)
from extender.partition.reconcile import CONFIGMAP_MAX_BYTES
from extender.partition.settings import PartitionSettings
from tests.partition.conftest import make_settings

NOW = 1_800_000_000.0
GIB = 2**30


def nodes(*views: ObservedNode) -> dict[str, ObservedNode]:
    return {v.name: v for v in views}


def node(name: str, **kw: object) -> ObservedNode:
    kw.setdefault("allocatable", Resources(4000, 16 * GIB, 0))
    return ObservedNode(name=name, **kw)  # type: ignore[arg-type]


def current(view: ObservedNode, settings: PartitionSettings, **kw: object) -> ObservedWorker:
    """The worker the controller would have created for `view`, as observed."""
    meta = render_worker(view, settings)["metadata"]
    kw.setdefault("phase", "Running")
    kw.setdefault("ready", True)
    return ObservedWorker(name=meta["name"], node=view.name,
                      spec_hash=meta["annotations"][HASH_ANNOTATION], **kw)  # type: ignore[arg-type]


@pytest.fixture
def settings() -> PartitionSettings:
    return make_settings()


def kinds(result: object) -> list[tuple[str, str]]:
    return [(a.kind, a.node) for a in result.actions]  # type: ignore[attr-defined]


def test_plan_creates_one_worker_per_eligible_node(settings: PartitionSettings) -> None:
    result = plan(nodes(node("a"), node("b")), [], settings, now=NOW)
    assert kinds(result) == [("create", "a"), ("create", "b")]
    assert result.eligible == {"a", "b"}


def test_plan_is_empty_when_every_node_has_its_current_worker(settings: PartitionSettings) -> None:
    a, b = node("a"), node("b")
    result = plan(nodes(a, b), [current(a, settings), current(b, settings)], settings, now=NOW)
    assert result.actions == () and result.held == ()


@pytest.mark.parametrize(("view", "reason"), [
    (node("cp", labels={"node-role.kubernetes.io/control-plane": ""}), "control-plane node"),
    (node("c", unschedulable=True), "cordoned"),
    (node("t", taints=(("maintenance", "NoSchedule"),)), "tainted maintenance:NoSchedule"),
    (node("nr", ready=False, ready_since=NOW - 120), "NotReady for 120s"),
    (node("nr2", ready=False, ready_since=None), "NotReady for 0s"),
])
def test_plan_excludes_ineligible_nodes_with_a_reason(view: ObservedNode, reason: str) -> None:
    settings = make_settings(eligibility={"exclude_taints": ("maintenance",),
                                          "not_ready_grace_s": 60.0})
    if view.name == "nr2":
        settings = make_settings(eligibility={"not_ready_grace_s": 0.0})
    result = plan(nodes(view), [], settings, now=NOW)
    assert result.actions == ()
    assert result.excluded == {view.name: reason}


def test_plan_ignores_prefer_no_schedule_taints() -> None:
    settings = make_settings(eligibility={"exclude_taints": ("maintenance",)})
    result = plan(nodes(node("t", taints=(("maintenance", "PreferNoSchedule"),))), [], settings,
                  now=NOW)
    assert kinds(result) == [("create", "t")]


def test_plan_requires_every_node_selector_label() -> None:
    settings = make_settings(eligibility={"node_selector": {"pool": "hpc"}})
    result = plan(nodes(node("in", labels={"pool": "hpc"}), node("out", labels={"pool": "web"})),
                  [], settings, now=NOW)
    assert kinds(result) == [("create", "in")]
    assert result.excluded == {"out": "label pool=hpc missing"}


def test_not_ready_node_keeps_its_worker_during_grace_and_plan_says_when_to_look_again() -> None:
    settings = make_settings(eligibility={"not_ready_grace_s": 60.0})
    view = node("a", ready=False, ready_since=NOW - 10)
    result = plan(nodes(view), [current(view, settings)], settings, now=NOW)
    assert result.actions == ()
    assert result.wake_at == NOW + 50
    later = plan(nodes(view), [current(view, settings)], settings, now=NOW + 50)
    assert [(a.kind, a.reason) for a in later.actions] == [("delete", "NotReady for 60s")]


def test_plan_deletes_worker_of_removed_cordoned_node(settings: PartitionSettings) -> None:
    a, b = node("a"), node("b")
    gone = current(b, settings)
    result = plan(nodes(dataclasses.replace(a, unschedulable=True)), [current(a, settings), gone],
                  settings, now=NOW)
    assert sorted((x.kind, x.node, x.reason) for x in result.actions) == [
        ("delete", "a", "cordoned"), ("delete", "b", "node removed")]


def test_plan_waits_for_a_terminating_worker_before_recreating(settings: PartitionSettings) -> None:
    a = node("a")
    result = plan(nodes(a), [current(a, settings, deleting=True, ready=False)], settings, now=NOW)
    assert result.actions == ()


@pytest.mark.parametrize("phase", ["Failed", "Succeeded"])
def test_plan_deletes_a_finished_worker(settings: PartitionSettings, phase: str) -> None:
    a = node("a")
    result = plan(nodes(a), [current(a, settings, phase=phase, ready=False)], settings, now=NOW)
    assert [(x.kind, x.reason) for x in result.actions] == [("delete", f"worker {phase}")]


def test_plan_holds_a_recreate_until_its_backoff_ends(settings: PartitionSettings) -> None:
    result = plan(nodes(node("a")), [], settings, now=NOW, not_before={"a": NOW + 5})
    assert result.actions == ()
    assert [(x.kind, x.node) for x in result.held] == [("create", "a")]
    assert result.wake_at == NOW + 5
    assert kinds(plan(nodes(node("a")), [], settings, now=NOW + 5, not_before={"a": NOW + 5})) == [
        ("create", "a")]


def test_backoff_doubles_per_failure_up_to_the_maximum() -> None:
    rollout = make_settings(rollout={"backoff_initial_s": 10.0, "backoff_max_s": 60.0}).rollout
    assert [backoff_delay(n, rollout) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_allocatable_change_replaces_only_that_nodes_worker(settings: PartitionSettings) -> None:
    a, b = node("a"), node("b")
    workers = [current(a, settings), current(b, settings)]
    grown = dataclasses.replace(b, allocatable=Resources(8000, 32 * GIB, 1))
    result = plan(nodes(a, grown), workers, settings, now=NOW)
    assert kinds(result) == [("replace", "b")]


def test_config_change_replaces_workers_one_at_a_time_under_max_unavailable() -> None:
    old, new = make_settings(), make_settings(sizing={"cpu_fraction": 0.5})
    views = [node(n) for n in "abcd"]
    workers = [current(v, old) for v in views]
    result = plan(nodes(*views), workers, new, now=NOW)
    assert kinds(result) == [("replace", "a")]
    assert [x.node for x in result.held] == ["b", "c", "d"]
    # While a's replacement is not ready yet, nothing else is taken down.
    workers[0] = current(views[0], new, ready=False, phase="Pending")
    assert plan(nodes(*views), workers, new, now=NOW).actions == ()
    wider = msgspec.structs.replace(new, rollout=msgspec.structs.replace(new.rollout,
                                                                          max_unavailable=3))
    assert kinds(plan(nodes(*views), workers, wider, now=NOW)) == [("replace", "b"), ("replace", "c")]


def test_stale_worker_that_is_not_ready_is_replaced_without_budget() -> None:
    old, new = make_settings(), make_settings(sizing={"cpu_fraction": 0.5})
    a, b = node("a"), node("b")
    workers = [current(a, old, ready=False, phase="Pending"), current(b, old, ready=False)]
    assert kinds(plan(nodes(a, b), workers, new, now=NOW)) == [("replace", "a"), ("replace", "b")]


def test_plan_deletes_a_labelled_pod_not_named_after_its_node(settings: PartitionSettings) -> None:
    a = node("a")
    stray = dataclasses.replace(current(a, settings), name="someone-else")
    result = plan(nodes(a), [current(a, settings), stray], settings, now=NOW)
    assert [(x.kind, x.pod) for x in result.actions] == [("delete", "someone-else")]


def test_renamed_worker_is_replaced_only_after_the_old_one_is_gone() -> None:
    old, new = make_settings(), make_settings(name_prefix="pw")
    a = node("a")
    result = plan(nodes(a), [current(a, old)], new, now=NOW)
    assert [(x.kind, x.pod) for x in result.actions] == [("delete", "partition-worker-a")]
    terminating = current(a, old, deleting=True, ready=False)
    assert plan(nodes(a), [terminating], new, now=NOW).actions == ()
    assert [(x.kind, x.pod) for x in plan(nodes(a), [], new, now=NOW).actions] == [
        ("create", "pw-a")]


def test_worker_names_are_stable_and_short() -> None:
    assert worker_name("node-1", "pw") == "pw-node-1"
    long = "n" * 80 + ".example.org"
    assert worker_name(long, "pw") == worker_name(long, "pw")
    assert len(worker_name(long, "pw")) <= 63
    assert worker_name(long, "pw") != worker_name(long + "x", "pw")


def test_rendered_worker_is_pinned_sized_labelled_and_annotated() -> None:
    settings = make_settings(sizing={"cpu_fraction": 0.5, "memory_fraction": 0.25,
                                     "gpu_fraction": 0.5})
    manifest = render_worker(node("g1", allocatable=Resources(8000, 64 * GIB, 3)), settings)
    assert manifest["metadata"]["name"] == "partition-worker-g1"
    assert manifest["metadata"]["labels"][PARTITION_LABEL] == "default"
    assert manifest["metadata"]["annotations"][NODE_ANNOTATION] == "g1"
    terms = manifest["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                       "values": ["g1"]}]}]
    worker = next(c for c in manifest["spec"]["containers"] if c["name"] == "worker")
    expected = {"cpu": "4000m", "memory": str(16 * GIB), GPU_RESOURCE: "1"}
    assert worker["resources"] == {"requests": expected, "limits": expected}
    sidecar = next(c for c in manifest["spec"]["containers"] if c["name"] != "worker")
    assert sidecar["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}


def test_rendering_does_not_mutate_the_template(settings: PartitionSettings) -> None:
    before = msgspec.json.encode(settings.pod_template)
    render_worker(node("a"), settings)
    assert msgspec.json.encode(settings.pod_template) == before


def test_rendered_worker_is_a_valid_pod(settings: PartitionSettings) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    manifest = render_worker(node("a", allocatable=Resources(4000, 16 * GIB, 2)), settings)
    kubernetes_validate.validate(manifest, "1.33", strict=True)


def test_partition_document_lists_live_workers_with_their_share(
        settings: PartitionSettings) -> None:
    a, b = node("a"), node("b", allocatable=Resources(2000, 8 * GIB, 1))
    workers = [current(a, settings, ip="10.0.0.1"), current(b, settings, ready=False),
               current(node("gone"), settings)]
    entries = partition_entries(nodes(a, b), workers, settings)
    assert [(e.node, e.ip, e.cpu_millis, e.gpus, e.ready) for e in entries] == [
        ("a", "10.0.0.1", 3200, 0, True), ("b", None, 1600, 1, False)]
    data = partition_document(entries)
    assert set(data) == {"partition.yaml", "resources.json"}
    as_json = msgspec.json.decode(data["resources.json"])
    assert as_json["workers"] == [
        {"node": "a", "pod": "partition-worker-a", "ip": "10.0.0.1", "cpus": 3.2,
         "memory_bytes": int(16 * GIB * 0.8), "gpus": 0, "ready": True},
        {"node": "b", "pod": "partition-worker-b", "ip": None, "cpus": 1.6,
         "memory_bytes": int(8 * GIB * 0.8), "gpus": 1, "ready": False}]
    assert yaml.safe_load(data["partition.yaml"]) == as_json


def test_empty_partition_is_still_a_valid_document() -> None:
    data = partition_document([])
    assert yaml.safe_load(data["partition.yaml"]) == {"workers": []}
    assert msgspec.json.decode(data["resources.json"]) == {"workers": []}


def test_partition_too_big_to_store_twice_keeps_resources_json_complete() -> None:
    entries = [PartitionEntry(node=f"node-{i:05d}", pod=f"partition-worker-node-{i:05d}",
                              ip=f"10.0.{i // 250}.{i % 250}", cpu_millis=12800,
                              memory_bytes=54975581388, gpus=4, ready=True) for i in range(5000)]
    data = partition_document(entries, max_bytes=CONFIGMAP_MAX_BYTES)
    assert sum(len(v.encode()) for v in data.values()) < CONFIGMAP_MAX_BYTES
    assert len(msgspec.json.decode(data["resources.json"])["workers"]) == 5000
    assert yaml.safe_load(data["partition.yaml"]) == {"workers_file": "resources.json",
                                                      "worker_count": 5000}
    small = partition_document(entries[:10], max_bytes=CONFIGMAP_MAX_BYTES)
    assert len(yaml.safe_load(small["partition.yaml"])["workers"]) == 10


def test_plan_for_many_nodes_touches_only_the_changed_node(settings: PartitionSettings) -> None:
    views = [node(f"n{i}") for i in range(300)]
    workers = [current(v, settings) for v in views]
    views[123] = dataclasses.replace(views[123], unschedulable=True)
    assert kinds(plan(nodes(*views), workers, settings, now=NOW)) == [("delete", "n123")]
