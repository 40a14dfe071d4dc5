"""The pod informer against the real kube-apiserver (tests/controlplane.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, CoreV1Api, RbacAuthorizationV1Api, V1Binding, V1ObjectMeta
from kubernetes.client import V1ObjectReference as Ref

from extender.errors import ConfigError
from extender.informer import BoundPod, PodInformer, api_client_factory
from extender.settings import InformerSettings, load_settings
from tests.controlplane import ControlPlane, ExtraApiServer, free_port, wait_for
from tests.support import CONFIG, REPO

FAST = {"backoff_min_s": 0.05, "backoff_max_s": 0.2, "request_timeout_s": 5.0}


def informer_settings(**keys: Any) -> InformerSettings:
    """The shipped informer settings, enabled, with `keys` over them (validated as the server does)."""
    overrides = {"informer": {"enabled": True, **FAST, **keys}}
    return load_settings(CONFIG, environ={}, overrides=overrides).informer


@pytest.fixture
def start_informer(control_plane: ControlPlane) -> Iterator[Callable[..., PodInformer]]:
    started: list[PodInformer] = []

    def start(settings: InformerSettings, factory: Callable[[], ApiClient] | None = None) -> PodInformer:
        informer = PodInformer(settings, factory or control_plane.api_client).start()
        started.append(informer)
        return informer

    yield start
    for informer in started:
        assert informer.stop(), "the informer thread did not end"


def pod(name: str, *, node: str | None = None, containers: list[dict[str, Any]] | None = None,
        owner: Any = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": owner.metadata.name,
                                    "uid": owner.metadata.uid, "controller": True}]
    body: dict[str, Any] = {"metadata": meta, "spec": {
        "containers": containers or [{"name": "c", "image": "busybox"}], **spec}}
    if node:
        body["spec"]["nodeName"] = node
    return body


def bind(core: CoreV1Api, namespace: str, name: str, node: str) -> None:
    """Bind as kube-scheduler's DefaultBinder does (the client cannot decode the answer)."""
    core.create_namespaced_binding(namespace, V1Binding(metadata=V1ObjectMeta(name=name),
                                                        target=Ref(kind="Node", name=node)),
                                   _preload_content=False)


def synced(informer: PodInformer) -> PodInformer:
    assert informer.wait_synced(30), informer.status()
    return informer


def test_initial_list_sees_bound_pods_with_demand_and_owner(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer]) -> None:
    client = control_plane.api_client()
    core = CoreV1Api(client)
    from kubernetes.client import BatchV1Api

    job = BatchV1Api(client).create_namespaced_job(k8s_namespace, {  # suspended: it makes no pods itself
        "metadata": {"name": "train"}, "spec": {"suspend": True, "template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}})
    made = core.create_namespaced_pod(k8s_namespace, pod("worker-0", node="node-a", owner=job, containers=[
        {"name": "main", "image": "x", "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"},
                                                     "limits": {"nvidia.com/gpu": "2"}}},
        {"name": "side", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}],
        initContainers=[{"name": "init", "image": "x", "resources": {"requests": {"cpu": "4"}}}]))
    plain = core.create_namespaced_pod(k8s_namespace, pod("plain", node="node-b"))
    pending = core.create_namespaced_pod(k8s_namespace, pod("pending"))

    informer = synced(start_informer(informer_settings(namespace=k8s_namespace)))

    worker = informer.get(made.metadata.uid)
    assert worker == BoundPod(
        uid=made.metadata.uid, namespace=k8s_namespace, name="worker-0", node="node-a",
        cpu_cores=4.0,  # the init container's 4 cores exceed the app containers' 1.75
        memory_bytes=1.25 * 2**30, gpus=2, owner_kind="Job", owner_name="train",
        bound_at=worker.bound_at if worker else 0.0)
    # Created with spec.nodeName: no PodScheduled condition, bound when created.
    assert worker is not None and worker.bound_at == made.metadata.creation_timestamp.timestamp()
    other = informer.get(plain.metadata.uid)
    assert other is not None and (other.cpu_cores, other.memory_bytes, other.gpus) == (0.0, 0.0, 0)
    assert (other.owner_kind, other.owner_name) == (None, None)
    assert informer.get(pending.metadata.uid) is None
    status = informer.status()
    assert (status.up, status.synced, status.pods, status.relists) == (True, True, 2, 0)
    assert status.last_error is None


def test_a_pod_bound_later_appears_with_its_scheduled_time(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer]) -> None:
    core = CoreV1Api(control_plane.api_client())
    informer = synced(start_informer(informer_settings(namespace=k8s_namespace)))
    created = core.create_namespaced_pod(k8s_namespace, pod("late", containers=[
        {"name": "c", "image": "x", "resources": {"requests": {"cpu": "2", "memory": "3Gi"}}}]))
    time.sleep(0.3)
    assert informer.get(created.metadata.uid) is None  # unbound pods are not sent (field selector)
    bind(core, k8s_namespace, "late", "node-c")

    seen = wait_for(lambda: informer.get(created.metadata.uid), timeout_s=10, what="the bound pod")
    condition = next(c for c in core.read_namespaced_pod("late", k8s_namespace).status.conditions
                     if c.type == "PodScheduled")
    assert condition.status == "True"
    assert seen.bound_at == condition.last_transition_time.timestamp()
    assert (seen.node, seen.cpu_cores, seen.memory_bytes) == ("node-c", 2.0, 3 * 2**30)
    assert informer.bound_since(seen.bound_at) == (seen,)
    assert informer.bound_since(seen.bound_at + 1) == ()
    assert informer.status().events >= 1


