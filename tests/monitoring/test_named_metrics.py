"""Every named metric at every declared level, against a real Prometheus scraping the emulator."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from extender import localserver
from extender.monitoring.catalog import load_monitoring_catalog
from tests.monitoring.conftest import Stack
from tests.monitoring.expected import Values, expected
from tests.support import REPO

pytestmark = pytest.mark.prometheus

CATALOG = load_monitoring_catalog(REPO / "config" / "monitoring.yaml",
                                  cache_entries={"cpu_utilisation", "memory_available_ratio",
                                                 "network_receive_bytes", "network_transmit_bytes",
                                                 "disk_io_now", "disk_throughput", "node_ready",
                                                 "node_pressure", "node_unschedulable",
                                                 "gpu_utilisation", "gpu_power_watts",
                                                 "host_power_watts", "deadline_miss_ratio"},
                                  defaults={"window": "5s"})
PAIRS = [(m.name, level) for m in CATALOG.metrics for level in m.levels]
# node-exporter's per-CPU counters carry 0.01 s: over a 5 s window that is a few percent.
CPU_RATES = {"cpu_utilisation", "cpu_usage_cores", "energy_per_cpu_second"}




def tolerance(metric: str) -> dict[str, float]:
    if metric == "network_receive_dropped":
        # Packet counters are integers: over a 5 s window a rate of 0.5/s is 2 or 3 packets.
        return {"rel": 0.15, "abs": 0.3}
    return {"rel": 0.06 if metric in CPU_RATES else 0.03, "abs": 0.01}


def targets(stack: Stack) -> list[dict[str, Any]]:
    answer = requests.get(f"{stack.prometheus_url}/api/v1/targets", timeout=5).json()
    return [{"labels": t["labels"], "health": t["health"]} for t in answer["data"]["activeTargets"]]


def as_values(series: list[dict[str, Any]], value: str = "value") -> Values:
    """{labels: value}, or for history {labels: last point} (series without points are left out:
    their value was not finite, e.g. a division by a zero rate)."""
    if value == "value":
        return {tuple(sorted(s["labels"].items())): s["value"] for s in series}
    return {tuple(sorted(s["labels"].items())): s["points"][-1][1] for s in series if s["points"]}


def matches(got: Values, want: Values, tol: dict[str, float]) -> bool:
    return got.keys() == want.keys() and all(
        got[key] == pytest.approx(want[key], **tol) for key in want)


def settle(stack: Stack, metric: str, level: str, fetch: Any) -> tuple[Values, Values]:
    """Wait until `fetch()` answers the expected values; return (got, expected)."""
    last: dict[str, Values] = {}

    def check() -> bool:
        want = expected(stack.world, metric, level, targets(stack) if metric == "target_up" else [])
        last["want"], last["got"] = want, fetch()
        return matches(last["got"], want, tolerance(metric))

    try:
        localserver.wait_until(check, timeout_s=30, interval_s=0.5, what=f"{metric}@{level}")
    except TimeoutError:
        diff = {key: (last.get("got", {}).get(key), value) for key, value in last.get("want", {}).items()}
        extra = set(last.get("got", {})) - set(last.get("want", {}))
        pytest.fail(f"{metric} at {level}: (got, expected) {diff}; unexpected series {extra}")
    return last["got"], last["want"]


@pytest.mark.parametrize(("metric", "level"), PAIRS, ids=[f"{m}@{lvl}" for m, lvl in PAIRS])
def test_current_values_match_the_emulated_estate(stack: Stack, metric: str, level: str) -> None:
    client = stack.app.test_client()
    answers: list[dict[str, Any]] = []

    def fetch() -> Values:
        answer = client.get(f"/api/v1/metrics/{metric}", query_string={"level": level})
        assert answer.status_code == 200, answer.json
        answers.append(answer.json)
        return as_values(answer.json["series"])

    settle(stack, metric, level, fetch)
    body = answers[-1]
    spec = CATALOG.metric(metric)
    assert body["unit"] == spec.unit_at(level) and body["level"] == level
    assert body["source"] == ("cache" if spec.level(level).cache else "prometheus")
    assert all(s["timestamp"] <= body["time"] + 1 and s["age_s"] >= 0 for s in body["series"])


@pytest.mark.parametrize(("metric", "level"), PAIRS, ids=[f"{m}@{lvl}" for m, lvl in PAIRS])
def test_history_ends_at_the_current_values_with_one_point_per_step(stack: Stack, metric: str,
                                                                    level: str) -> None:
    """History always goes to Prometheus: this is what tests the templates of cached levels."""
    client = stack.app.test_client()
    counts: list[set[int]] = []

    def fetch() -> Values:
        answer = client.get(f"/api/v1/metrics/{metric}",
                            # Ends a second ago: rates evaluated past the newest scrape are
                            # extrapolated less, which would bias the last point.
                            query_string={"level": level, "start": "-3s", "end": "-1s",
                                          "step": "1s"})
        assert answer.status_code == 200, answer.json
        body = answer.json
        assert body["end"] - body["start"] == 2 and body["step"] == 1
        counts.append({len(s["points"]) for s in body["series"]})
        return as_values(body["series"], "points")

    settle(stack, metric, level, fetch)
    assert counts[-1] <= {3}, "one point per step from start to end, inclusive"


def test_catalog_lists_every_metric_with_levels_units_and_selectors(stack: Stack) -> None:
    body = stack.app.test_client().get("/api/v1/metrics").json
    listed = {m["name"]: m for m in body["metrics"]}
    assert set(listed) == {m.name for m in CATALOG.metrics}
    pods = next(lv for lv in listed["cpu_usage_cores"]["levels"] if lv["name"] == "pod")
    assert pods == {"name": "pod", "unit": "cores", "labels": ["namespace", "pod"],
                    "selectors": ["node", "namespace", "pod", "label.<key>", "worker"],
                    "cached": False}
    node = next(lv for lv in listed["cpu_utilisation"]["levels"] if lv["name"] == "node")
    assert node["cached"] and node["unit"] == "ratio"
    nodes = next(lv for lv in listed["nodes_available"]["levels"] if lv["name"] == "cluster")
    assert nodes["unit"] == "count"


def test_range_query_returns_one_point_per_step(stack: Stack) -> None:
    client = stack.app.test_client()
    localserver.wait_until(lambda: client.get("/api/v1/metrics/memory_available_bytes", query_string={
        "level": "cluster", "start": "-6s"}).json["series"], timeout_s=30, what="6 s of data")
    body = client.get("/api/v1/metrics/memory_available_bytes",
                      query_string={"level": "node", "start": "-6s", "step": "2"}).json
    assert (body["start"], body["step"]) == (body["end"] - 6, 2)
    assert len(body["series"]) == len(stack.world.nodes)
    for series in body["series"]:
        times = [t for t, _ in series["points"]]
        assert times == [body["start"] + 2 * i for i in range(4)]
