"""Who may do what: RBAC is least privilege, and the network admits only who needs each port."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from extender.partition.settings import load_partition_settings
from extender.settings import load_settings
from tests.deploy.conftest import (
    MANIFESTS,
    find,
    kubernetes_version,
    render,
    validate_object,
    write_config,
)

Grant = tuple[str, str, str, tuple[str, ...]]


def grants(role: dict[str, Any]) -> set[Grant]:
    """(apiGroup, resource, verb, resourceNames) for every combination a role allows; a
    non-resource URL as ("nonResourceURL", url, verb, ())."""
    return {(group, resource, verb, tuple(rule.get("resourceNames", ())))
            for rule in role["rules"] for group in rule.get("apiGroups", ())
            for resource in rule["resources"] for verb in rule["verbs"]} | {
        ("nonResourceURL", url, verb, ())
        for rule in role["rules"] for url in rule.get("nonResourceURLs", ()) for verb in rule["verbs"]}


def test_no_role_uses_wildcards(overlay: tuple[dict[str, Any], ...]) -> None:
    for role in (o for o in overlay if o["kind"] in ("Role", "ClusterRole")):
        for group, resource, verb, _ in grants(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]


def test_partition_controller_gets_exactly_what_it_needs(
        overlay: tuple[dict[str, Any], ...], tmp_path: Path) -> None:
    settings = load_partition_settings(write_config(overlay, tmp_path) / "partition.yaml")
    own_configmap, own_lease = (settings.configmap,), (settings.leader.lease_name,)
    cluster = grants(find(overlay, "ClusterRole", "extract:partition-controller"))
    assert cluster == {("", "nodes", v, ()) for v in ("get", "list", "watch")}
    role = find(overlay, "Role", "partition-controller")
    assert role["metadata"]["namespace"] == settings.namespace
    assert grants(role) == (
        {("", "pods", v, ()) for v in ("get", "list", "watch", "create", "delete", "patch")}
        | {("", "configmaps", "create", ())}
        | {("", "configmaps", v, own_configmap) for v in ("get", "update", "patch")}
        | {("coordination.k8s.io", "leases", "create", ())}
        | {("coordination.k8s.io", "leases", v, own_lease) for v in ("get", "update")}
        | {("", "events", v, ()) for v in ("create", "patch")}
        | {("", "services", "create", ())}
        | {("", "services", v, (settings.compss.service,)) for v in ("get", "update")}
        | {("apps", "deployments", "patch", (settings.compss.master_deployment,))})
    for kind, role_name in (("ClusterRoleBinding", "extract:partition-controller"),
                            ("RoleBinding", "partition-controller")):
        binding = find(overlay, kind, role_name)
        assert binding["roleRef"]["name"] == role_name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "partition-controller",
                                        "namespace": "extract"}]


def test_extender_may_only_list_and_watch_pods_and_review_tokens(
        overlay: tuple[dict[str, Any], ...], tmp_path: Path) -> None:
    account = find(overlay, "ServiceAccount", "extender")
    assert account["automountServiceAccountToken"] is False  # only the Deployment's pods get a token
    spec = find(overlay, "Deployment", "extender")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is True
    bound = [o for o in overlay if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and any(s.get("name") == "extender" for s in o["subjects"])]
    # The informer's pods, and (server.auth) TokenReview + SubjectAccessReview create, which the
    # built-in system:auth-delegator grants and nothing more.
    assert sorted((b["kind"], b["metadata"]["name"], b["roleRef"]["name"]) for b in bound) == [
        ("ClusterRoleBinding", "extract:extender", "extract:extender"),
        ("ClusterRoleBinding", "extract:extender-auth-delegator", "system:auth-delegator")]
    assert grants(find(overlay, "ClusterRole", "extract:extender")) == {
        ("", "pods", v, ()) for v in ("list", "watch")}
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    settings = load_settings(write_config(overlay, tmp_path) / "extender.yaml", environ=env)
    assert settings.informer.enabled and not settings.informer.namespace  # every namespace: a ClusterRole
    assert settings.server.auth.enabled and settings.server.auth.protect_metrics


def test_monitoring_api_readers_and_prometheus_get_the_paths_the_extender_checks(
        overlay: tuple[dict[str, Any], ...], tmp_path: Path) -> None:
    spec = find(overlay, "Deployment", "extender")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    auth = load_settings(write_config(overlay, tmp_path) / "extender.yaml", environ=env).server.auth
    assert auth.resource is None  # the request path, under path_prefix, is what gets authorised
    prefix = auth.path_prefix
    assert grants(find(overlay, "ClusterRole", "extract:extender-api-reader")) == {
        ("nonResourceURL", f"{prefix}/api/v1/*", "get", ()),
        ("nonResourceURL", f"{prefix}/metrics", "get", ())}
    assert grants(find(overlay, "ClusterRole", "extract:extender-metrics-reader")) == {
        ("nonResourceURL", f"{prefix}/metrics", "get", ()),
        ("nonResourceURL", f"{prefix}/api/v1/sd/targets", "get", ())}
    binding = find(overlay, "ClusterRoleBinding", "extract:extender-metrics-reader")
    assert binding["roleRef"]["name"] == "extract:extender-metrics-reader"
    # The ServiceAccount hack/kind-e2e.sh gives kube-prometheus-stack's Prometheus.
    script = (MANIFESTS.parent / "hack" / "kind-e2e.sh").read_text()
    assert "--set prometheus.serviceAccount.name=\"$PROMETHEUS_SA\"" in script
    account = re.search(r"^PROMETHEUS_SA=(\S+)", script, re.M)
    assert account is not None
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account.group(1),
                                    "namespace": "monitoring"}]
    # The ServiceMonitor scrapes /metrics with Prometheus' own token.
    endpoint = find(overlay, "ServiceMonitor", "extender")["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"


def ingress_sources(policy: dict[str, Any]) -> list[tuple[dict[str, Any], set[int]]]:
    return [(peer, {p["port"] for p in rule["ports"]})
            for rule in policy["spec"]["ingress"] for peer in rule["from"]]


def container_ports(overlay: tuple[dict[str, Any], ...], name: str) -> set[int]:
    spec = find(overlay, "Deployment", name)["spec"]["template"]["spec"]
    return {p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])}


def test_only_the_scheduler_and_prometheus_reach_the_extender(
        overlay: tuple[dict[str, Any], ...]) -> None:
    policy = find(overlay, "NetworkPolicy", "extender")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "extender"}
    sources = ingress_sources(policy)
    scheduler = {"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "metrics-aware-scheduler"}}}
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    assert [peer for peer, _ in sources] == [scheduler, prometheus]
    assert all(ports == container_ports(overlay, "extender") for _, ports in sources)
    scheduler_labels = find(overlay, "Deployment", "metrics-aware-scheduler")["spec"]["template"][
        "metadata"]["labels"]
    assert scheduler["podSelector"]["matchLabels"].items() <= scheduler_labels.items()


def test_only_prometheus_reaches_the_metrics_of_controller_and_scheduler(
        overlay: tuple[dict[str, Any], ...]) -> None:
    for name in ("partition-controller", "metrics-aware-scheduler"):
        sources = ingress_sources(find(overlay, "NetworkPolicy", name))
        assert len(sources) == 1
        peer, ports = sources[0]
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
        assert ports == container_ports(overlay, name)


def test_pod_events_component_adds_only_event_creation(tmp_path: Path) -> None:
    # Not in any overlay: compose it the way docs/deploy.md tells an operator to.
    mine = tmp_path / "my-cluster"
    mine.mkdir()
    up = os.path.relpath(MANIFESTS, mine)
    (mine / "kustomization.yaml").write_text(
        f"resources: [{up}/overlays/production]\ncomponents: [{up}/components/pod-events]\n")
    objects = render(str(mine))
    for obj in objects:
        validate_object(obj, kubernetes_version(objects))
    role = find(objects, "ClusterRole", "extract:extender-pod-events")
    assert grants(role) == {("", "events", "create", ())}
    binding = find(objects, "ClusterRoleBinding", "extract:extender-pod-events")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "extender",
                                    "namespace": "extract"}]
    spec = find(objects, "Deployment", "extender")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is True
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    settings = load_settings(write_config(objects, tmp_path) / "extender.yaml", environ=env)
    assert settings.server.pod_events and not settings.server.bind_enabled
