"""Rebalancer settings: the shipped file loads, mistakes name file, key and reason; the pod and
node lists decode into what the logic needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from extender.errors import ConfigError
from extender.rebalance.kube import decode_cluster
from extender.rebalance.settings import load_rebalance_settings
from tests.support import REPO, settings

SHIPPED = REPO / "config" / "rebalance.yaml"


def test_shipped_file_loads_with_the_documented_defaults() -> None:
    loaded, extender = load_rebalance_settings(SHIPPED, environ={})
    assert loaded.thresholds["cpu_utilisation"].hot == 0.85
    assert loaded.thresholds["memory_available_ratio"].cool == 0.30
    assert loaded.leader.lease_name == "extender-rebalance" and not loaded.dry_run
    assert extender.source.endswith("extender.yaml")
    # Every key of the file is a field (and the file sets no value the defaults do not have).
    from extender.rebalance.settings import RebalanceSettings
    assert loaded == RebalanceSettings(source=str(SHIPPED))


def test_environment_overrides_the_file() -> None:
    loaded, _ = load_rebalance_settings(SHIPPED, environ={"REBALANCE_DRY_RUN": "true"})
    assert loaded.dry_run


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    (tmp_path / "extender.yaml").write_text((REPO / "config" / "extender.yaml").read_text())
    (tmp_path / "catalog.yaml").write_text((REPO / "config" / "catalog.yaml").read_text())
    (tmp_path / "monitoring.yaml").write_text((REPO / "config" / "monitoring.yaml").read_text())
    path = tmp_path / "rebalance.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("data", "complaint"), [
    ({"thresholds": {"cpu_utilisatoin": {"hot_above": 0.9}}},
     "thresholds.cpu_utilisatoin: not in the catalog"),
    ({"thresholds": {"cpu_utilisation": {"hot_above": 0.9, "hot_below": 0.1}}}, "exactly one of"),
    ({"thresholds": {"cpu_utilisation": {}}}, "exactly one of"),
    ({"thresholds": {"cpu_utilisation": {"hot_above": 0.6, "cool_below": 0.8}}}, "safe side"),
    ({"thresholds": {"memory_available_ratio": {"hot_below": 0.1, "cool_below": 0.3}}},
     "use cool_below with hot_above"),
    ({"thresholds": {"cpu_utilisation": {"hot_above": 0.9, "load": "disk"}}},
     "thresholds.cpu_utilisation: load: Invalid enum value 'disk'"),
    ({"thresholds": {}}, "thresholds: name at least one"),
    ({"margin": 11}, "margin: expected 0..10"),
    ({"debounce_cycles": 0}, "debounce_cycles: expected a number > 0"),
    ({"limits": {"per_node": -1}}, "limits.per_node: expected a number >= 0"),
    ({"limits": {"burst": "many"}}, "limits.burst"),
    ({"profile": "nope"}, "profile: no profile 'nope'"),
    ({"leader": {"renew_deadline_s": 20}}, "leader.lease_duration_s"),
    ({"dry_rn": True}, "dry_rn"),
    ({"extender_config": "missing.yaml"}, "missing.yaml: cannot read"),
])
def test_mistakes_are_refused_with_file_key_and_reason(tmp_path: Path, data: dict[str, Any],
                                                       complaint: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_rebalance_settings(path, environ={})
    assert complaint in str(caught.value)
    assert str(path) in str(caught.value) or "missing.yaml" in complaint


def _pod(name: str, node: str | None, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "work", "uid": f"uid-{name}",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "controller": True}]}
    meta.update(extra.pop("metadata", {}))
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"}}}]}
    if node:
        spec["nodeName"] = node
    spec.update(extra.pop("spec", {}))
    return {"metadata": meta, "spec": spec, "status": extra.pop("status", {"phase": "Running"})}


def test_pod_and_node_lists_decode_into_views_and_free_resources() -> None:
    pods = {"items": [
        _pod("plain", "n1"),
        _pod("scratch", "n1", spec={"volumes": [{"name": "v", "emptyDir": {}}]}),
        _pod("static", "n1", metadata={"annotations": {"kubernetes.io/config.mirror": "x"},
                                       "ownerReferences": [{"kind": "Node", "name": "n1",
                                                            "controller": True}]}),
        _pod("orphan", "n1", metadata={"ownerReferences": []}),
        _pod("leaving", "n1", metadata={"deletionTimestamp": "2026-01-01T00:01:00Z"}),
        _pod("pending", None),
        _pod("done", "n1", status={"phase": "Succeeded"}),
        _pod("broken", "n1", spec={"containers": [{"name": "c", "resources": {
            "requests": {"cpu": "lots"}}}]}),
    ]}
    nodes = {"items": [
        {"metadata": {"name": "n1", "uid": "u1", "labels": {"zone": "z"}},
         "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}}},
        {"metadata": {"name": "n2", "uid": "u2"}, "spec": {"unschedulable": True},
         "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}},
        {"metadata": {"name": "n3", "uid": "u3"},
         "spec": {"taints": [{"key": "maintenance", "effect": "NoSchedule"}]},
         "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}},
    ]}
    view = decode_cluster(json.dumps(pods).encode(), json.dumps(nodes).encode(),
                          settings().policy)
    by_name = {p.name: p for p in view.pods}
    assert sorted(by_name) == ["orphan", "plain", "scratch", "static"]
    assert by_name["plain"].owner_kind == "ReplicaSet" and by_name["plain"].demand.cpu_cores == 0.5
    assert by_name["scratch"].local_storage and by_name["static"].mirror
    assert by_name["orphan"].owner_kind is None
    assert by_name["plain"].created_at == 1767225600.0
    assert view.undecodable and "broken" in view.undecodable[0]
    # Five bound, non-terminal, decodable pods hold 2.5 cores and 5 GiB of n1 (leaving included).
    assert view.nodes["n1"].cpu_free_cores == pytest.approx(1.5)
    assert view.nodes["n1"].memory_free_bytes == pytest.approx(3 * 2**30)
    assert view.nodes["n1"].gpus_free == 1 and view.nodes["n1"].schedulable
    assert not view.nodes["n2"].schedulable and not view.nodes["n3"].schedulable
    assert view.uids["n2"] == "u2"


def test_a_partial_leader_section_keeps_the_rebalancers_lease(tmp_path: Path) -> None:
    loaded, _ = load_rebalance_settings(write(tmp_path, {"leader": {"retry_period_s": 3}}),
                                        environ={})
    assert loaded.leader.lease_name == "extender-rebalance" and loaded.leader.retry_period_s == 3
