"""The informer benchmark's machinery, tiny, against a control plane of its own.

Its own, not the session's: the benchmark's pods name ReplicaSets that do not exist, and the
session's kube-controller-manager (started by other tests) garbage-collects such pods.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import informer_bench
from tests.controlplane import ControlPlane


@pytest.fixture
def bare_plane(control_plane: ControlPlane, tmp_path: Path) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver only (the session fixture proves the binaries exist)."""
    plane = ControlPlane.start(control_plane.bin_dir, tmp_path / "plane")
    try:
        yield plane
    finally:
        plane.stop()


def test_the_benchmark_populates_churns_and_measures_both_clients(bare_plane: ControlPlane) -> None:
    control_plane = bare_plane
    api = informer_bench.Api(control_plane)
    pods, _ = informer_bench.populate(api, nodes=12, pods=40, budget_s=60)
    assert pods == 40
    churn = informer_bench.Churn(api, pods, nodes=12)
    results = {}
    for client in ("informer", "plain client"):
        results[client], made = informer_bench.measure(control_plane, churn, client, rate=30, seconds=1)
        assert made >= 3
    ours, plain = results["informer"], results["plain client"]
    # Both see every bound pod at the start (the informer's scope is all namespaces, like the plain
    # client's) and the same churn afterwards.
    assert ours["objects_synced"] >= 40 and plain["objects_synced"] >= 40
    assert ours["events"] > 0 and plain["events"] > 0
    assert ours["errors"] == 0 and ours["relists"] == 0
    for result in (ours, plain):
        assert result["sync_cpu_s"] > 0 and result["peak_mb"] > result["rss_import_mb"] * 0.9
