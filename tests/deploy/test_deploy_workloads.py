"""The pods we run: hardened, probed, sized, and fed a configuration their code accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate

from extender.partition.settings import load_partition_settings
from extender.settings import load_settings
from tests.deploy.conftest import (
    NAMESPACE,
    REPO,
    find,
    kubernetes_version,
    pod_specs,
    render,
    write_config,
)

OUR_IMAGE = re.compile(r"(ghcr\.io/extract/extender|extract-extender):")


def our_deployments(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    return [(w, s) for w, s in pod_specs(objects) if w.startswith("Deployment/")]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from the downward API>") for e in container.get("env", [])}


def service_link_env(objects: tuple[dict[str, Any], ...], namespace: str) -> dict[str, str]:
    """What the kubelet injects for every Service of the namespace when enableServiceLinks is on."""
    env: dict[str, str] = {}
    for svc in (o for o in objects if o["kind"] == "Service"
                and o["metadata"]["namespace"] == namespace):
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        port = svc["spec"]["ports"][0]["port"]
        env[f"{prefix}_SERVICE_HOST"] = "10.96.0.10"
        env[f"{prefix}_SERVICE_PORT"] = str(port)
        env[f"{prefix}_PORT"] = f"tcp://10.96.0.10:{port}"
        env[f"{prefix}_PORT_{port}_TCP_ADDR"] = "10.96.0.10"
    return env


def test_every_container_is_hardened(overlay: tuple[dict[str, Any], ...]) -> None:
    for where, spec in our_deployments(overlay):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), \
                    f"{where}/{c['name']}: {kind}"
            assert "livenessProbe" in c, f"{where}/{c['name']}: no liveness probe"


def test_pods_running_our_image_run_as_the_image_user(overlay: tuple[dict[str, Any], ...]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert len(users) == 1, "the final stage sets one numeric USER uid:gid"
    uid = int(users[0][0])
    for where, spec in our_deployments(overlay):
        if any(OUR_IMAGE.match(c["image"]) for c in spec["containers"]):
            assert spec["securityContext"]["runAsUser"] == uid, where


def test_extender_is_highly_available_and_probed_on_its_health_endpoints(
        overlay: tuple[dict[str, Any], ...]) -> None:
    deployment = find(overlay, "Deployment", "extender")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] >= 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pdb = find(overlay, "PodDisruptionBudget", "extender")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 0 < pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    service = find(overlay, "Service", "extender")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}


def test_rendered_extender_config_is_accepted_by_the_extender(
        overlay: tuple[dict[str, Any], ...], tmp_path: Path) -> None:
    directory = write_config(overlay, tmp_path)
    container = find(overlay, "Deployment", "extender")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    config_file = Path(args[args.index("--config") + 1])
    assert config_file.parent == Path("/etc/extender")
    settings = load_settings(directory / config_file.name, environ=container_env(container))
    # Defaults that need no Kubernetes API access (the ServiceAccount has no token and no RBAC).
    assert not settings.server.bind_enabled and not settings.server.pod_events


def test_service_links_cannot_leak_into_the_settings(
        overlay: tuple[dict[str, Any], ...], tmp_path: Path) -> None:
    # Kubernetes injects EXTENDER_SERVICE_HOST & co. for the Service `extender`. The loaders read
    # only EXTENDER_<known section>... variables, and the pods turn service links off as well.
    directory = write_config(overlay, tmp_path)
    links = service_link_env(overlay, NAMESPACE)
    assert links, "the overlay defines the Service whose links we guard against"
    load_settings(directory / "extender.yaml", environ=links)
    load_partition_settings(directory / "partition.yaml", environ=links)
    for _where, spec in our_deployments(overlay):
        assert spec.get("enableServiceLinks") is False
        injected = links
        for container in spec["containers"]:
            env = {**injected, **container_env(container)}
            if "serve" in container.get("args", []):
                load_settings(directory / "extender.yaml", environ=env)
            if "partition" in container.get("args", []):
                load_partition_settings(directory / "partition.yaml", environ=env)


def test_partition_controller_config_matches_its_deployment(
        overlay: tuple[dict[str, Any], ...], tmp_path: Path) -> None:
    settings = load_partition_settings(write_config(overlay, tmp_path) / "partition.yaml")
    assert settings.namespace == NAMESPACE
    container = find(overlay, "Deployment", "partition-controller")["spec"]["template"]["spec"][
        "containers"][0]
    assert container["args"][:3] == ["partition", "--config", "/etc/extender/partition.yaml"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.metrics_port
    assert "POD_NAME" in container_env(container)  # leader-election identity


def test_worker_pod_template_makes_a_valid_pod_with_the_deadline_sidecar(
        overlay: tuple[dict[str, Any], ...], tmp_path: Path) -> None:
    settings = load_partition_settings(write_config(overlay, tmp_path) / "partition.yaml")
    pod = {"apiVersion": "v1", "kind": "Pod",
           **settings.pod_template,
           "metadata": {**settings.pod_template.get("metadata", {}),
                        "name": "partition-worker-node-1", "namespace": settings.namespace}}
    kubernetes_validate.validate(pod, kubernetes_version(overlay), strict=True)
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert settings.sizing.container in containers
    sidecars = [c for c in containers.values()
                if "sidecar" in c.get("command", []) + c.get("args", [])]
    assert len(sidecars) == 1, "one deadline sidecar per worker"
    words = " ".join(sidecars[0].get("command", []) + sidecars[0].get("args", []))
    assert "--pushgateway" in words and "--node" in words and "--worker" in words


def test_example_workload_opts_into_the_metrics_aware_scheduler() -> None:
    objects = render("manifests/examples")
    workloads = pod_specs(objects)
    assert {w.split("/")[0] for w, _ in workloads} == {"Deployment", "Job"}
    for where, spec in workloads:
        assert spec["schedulerName"] == "metrics-aware", where
        for container in spec["containers"]:
            assert container["resources"]["requests"], f"{where}: requests drive hot-spot counting"


def test_config_map_carries_every_config_file(overlay: tuple[dict[str, Any], ...]) -> None:
    # A new file in config/ that config/kustomization.yaml forgets would be missing in the pods.
    shipped = set(find(overlay, "ConfigMap", "extender-config")["data"])
    on_disk = {p.name for p in [*(REPO / "config").glob("*.yaml"), *(REPO / "config").glob("*.json")]
               if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")}
    assert on_disk == shipped
