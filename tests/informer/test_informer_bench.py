"""The informer benchmark's machinery, tiny, against the session's control plane."""

from __future__ import annotations

from benchmarks import informer_bench
from tests.controlplane import ControlPlane


def test_the_benchmark_populates_churns_and_measures_both_clients(control_plane: ControlPlane) -> None:
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
    # client's: other tests' bound pods count too) and the same churn afterwards.
    assert ours["objects_synced"] >= 40 and plain["objects_synced"] >= 40
    assert ours["events"] > 0 and plain["events"] > 0
    assert ours["errors"] == 0 and ours["relists"] == 0
    for result in (ours, plain):
        assert result["sync_cpu_s"] > 0 and result["peak_mb"] > result["rss_import_mb"] * 0.9
