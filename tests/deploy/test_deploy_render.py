"""Every overlay renders, and every object it renders is valid for the cluster version we target."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.conftest import (
    MANIFESTS,
    NAMESPACE,
    OVERLAYS,
    find,
    kubernetes_version,
    pod_specs,
    render,
    validate_object,
)
from tests.deploy.schemas import SchemaError


def test_overlay_list_is_complete() -> None:
    on_disk = {p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir()}
    assert on_disk == set(OVERLAYS)


@pytest.mark.parametrize("path", [f"manifests/overlays/{o}" for o in OVERLAYS]
                         + ["manifests/base", "manifests/examples"])
def test_every_rendered_object_matches_its_schema(path: str) -> None:
    objects = render(path)
    version = kubernetes_version(render("manifests/base"))
    assert objects
    for obj in objects:
        validate_object(obj, version)


def test_schema_validation_rejects_a_misspelt_or_mistyped_field() -> None:
    objects = render("manifests/base")
    version = kubernetes_version(objects)
    deployment = copy.deepcopy(find(objects, "Deployment", "extender"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment, version)
    deployment = copy.deepcopy(find(objects, "Deployment", "extender"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGets"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(deployment, version)
    monitor = copy.deepcopy(find(render("manifests/overlays/production"), "ServiceMonitor",
                                 "extender"))
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    with pytest.raises(SchemaError, match="honourLabels"):
        validate_object(monitor, version)


def identities(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, str]]:
    """(kind, name) of each object, generated ConfigMaps without their hash."""
    return sorted((o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap"
                   else o["metadata"]["name"]) for o in objects)


def test_overlays_render_the_same_set_of_objects(overlay: tuple[dict[str, Any], ...]) -> None:
    assert identities(overlay) == identities(render("manifests/overlays/production"))


def test_namespaced_objects_live_in_extract_except_the_auth_reader_binding(
        overlay: tuple[dict[str, Any], ...]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    elsewhere = [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
                 for o in overlay if o["kind"] not in cluster_scoped
                 and o["metadata"].get("namespace") != NAMESPACE]
    assert elsewhere == [("RoleBinding", "extract:metrics-aware-scheduler:auth-reader",
                          "kube-system")]


def test_images_are_pinned_to_a_version(overlay: tuple[dict[str, Any], ...]) -> None:
    for where, spec in pod_specs(overlay):
        for container in spec["containers"]:
            image = container["image"]
            tag = image.rpartition(":")[2] if "@" not in image else "digest"
            assert "/" not in tag and tag not in ("", "latest"), f"{where}: {image} is not pinned"


def test_generated_config_maps_carry_a_content_hash(overlay: tuple[dict[str, Any], ...]) -> None:
    # A new hash renames the ConfigMap, so a config change rolls the pods that mount it.
    for name in ("extender-config", "metrics-aware-scheduler-config"):
        config_map = find(overlay, "ConfigMap", name)
        assert re.fullmatch(rf"{name}-[a-z0-9]{{10}}", config_map["metadata"]["name"])
