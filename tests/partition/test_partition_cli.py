"""`extender partition`: options, --dry-run against the fake API through a kubeconfig."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from extender.errors import ConfigError
from extender.partition import cli
from tests.partition.conftest import CONFIG, NS
from tests.partition.fakeapi import FakeKubernetes, node


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
    }))
    return path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_dry_run_prints_the_plan_per_node_and_changes_nothing(
        api: FakeKubernetes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.put("nodes", node("new"))
    api.put("nodes", node("cordoned", unschedulable=True))
    api.create("pods", {"metadata": {"name": "partition-worker-cordoned",
                                     "labels": {"extract.io/partition": "default"},
                                     "annotations": {"extract.io/partition-node": "cordoned"}},
                        "spec": {"containers": [{"name": "worker", "image": "x"}]}}, NS)
    args = parse("--config", str(CONFIG), "--kubeconfig", str(kubeconfig(tmp_path, api.url)),
                 "--namespace", NS, "--dry-run")
    assert cli.run(args) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert ["create", "new", "partition-worker-new", "no", "worker"] in lines
    assert ["delete", "cordoned", "partition-worker-cordoned", "cordoned"] in lines
    assert ["skip", "cordoned", "-", "cordoned"] in lines
    assert {r.method for r in api.requests} == {"GET"}


def test_unreadable_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    args = parse("--config", str(CONFIG), "--kubeconfig", str(missing), "--dry-run")
    with pytest.raises(ConfigError, match=f"{missing}: cannot configure the Kubernetes client"):
        cli.run(args)


def test_no_kubeconfig_outside_a_cluster_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    args = parse("--config", str(CONFIG), "--dry-run")
    with pytest.raises(ConfigError, match="in-cluster service account: cannot configure"):
        cli.run(args)


def test_bad_config_is_reported_before_touching_the_cluster(tmp_path: Path) -> None:
    bad = tmp_path / "partition.yaml"
    bad.write_text("sizing: {cpu_fraction: 2}\n")
    with pytest.raises(ConfigError, match="cpu_fraction"):
        cli.run(parse("--config", str(bad), "--dry-run"))
