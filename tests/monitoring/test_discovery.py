"""Service discovery of partition workers: the target list, the resources file, file SD, and a real
Prometheus picking the targets up through http_sd_configs and file_sd_configs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from extender import localserver
from extender.monitoring.catalog import DiscoverySettings
from extender.monitoring.discovery import (
    DiscoveryUnavailable,
    ResourcesFile,
    Worker,
    target_groups,
    write_file_sd,
)
from extender.monitoring.model import TargetGroup
from tests.monitoring.conftest import Stack, app_settings, monitoring_copy, worker_records, write_resources
from tests.monitoring.world import PARTITION_NAMESPACE
from tests.support import REPO, StaticSource, app_for, settings

WORKERS = [Worker("n2", "partition-worker-n2", "10.0.0.2", True),
           Worker("n1", "partition-worker-n1", "fd00::1", False),
           Worker("n3", "partition-worker-n3", "", False)]


def test_each_worker_with_an_ip_gets_a_sidecar_target_labelled_node_worker_namespace() -> None:
    groups = target_groups(WORKERS, DiscoverySettings(namespace="extract"))
    assert groups == [
        TargetGroup(targets=["[fd00::1]:9465"], labels={
            "node": "n1", "worker": "partition-worker-n1", "namespace": "extract",
            "component": "deadline-sidecar", "ready": "false"}),
        TargetGroup(targets=["10.0.0.2:9465"], labels={
            "node": "n2", "worker": "partition-worker-n2", "namespace": "extract",
            "component": "deadline-sidecar", "ready": "true"}),
    ]


def test_worker_targets_paths_and_ready_only() -> None:
    groups = target_groups(WORKERS, DiscoverySettings(worker_port=8080, worker_metrics_path="/m",
                                                      sidecar_port=None, ready_only=True))
    assert [(g.targets, g.labels["component"], g.labels["__metrics_path__"]) for g in groups] == [
        (["10.0.0.2:8080"], "worker", "/m")]


def test_resources_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "resources.json"
    write_resources(path, WORKERS[:1])
    source = ResourcesFile(path)
    assert [w.pod for w in source.workers()] == ["partition-worker-n2"]
    write_resources(path, WORKERS)
    assert [w.pod for w in source.workers()] == [w.pod for w in WORKERS]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read: No such file or directory (is the partition ConfigMap mounted there?)"),
    ("{", "invalid JSON"),
    ('{"workers": [{"pod": "p"}]}', "not a partition resources.json"),
])
def test_an_unreadable_resources_file_is_unavailable_with_the_reason(
        tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "resources.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DiscoveryUnavailable, match=re.escape(message)):
        ResourcesFile(path).workers()


def test_file_sd_is_written_atomically_as_json(tmp_path: Path) -> None:
    path = tmp_path / "workers.json"
    path.write_text("old")
    groups = target_groups(WORKERS, DiscoverySettings())
    write_file_sd(path, groups)
    assert json.loads(path.read_text()) == [{"targets": g.targets, "labels": g.labels} for g in groups]
    assert [p.name for p in tmp_path.iterdir()] == ["workers.json"]  # no temporary file left
    with pytest.raises(OSError):
        write_file_sd(tmp_path / "missing-dir" / "x.json", groups)


def test_sd_endpoint_answers_404_unconfigured_and_503_when_the_file_is_missing(
        tmp_path: Path) -> None:
    s = settings()
    app = app_for(s, StaticSource(s, {}), start_refresher=False)
    answer = app.test_client().get("/api/v1/sd/targets")
    assert answer.status_code == 404 and "discovery.resources_file is not set" in answer.json["error"]
    missing = monitoring_copy(tmp_path, discovery={"resources_file": str(tmp_path / "nope.json")})
    s = app_settings(missing, "http://127.0.0.1:1")
    app = app_for(s, StaticSource(s, {}), start_refresher=False)
    answer = app.test_client().get("/api/v1/sd/targets")
    assert answer.status_code == 503 and "nope.json: cannot read" in answer.json["error"]
    assert answer.headers["Retry-After"]


def active_targets(stack: Stack, job: str) -> dict[str, dict[str, str]]:
    answer = requests.get(f"{stack.prometheus_url}/api/v1/targets", timeout=5).json()
    return {t["labels"]["worker"]: t["labels"] for t in answer["data"]["activeTargets"]
            if t["labels"].get("job") == job}


def expect_workers(stack: Stack, job: str, workers: list[Worker]) -> dict[str, Any]:
    want = {w.pod: {"node": w.node, "worker": w.pod, "namespace": PARTITION_NAMESPACE,
                    "component": "deadline-sidecar"} for w in workers}

    def seen() -> bool:
        got = active_targets(stack, job)
        return got.keys() == want.keys() and all(
            want[pod].items() <= got[pod].items() for pod in want)

    localserver.wait_until(seen, timeout_s=30, what=f"{job} targets in Prometheus")
    return active_targets(stack, job)


@pytest.mark.prometheus
def test_prometheus_scrapes_the_workers_listed_by_http_sd_and_picks_up_new_ones(stack: Stack) -> None:
    workers = worker_records(stack.world)
    expect_workers(stack, "partition-http-sd", workers)
    added = [*workers, Worker(workers[0].node, "partition-worker-extra", "127.0.0.1", True)]
    write_resources(stack.resources_file, added)
    try:
        expect_workers(stack, "partition-http-sd", added)  # no Prometheus restart
    finally:
        write_resources(stack.resources_file, workers)
    expect_workers(stack, "partition-http-sd", workers)


@pytest.mark.prometheus
def test_prometheus_reads_the_file_sd_list(stack: Stack) -> None:
    expect_workers(stack, "partition-file-sd", worker_records(stack.world))


def test_example_scrape_configs_are_valid_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    example = REPO / "config" / "prometheus-sd.example.yaml"
    result = subprocess.run([promtool, "check", "config", str(example)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(example.read_text())["scrape_configs"]}
    assert jobs["partition-workers"]["http_sd_configs"][0]["url"].endswith("/api/v1/sd/targets")
    assert "file_sd_configs" in jobs["partition-workers-file"]
