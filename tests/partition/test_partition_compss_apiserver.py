"""The controller publishing for COMPSs, against a real kube-apiserver (etcd + apiserver, no kubelet).

Nodes come from the `cluster` fixture (tests/partition/conftest.py: named and labelled after the
test's namespace, selected by the controller, deleted afterwards). Without a kubelet the worker
pods never run: the tests mark them Running and Ready as a kubelet would (`set_pod_running`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from extender.partition import reconcile
from extender.partition.compss import CompssDocumentError, compss_files, files_digest, validate_files
from extender.partition.membership import FILES_HASH_ANNOTATION
from extender.partition.plan import NODE_ANNOTATION, PARTITION_LABEL, PartitionEntry
from tests.controlplane import set_pod_running, wait_for
from tests.partition.agentserver import Agent
from tests.partition.conftest import TEST_LABEL, Running, make_settings
from tests.partition.test_partition_compss import schema_errors

GIB = 2**30


@pytest.fixture
def start(client: ApiClient, k8s_namespace: str) -> Iterator[Callable[..., Running]]:
    """Start the controller on this test's namespace and nodes; stopped at teardown."""
    started: list[Running] = []

    def run(**changes: Any) -> Running:
        settings = make_settings(namespace=k8s_namespace, resync_interval_s=3.0,
                                 eligibility={"node_selector": {TEST_LABEL: k8s_namespace}}, **changes)
        running = Running(settings, client).start()
        started.append(running)
        return running

    yield run
    for running in started:
        running.halt()


def workers(core: CoreV1Api, ns: str) -> dict[str, Any]:
    """Live worker pods by node."""
    pods = core.list_namespaced_pod(ns, label_selector=f"{PARTITION_LABEL}=default").items
    return {p.metadata.annotations[NODE_ANNOTATION]: p for p in pods if not p.metadata.deletion_timestamp}


def mark_ready(core: CoreV1Api, ns: str, nodes: list[str]) -> dict[str, Any]:
    def created() -> dict[str, Any] | None:
        found = workers(core, ns)
        return found if set(nodes) <= set(found) else None

    pods = wait_for(created, timeout_s=20, what=f"workers on {nodes}")
    for node in nodes:
        set_pod_running(core, pods[node].metadata.name, ns)
    return pods


def published(core: CoreV1Api, ns: str) -> dict[str, str]:
    try:
        return core.read_namespaced_config_map("partition", ns).data or {}
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise


def published_nodes(core: CoreV1Api, ns: str, count: int) -> dict[str, str]:
    """Wait until resources.xml lists `count` ComputeNodes; returns the ConfigMap data."""
    def ready() -> dict[str, str] | None:
        data = published(core, ns)
        xml = data.get("resources.xml")
        return data if xml and len(ET.fromstring(xml).findall("ComputeNode")) == count else None

    return wait_for(ready, timeout_s=20, what=f"{count} ComputeNodes published")


def create_master(apps: AppsV1Api, ns: str) -> None:
    """A stand-in COMPSs master Deployment (no controller manager: it never gets pods)."""
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "compss-master"},
        "spec": {"selector": {"matchLabels": {"app": "compss-master"}},
                 "template": {"metadata": {"labels": {"app": "compss-master"}},
                              "spec": {"containers": [{"name": "master", "image": "compss/compss:3.3"}]}}}})


def shares(resources: str) -> dict[str, tuple[str | None, str | None, str | None]]:
    """ComputeNode -> (CPU units, GPU units, memory GB)."""
    return {n.get("Name", ""): (n.findtext("Processor[@Name='MainProcessor']/ComputingUnits"),
                                n.findtext("Processor[@Name='GPU']/ComputingUnits"),
                                n.findtext("Memory/Size"))
            for n in ET.fromstring(resources).iter("ComputeNode")}


