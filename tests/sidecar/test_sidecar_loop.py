"""Closing the loop: task events -> sidecars -> real Pushgateway -> real Prometheus (honor_labels)
-> the extender's cache -> filter and prioritize answers and /api/v1/nodes.

Only the sidecars' series exist in this Prometheus: every other catalog term is missing and, under
the shipped `missing_data: neutral`, dropped with its weight, so the deadline term alone orders
the nodes and the shipped filter (`deadline_miss_ratio above 0.50`) alone rejects.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