@pytest.mark.parametrize("field_selector", ["default", ""], ids=["server-filtered", "unfiltered"])
def test_deleted_finished_and_terminating_pods_leave(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer],
        field_selector: str) -> None:
    core = CoreV1Api(control_plane.api_client())
    uids = {name: core.create_namespaced_pod(k8s_namespace, pod(name, node="node-d")).metadata.uid
            for name in ("deleted", "succeeded", "failed", "terminating", "stays")}
    keys = {"namespace": k8s_namespace}
    if field_selector != "default":
        keys["field_selector"] = field_selector
    core.create_namespaced_pod(k8s_namespace, pod("pending"))  # seen when unfiltered, never kept
    informer = synced(start_informer(informer_settings(**keys)))
    assert informer.status().pods == 5

    core.delete_namespaced_pod("deleted", k8s_namespace, grace_period_seconds=0)
    core.patch_namespaced_pod_status("succeeded", k8s_namespace, {"status": {"phase": "Succeeded"}})
    core.patch_namespaced_pod_status("failed", k8s_namespace, {"status": {"phase": "Failed"}})
    core.delete_namespaced_pod("terminating", k8s_namespace, grace_period_seconds=300)  # no kubelet: stays

    wait_for(lambda: informer.status().pods == 1, timeout_s=10, what="four pods to leave the map")
    assert [p.uid for p in informer.bound_since(0)] == [uids["stays"]]
    assert core.read_namespaced_pod("terminating", k8s_namespace).metadata.deletion_timestamp is not None


def test_the_default_scope_is_every_namespace(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer]) -> None:
    core = CoreV1Api(control_plane.api_client())
    uid = core.create_namespaced_pod(k8s_namespace, pod("anywhere", node="node-e")).metadata.uid
    informer = synced(start_informer(informer_settings()))
    found = informer.get(uid)
    assert found is not None and found.namespace == k8s_namespace


def test_a_label_selector_narrows_the_scope(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer]) -> None:
    core = CoreV1Api(control_plane.api_client())
    ml = pod("ml", node="node-f")
    ml["metadata"]["labels"] = {"team": "ml"}
    wanted = core.create_namespaced_pod(k8s_namespace, ml).metadata.uid
    core.create_namespaced_pod(k8s_namespace, pod("web", node="node-f"))
    scope = informer_settings(namespace=k8s_namespace, label_selector="team in (ml)")
    informer = synced(start_informer(scope))
    assert [p.uid for p in informer.bound_since(0)] == [wanted]


def test_the_watch_survives_410_gone_by_relisting(
        control_plane: ControlPlane, etcd_apiserver: ExtraApiServer, k8s_namespace: str,
        start_informer: Callable[..., PodInformer]) -> None:
    core = CoreV1Api(control_plane.api_client())
    first = core.create_namespaced_pod(k8s_namespace, pod("before", node="node-g")).metadata.uid
    # Watches end every second, so the informer soon resumes from its (then compacted) resourceVersion.
    informer = synced(start_informer(informer_settings(namespace=k8s_namespace, watch_timeout_s=1),
                                     lambda: control_plane.api_client(server=etcd_apiserver)))
    for i in range(2):  # move etcd's revision past the informer's, then drop the history
        core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": f"bump-{i}"}})
    control_plane.compact_etcd()

    wait_for(lambda: informer.status().relists >= 1, timeout_s=15, what="a relist after 410 Gone")
    later = core.create_namespaced_pod(k8s_namespace, pod("after", node="node-g")).metadata.uid
    wait_for(lambda: informer.get(later), timeout_s=10, what="the pod created after the relist")
    status = informer.status()
    assert informer.get(first) is not None
    assert status.up and status.errors == 0  # a 410 is routine, not an error


def test_an_unreachable_api_server_is_reported_and_recovered_from(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer]) -> None:
    core = CoreV1Api(control_plane.api_client())
    uid = core.create_namespaced_pod(k8s_namespace, pod("waiting", node="node-h")).metadata.uid
    closed = f"https://127.0.0.1:{free_port()}"
    target = [closed]

    def factory() -> ApiClient:  # called again after every failure, as a rotated kubeconfig would be
        client = control_plane.api_client()
        client.configuration.host = target[0]
        return client

    informer = start_informer(informer_settings(namespace=k8s_namespace), factory)
    down = wait_for(lambda: informer.status() if informer.status().errors >= 2 else None, timeout_s=10,
                    what="failed attempts against a closed port")
    assert (down.up, down.synced, down.pods) == (False, False, 0)
    assert down.last_error is not None and "MaxRetryError" in down.last_error
    assert informer.bound_since(0) == ()

    target[0] = control_plane.url
    assert informer.wait_synced(10), informer.status()
    up = informer.status()
    assert up.up and informer.get(uid) is not None
    assert up.last_error == down.last_error  # kept for diagnosis