def test_controller_publishes_valid_compss_files_listing_exactly_the_ready_workers_with_their_shares(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running]) -> None:
    core, ns = CoreV1Api(client), k8s_namespace
    small = cluster("small", cpu="4", memory="16Gi")
    gpu = cluster("gpu", cpu="8", memory="32Gi", gpus=2)
    big = cluster("big", cpu="32", memory="128Gi", gpus=1)
    running = start()
    pods = mark_ready(core, ns, [small, gpu])  # big's worker exists but is not ready
    data = published_nodes(core, ns, 2)
    assert schema_errors(data["resources.xml"], "resources_schema.xsd") == []
    assert schema_errors(data["project.xml"], "project_schema.xsd") == []
    validate_files(data["resources.xml"], data["project.xml"])
    name = {node: f"{pods[node].metadata.name}.partition-workers.{ns}.svc" for node in (small, gpu)}
    # 0.8 of the allocatable: 3.2 cores -> 3, 12.8 GiB; 6.4 cores -> 6, 2 GPUs, 25.6 GiB.
    assert shares(data["resources.xml"]) == {name[small]: ("3", None, "12.800"),
                                             name[gpu]: ("6", "2", "25.600")}
    in_project = {n.get("Name") for n in ET.fromstring(data["project.xml"]).iter("ComputeNode")}
    assert in_project == set(name.values())
    assert "resources.json" in data and "partition.yaml" in data
    # The published text is what the pure generator makes of the published entries.
    entries = [PartitionEntry(node, pods[node].metadata.name, "10.244.0.10", millis, mem, gpus, True)
               for node, millis, mem, gpus in ((small, 3200, int(16 * GIB * 0.8), 0),
                                                (gpu, 6400, int(32 * GIB * 0.8), 2))]
    assert data["resources.xml"] == compss_files(entries, running.reconciler.settings).resources

    # The worker pods carry the DNS name pieces, and the headless Service selects them.
    pod = core.read_namespaced_pod(pods[gpu].metadata.name, ns)
    assert (pod.spec.hostname, pod.spec.subdomain) == (pods[gpu].metadata.name, "partition-workers")
    service = core.read_namespaced_service("partition-workers", ns)
    assert service.spec.cluster_ip == "None"
    assert service.spec.selector == {PARTITION_LABEL: "default"}
    assert service.spec.publish_not_ready_addresses is True
    assert [(p.name, p.port) for p in service.spec.ports] == [("nio", 43001)]

    mark_ready(core, ns, [big])
    data = published_nodes(core, ns, 3)
    validate_files(data["resources.xml"], data["project.xml"])
    big_name = f"{workers(core, ns)[big].metadata.name}.partition-workers.{ns}.svc"
    assert shares(data["resources.xml"])[big_name] == ("25", "1", "102.400")


def test_cordoning_a_node_removes_exactly_its_compute_node_and_rolls_the_master(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running]) -> None:
    core, apps, ns = CoreV1Api(client), AppsV1Api(client), k8s_namespace
    create_master(apps, ns)
    nodes = [cluster(s) for s in ("a", "b", "c")]
    start(compss={"membership": "roll"})
    pods = mark_ready(core, ns, nodes)
    before = published_nodes(core, ns, 3)

    def master_hash() -> str | None:
        template = apps.read_namespaced_deployment("compss-master", ns).spec.template
        return (template.metadata.annotations or {}).get(FILES_HASH_ANNOTATION)

    first = wait_for(master_hash, timeout_s=20, what="the master's files hash")
    core.patch_node(nodes[1], {"spec": {"unschedulable": True}})
    after = published_nodes(core, ns, 2)
    old = {n.get("Name"): ET.tostring(n) for n in ET.fromstring(before["resources.xml"]).iter("ComputeNode")}
    new = {n.get("Name"): ET.tostring(n) for n in ET.fromstring(after["resources.xml"]).iter("ComputeNode")}
    gone = set(old) - set(new)
    assert gone == {f"{pods[nodes[1]].metadata.name}.partition-workers.{ns}.svc"}
    assert {k: old[k] for k in new} == new
    validate_files(after["resources.xml"], after["project.xml"])
    wanted = files_digest(after["resources.xml"], after["project.xml"])
    wait_for(lambda: master_hash() == wanted or None, timeout_s=20, what="the master rolled to the new files")
    assert wanted != first


