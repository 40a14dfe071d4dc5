"""Closing the loop: task events -> sidecars -> real Pushgateway -> real Prometheus (honor_labels)
-> the extender's cache -> filter and prioritize answers and /api/v1/nodes.

Only the sidecars' series exist in this Prometheus: no node reports any other catalog term, so
those terms are dropped for all alike, the deadline term alone orders the nodes and the shipped
filter (`deadline_miss_ratio above 0.50`) alone rejects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from extender import localserver
from extender.localserver import wait_until
from extender.sidecar.events import TaskEnd, TaskStart
from extender.sidecar.service import Sidecar, build_sidecar
from tests.sidecar.support import ManualClock, make_settings
from tests.support import app_for, fixture, settings

pytestmark = pytest.mark.prometheus

# (node, tasks that miss out of 4): ratios 0.75, 0.25 and 0.
NODES = {"loop-bad": 3, "loop-meh": 1, "loop-good": 0}


@pytest.fixture
def sidecars(shared_gateway: localserver.LocalServer) -> Iterator[dict[str, Sidecar]]:
    clock = ManualClock()
    cars = {node: build_sidecar(make_settings(), node=node, worker="w1",
                                pushgateway=shared_gateway.url, clock=clock).start()
            for node in NODES}
    for node, misses in NODES.items():
        tracker = cars[node].tracker
        for i in range(4):  # expected 2 s -> limit 4 s
            tracker.start(TaskStart(id=f"{node}-{i}", type="fit", expected_seconds=2.0))
            clock.advance(10.0 if i < misses else 1.0)
            tracker.end(TaskEnd(id=f"{node}-{i}"))
    yield cars
    for car in cars.values():
        car.stop()


def test_nodes_missing_deadlines_rank_lower_are_filtered_and_show_their_ratio(
        gateway_prometheus: localserver.LocalServer, sidecars: dict[str, Sidecar]) -> None:
    s = settings(prometheus={"url": gateway_prometheus.url, "query_timeout_s": 2, "retries": 0},
                 cache={"max_staleness_s": 60})
    app = app_for(s, start_refresher=False)
    cache = app.extensions["extender"].cache

    def all_ratios() -> bool:
        table = cache.refresh().table
        return all(name in table.names for name in NODES) and \
            table.value("loop-bad", "deadline_miss_ratio") == 0.75

    wait_until(all_ratios, timeout_s=30, interval_s=0.5, what="the sidecars' ratios in the cache")
    client = app.test_client()
    request = {**fixture("names-0001-prioritize-cache-plain.json")["request"],
               "NodeNames": list(NODES)}

    answer = client.post("/prioritize", json=request)
    assert answer.status_code == 200
    scores = {h["Host"]: h["Score"] for h in answer.get_json()}
    assert scores["loop-good"] > scores["loop-meh"] > scores["loop-bad"]

    filtered = client.post("/filter", json=request).get_json()
    assert sorted(filtered["NodeNames"]) == ["loop-good", "loop-meh"]
    assert "deadline misses" in filtered["FailedNodes"]["loop-bad"]

    nodes = {n["name"]: n for n in client.get("/api/v1/nodes").get_json()["nodes"]}
    for node, misses in NODES.items():
        reading = nodes[node]["metrics"]["deadline_miss_ratio"]
        assert reading["value"] == misses / 4 and reading["fresh"] is True
    assert nodes["loop-bad"]["passed"] is False


def test_a_group_no_longer_pushed_ages_out_of_the_deadline_term(
        shared_gateway: localserver.LocalServer,
        gateway_prometheus: localserver.LocalServer) -> None:
    """A sidecar killed with SIGKILL cannot delete its group and the Pushgateway serves its last
    values for ever (fresh to Prometheus at every scrape); `push_time_seconds` ages it out."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    Gauge("deadline_miss_ratio", "ratio", registry=registry).set(0.9)
    Gauge("deadline_window_tasks", "tasks", registry=registry).set(10)
    push_to_gateway(shared_gateway.url, job="extract-deadline", registry=registry, timeout=5,
                    grouping_key={"node": "killed-node", "worker": "w-killed"})
    s = settings(prometheus={"url": gateway_prometheus.url, "query_timeout_s": 2, "retries": 0},
                 cache={"push_max_age_s": 6, "max_staleness_s": 2})
    assert "time() - push_time_seconds < 6)" in s.metric("deadline_miss_ratio").query
    cache = app_for(s, start_refresher=False).extensions["extender"].cache

    def seen() -> float | None:
        """The node's ratio in this refresh (None once it is missing or stale)."""
        table = cache.refresh().table
        j, i = table.column["deadline_miss_ratio"], table.index.get("killed-node")
        if i is None or time.time() - table.sampled_at[i, j] > s.cache.max_staleness_s:
            return None
        return float(table.values[i, j])

    wait_until(lambda: seen() == 0.9, timeout_s=30, interval_s=0.3, what="the pushed ratio")
    pushed = time.time()
    wait_until(lambda: seen() is None, timeout_s=30, interval_s=0.5, what="the ratio to age out")
    assert time.time() - pushed >= 2  # not before the max age (6 s after the push) nears
    assert 'worker="w-killed"' in requests.get(f"{shared_gateway.url}/metrics", timeout=5).text
