"""Sidecars -> real Pushgateway -> real Prometheus (honor_labels) -> the extender's PromQL."""

from __future__ import annotations

import pytest

from extender import localserver
from extender.localserver import wait_until
from extender.sidecar.events import TaskEnd, TaskStart
from extender.sidecar.service import Sidecar, build_sidecar
from tests.sidecar.support import ManualClock, by_node, gateway_values, make_settings

pytestmark = pytest.mark.prometheus

QUERY = "max by (node) (deadline_miss_ratio)"


def sidecar(gateway: str, node: str, worker: str, clock: ManualClock) -> Sidecar:
    return build_sidecar(make_settings(), node=node, worker=worker, pushgateway=gateway,
                         clock=clock).start()


def finish(car: Sidecar, clock: ManualClock, task_id: str, seconds: float) -> None:
    car.tracker.start(TaskStart(id=task_id, type="fit", expected_seconds=2.0))
    clock.advance(seconds)
    car.tracker.end(TaskEnd(id=task_id))


def test_miss_ratio_per_node_reaches_promql_with_the_node_label_and_the_worst_worker(
        shared_gateway: localserver.LocalServer,
        gateway_prometheus: localserver.LocalServer) -> None:
    clock = ManualClock()
    slow = sidecar(shared_gateway.url, "e2e-slow", "w1", clock)
    slow_peer = sidecar(shared_gateway.url, "e2e-slow", "w2", clock)
    fast = sidecar(shared_gateway.url, "e2e-fast", "w1", clock)
    try:
        for i in range(4):  # limit 4 s: 3 of 4 miss on the slow worker
            finish(slow, clock, f"s{i}", 10.0 if i else 1.0)
            finish(slow_peer, clock, f"p{i}", 1.0)
            finish(fast, clock, f"f{i}", 1.0)

        def both_nodes() -> dict[str, float] | None:
            ratios = by_node(gateway_prometheus.url, QUERY)
            wanted = {k: v for k, v in ratios.items() if k.startswith("e2e-")}
            return wanted if wanted.get("e2e-slow") == 0.75 and "e2e-fast" in wanted else None

        ratios = wait_until(both_nodes, timeout_s=30, what=f"{QUERY} for both nodes")
        assert ratios == {"e2e-slow": 0.75, "e2e-fast": 0.0}
        # honor_labels kept the sidecar's labels instead of prefixing them with exported_.
        series = by_node(gateway_prometheus.url, 'deadline_tasks_total{job="extract-deadline"}')
        assert "e2e-slow" in series
    finally:
        for car in (slow, slow_peer, fast):
            car.stop()
    for node, worker in (("e2e-slow", "w1"), ("e2e-slow", "w2"), ("e2e-fast", "w1")):
        assert gateway_values(shared_gateway.url, node, worker) is None