def test_a_deleted_headless_service_is_recreated(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running]) -> None:
    core, ns = CoreV1Api(client), k8s_namespace
    cluster("a")
    start()
    wait_for(lambda: published(core, ns) or None, timeout_s=20, what="the partition published")
    core.delete_namespaced_service("partition-workers", ns)

    def recreated() -> bool:
        try:
            core.read_namespaced_service("partition-workers", ns)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(recreated, timeout_s=20, what="the Service recreated within a resync")


def test_a_missing_master_deployment_is_logged_and_retried_without_stopping_the_controller(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running]) -> None:
    core, ns = CoreV1Api(client), k8s_namespace
    node = cluster("a")
    running = start(compss={"membership": "roll", "master_deployment": "no-such-master"})
    mark_ready(core, ns, [node])
    published_nodes(core, ns, 1)
    wait_for(lambda: running.metric("partition_reconcile_errors_total") >= 2 or None, timeout_s=20,
             what="the failed patch retried")
    assert running.thread.is_alive()


def test_nothing_is_rewritten_or_rolled_while_the_compss_content_stays_the_same(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running]) -> None:
    core, apps, ns = CoreV1Api(client), AppsV1Api(client), k8s_namespace
    create_master(apps, ns)
    nodes = [cluster(s) for s in ("a", "b")]
    running = start(compss={"membership": "roll"})
    mark_ready(core, ns, nodes)
    data = published_nodes(core, ns, 2)

    digest = files_digest(data["resources.xml"], data["project.xml"])

    def generation() -> int | None:
        deployment = apps.read_namespaced_deployment("compss-master", ns)
        annotations = deployment.spec.template.metadata.annotations or {}
        return deployment.metadata.generation if annotations.get(FILES_HASH_ANNOTATION) == digest else None

    rolled = wait_for(generation, timeout_s=20, what="the master rolled to the published files")
    version = core.read_namespaced_config_map("partition", ns).metadata.resource_version

    def passes_after(action: Callable[[], object]) -> None:
        seen = running.metric("partition_reconcile_duration_seconds_count")
        action()
        wait_for(lambda: running.metric("partition_reconcile_duration_seconds_count") >= seen + 2 or None,
                 timeout_s=20, what="two more reconcile passes")

    # A node change that moves no worker: a new pass, the same partition.
    passes_after(lambda: core.patch_node(nodes[0], {"metadata": {"labels": {"touched": "yes"}}}))
    assert core.read_namespaced_config_map("partition", ns).metadata.resource_version == version
    # A worker that is not ready yet: resources.json changes, the COMPSs files do not.
    third = cluster("c")
    wait_for(lambda: third in workers(core, ns) or None, timeout_s=20, what="c's worker")
    passes_after(lambda: running.reconciler.changed.set())
    now = published(core, ns)
    assert now["resources.json"] != data["resources.json"]
    assert (now["resources.xml"], now["project.xml"]) == (data["resources.xml"], data["project.xml"])
    assert generation() == rolled, "the master is not rolled for a partition COMPSs does not see"


def test_agents_membership_tells_a_live_agent_about_joins_and_cordons(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running], agent: tuple[Agent, str]) -> None:
    core, ns = CoreV1Api(client), k8s_namespace
    state, url = agent
    nodes = [cluster("a", cpu="4"), cluster("b", cpu="8", gpus=1)]
    start(compss={"membership": "agents", "agents": {"url": url, "timeout_s": 2.0}})
    pods = mark_ready(core, ns, nodes)
    names = {node: f"{pods[node].metadata.name}.partition-workers.{ns}.svc" for node in nodes}
    wait_for(lambda: set(state.pool) == set(names.values()) or None, timeout_s=20,
             what="both workers added to the agent")
    assert state.pool[names[nodes[1]]][:2] == (6, 1)
    core.patch_node(nodes[0], {"spec": {"unschedulable": True}})
    wait_for(lambda: set(state.pool) == {names[nodes[1]]} or None, timeout_s=20,
             what="the cordoned node's worker lost")
    assert ("lostNode", names[nodes[0]]) in state.calls


