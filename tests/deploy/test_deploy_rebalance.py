"""The rebalancer component: off by default, least privilege, and its Deployment matches its
settings and starts with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from extender.rebalance.settings import load_rebalance_settings
from tests.deploy import test_deploy_workloads as workloads
from tests.deploy.conftest import (
    MANIFESTS,
    OVERLAYS,
    find,
    kubernetes_version,
    render,
    validate_object,
    write_config,
)
from tests.deploy.test_deploy_access import grants
from tests.deploy.test_deploy_commands import parse


def with_component(tmp_path: Path) -> tuple[dict[str, Any], ...]:
    """Production plus the component, composed as the component's comment tells an operator."""
    mine = tmp_path / "my-cluster"
    mine.mkdir()
    up = os.path.relpath(MANIFESTS, mine)
    (mine / "kustomization.yaml").write_text(
        f"resources: [{up}/overlays/production]\ncomponents: [{up}/components/rebalance]\n")
    return render(str(mine))


def test_no_overlay_runs_the_rebalancer() -> None:
    for name in OVERLAYS:
        objects = render(f"manifests/overlays/{name}")
        assert not [o for o in objects if o["metadata"]["name"] in ("rebalancer",
                                                                     "extract:rebalancer")], name


def test_component_renders_valid_hardened_objects(tmp_path: Path) -> None:
    objects = with_component(tmp_path)
    for obj in objects:
        validate_object(obj, kubernetes_version(objects))
    workloads.test_every_container_is_hardened(objects)  # the same rules as every overlay's


def test_rebalancer_gets_exactly_what_it_needs(tmp_path: Path) -> None:
    objects = with_component(tmp_path)
    settings, _ = load_rebalance_settings(write_config(objects, tmp_path) / "rebalance.yaml",
                                          environ={})
    cluster = grants(find(objects, "ClusterRole", "extract:rebalancer"))
    assert cluster == {("", "pods", "list", ()), ("", "nodes", "list", ()),
                       ("", "pods/eviction", "create", ()), ("", "events", "create", ())}
    role = find(objects, "Role", "rebalancer")
    assert role["metadata"]["namespace"] == settings.namespace
    assert grants(role) == ({("coordination.k8s.io", "leases", "create", ())}
                            | {("coordination.k8s.io", "leases", v, (settings.leader.lease_name,))
                               for v in ("get", "update")})
    for kind, name in (("ClusterRoleBinding", "extract:rebalancer"), ("RoleBinding", "rebalancer")):
        binding = find(objects, kind, name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rebalancer",
                                        "namespace": "extract"}]


def test_deployment_matches_the_settings_and_its_command_starts(tmp_path: Path) -> None:
    objects = with_component(tmp_path)
    config = write_config(objects, tmp_path)
    settings, _ = load_rebalance_settings(config / "rebalance.yaml", environ={})
    spec = find(objects, "Deployment", "rebalancer")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["serviceAccountName"] == "rebalancer" and spec["enableServiceLinks"] is False
    assert container["ports"] == [{"name": "metrics", "containerPort": settings.listen_port}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    args = container["args"]
    parse(args)
    assert args[args.index("--config") + 1] == "/etc/extender/rebalance.yaml"
    # The container's own command line, with the rendered ConfigMap where the pod mounts it.
    line = [a.replace("/etc/extender", str(config)) for a in args] + ["--check"]
    done = subprocess.run([sys.executable, "-m", "extender.cli", *line], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    policy = find(objects, "NetworkPolicy", "rebalancer")["spec"]
    assert policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": settings.listen_port}]