def test_the_kubeconfig_setting_is_used_and_a_missing_file_is_reported(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer],
        tmp_path: Path) -> None:
    core = CoreV1Api(control_plane.api_client())
    uid = core.create_namespaced_pod(k8s_namespace, pod("kubeconfig", node="node-j")).metadata.uid
    good = informer_settings(namespace=k8s_namespace, kubeconfig=str(control_plane.kubeconfig))
    assert synced(start_informer(good, api_client_factory(good))).get(uid) is not None

    missing = informer_settings(namespace=k8s_namespace, kubeconfig=str(tmp_path / "absent.kubeconfig"))
    informer = start_informer(missing, api_client_factory(missing))
    status = wait_for(lambda: informer.status() if informer.status().errors else None, timeout_s=10,
                      what="the missing kubeconfig")
    assert not status.up and status.last_error is not None
    assert "absent.kubeconfig" in status.last_error


def test_a_selector_the_api_server_rejects_is_reported(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer]) -> None:
    informer = start_informer(informer_settings(namespace=k8s_namespace, field_selector="spec.color=blue"))
    status = wait_for(lambda: informer.status() if informer.status().errors else None, timeout_s=10,
                      what="the rejected list")
    assert not status.up and not status.synced
    assert status.last_error is not None and status.last_error.startswith("API server answered 400")
    assert "spec.color" in status.last_error


def test_the_shipped_rbac_is_enough_and_its_absence_is_reported(
        control_plane: ControlPlane, k8s_namespace: str, start_informer: Callable[..., PodInformer]) -> None:
    core = CoreV1Api(control_plane.api_client())
    uid = core.create_namespaced_pod(k8s_namespace, pod("rbac", node="node-i")).metadata.uid
    informer = start_informer(informer_settings(), lambda: control_plane.api_client(control_plane.user_token))
    wait_for(lambda: informer.status().errors > 0, timeout_s=10, what="a forbidden list")
    assert (informer.status().last_error or "").startswith("API server answered 403")

    documents = list(yaml.safe_load_all((REPO / "manifests" / "base" / "extender.yaml").read_text()))
    role = next(d for d in documents if d and d["kind"] == "ClusterRole")
    name = f"{role['metadata']['name']}-{k8s_namespace}"
    rbac = RbacAuthorizationV1Api(control_plane.api_client())
    rbac.create_cluster_role({**role, "metadata": {"name": name}})
    rbac.create_cluster_role_binding({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": control_plane.user_name}]})
    try:
        assert informer.wait_synced(15), informer.status()
        assert informer.get(uid) is not None
    finally:
        informer.stop()
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


@pytest.mark.parametrize(("keys", "message"), [
    ({"backoff_min_s": 5, "backoff_max_s": 1}, "informer.backoff_max_s: expected >= backoff_min_s"),
    ({"backoff_min_s": 0}, "informer.backoff_min_s: expected a number > 0"),
    ({"watch_timeout_s": -1}, "informer.watch_timeout_s: expected a number > 0"),
    ({"resync_interval_s": -5}, "informer.resync_interval_s: expected >= 0"),
    ({"page_size": 0}, "informer.page_size: expected a number > 0"),
    ({"namespace": "Not_A_Namespace"}, "informer.namespace: 'Not_A_Namespace' is not a namespace name"),
    ({"field_selector": "spec.nodeName"}, "informer.field_selector: 'spec.nodeName' is not `field=value`"),
    ({"label_selector": "team in ml"}, "informer.label_selector: 'team in ml' is not a label selector term"),
    ({"label_selector": "a=b,,c=d"}, "informer.label_selector: '' is not a label selector term"),
    ({"watch_timout_s": 5}, "informer: Object contains unknown field `watch_timout_s`"),
    ({"enabled": "sometimes"}, "informer.enabled: Expected `bool`, got `str`"),
])
def test_bad_settings_are_clear_errors(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(CONFIG, environ={}, overrides={"informer": keys})
    assert str(caught.value).startswith(f"{CONFIG}: ")
    assert message in str(caught.value)


def test_environment_overrides_reach_the_informer_settings(tmp_path: Path) -> None:
    s = load_settings(CONFIG, environ={"EXTENDER_INFORMER__ENABLED": "true",
                                       "EXTENDER_INFORMER__NAMESPACE": "team-a"})
    assert s.informer.enabled and s.informer.namespace == "team-a"
    assert load_settings(CONFIG, environ={}).informer.enabled is False  # local runs need no cluster