def test_files_that_do_not_fit_beside_resources_json_are_not_published_and_say_so(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    core, ns = CoreV1Api(client), k8s_namespace
    # Two workers' XML (about 2 KB) do not fit in 1500 bytes; resources.json (about 300) does.
    monkeypatch.setattr(reconcile, "CONFIGMAP_MAX_BYTES", 1500)
    nodes = [cluster("a"), cluster("b")]
    running = start()
    mark_ready(core, ns, nodes)
    data = wait_for(lambda: d if '"ready":true' in (d := published(core, ns)).get("resources.json", "")
                    and d["resources.json"].count('"ready":true') == 2 else None,
                    timeout_s=20, what="both ready workers in resources.json")
    assert "resources.xml" not in data and "project.xml" not in data
    assert running.metric("partition_reconcile_errors_total") >= 1
    assert any("do not fit in ConfigMap" in r.getMessage() for r in caplog.records)


def test_files_breaking_the_runtime_rules_are_not_published_and_the_last_good_ones_stay(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running], monkeypatch: pytest.MonkeyPatch) -> None:
    core, ns = CoreV1Api(client), k8s_namespace
    nodes = [cluster("a"), cluster("b")]
    running = start()
    mark_ready(core, ns, nodes[:1])
    good = published_nodes(core, ns, 1)
    broken = {"on": True}
    real = reconcile.compss_files

    def failing(*args: Any, **kwargs: Any) -> Any:
        if broken["on"]:
            raise CompssDocumentError(["resources.xml: ComputeNode x: no Adaptors"])
        return real(*args, **kwargs)

    monkeypatch.setattr(reconcile, "compss_files", failing)
    errors = running.metric("partition_reconcile_errors_total")
    mark_ready(core, ns, nodes[1:])
    wait_for(lambda: published(core, ns)["resources.json"].count('"ready":true') == 2 or None,
             timeout_s=20, what="the second worker in resources.json")
    now = published(core, ns)
    assert (now["resources.xml"], now["project.xml"]) == (good["resources.xml"], good["project.xml"])
    assert running.metric("partition_reconcile_errors_total") > errors
    # Once the files pass again, the next change of the partition publishes them.
    broken["on"] = False
    mark_ready(core, ns, [cluster("c")])
    published_nodes(core, ns, 3)


def test_a_changed_headless_service_is_put_back_and_a_non_headless_one_is_reported(
        client: ApiClient, k8s_namespace: str, cluster: Callable[..., str],
        start: Callable[..., Running]) -> None:
    core, ns = CoreV1Api(client), k8s_namespace
    core.create_namespaced_service(ns, {
        "metadata": {"name": "partition-workers"},
        "spec": {"clusterIP": "None", "selector": {"app": "someone-else"},
                 "ports": [{"name": "other", "port": 8080}]}})
    cluster("a")
    start()

    def repaired() -> bool:
        spec = core.read_namespaced_service("partition-workers", ns).spec
        return spec.selector == {PARTITION_LABEL: "default"} and \
            [(p.name, p.port) for p in spec.ports] == [("nio", 43001)]

    wait_for(repaired, timeout_s=20, what="the Service's selector and port put back")
    other = f"{ns}-other"
    core.create_namespaced_service(ns, {
        "metadata": {"name": "not-headless"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}})
    running = start(compss={"service": "not-headless"}, partition=other)
    wait_for(lambda: running.metric("partition_reconcile_errors_total") >= 1 or None, timeout_s=20,
             what="the non-headless Service reported")
    assert core.read_namespaced_service("not-headless", ns).spec.cluster_ip != "None"
    assert running.thread.is_alive()
