"""Server surfaces: shadow mode, explanations, events, readiness, our own /metrics."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from extender import localserver
from extender.kube import ApiBinder, ApiEventSink
from tests.support import WITH_POD, RecordingBinder, StaticSource, app_for, fixture, healthy, sample, settings

NODES = ["node-0", "node-1", "node-2", "node-3"]
NOW = 1_800_000_000.0  # a fixed clock: data ages are exact
REQUEST = {**fixture("names-0001-prioritize-cache-plain.json")["request"], "NodeNames": NODES}


def app_with(values: dict[str, dict[str, float]] | None = None, **sections: Any) -> Flask:
    s = settings(**sections)
    source = StaticSource(s, values or healthy(NODES, cpu_utilisation={
        "node-0": 0.95, "node-1": 0.10, "node-2": 0.40, "node-3": 0.70}))
    app = app_for(s, source, start_refresher=False, clock=lambda: NOW)
    app.extensions["extender"].cache.refresh()
    return app


def test_shadow_mode_answers_neutrally_but_records_the_real_decision() -> None:
    app = app_with(server={"shadow": True})
    client = app.test_client()
    filtered = client.post("/filter", json=REQUEST).get_json()
    assert filtered["NodeNames"] == NODES and filtered["FailedNodes"] == {}
    scores = client.post("/prioritize", json=REQUEST).get_json()
    assert {h["Score"] for h in scores} == {0}
    decisions = client.get("/api/v1/decisions").get_json()["decisions"]
    assert decisions[0]["verb"] == "prioritize" and decisions[0]["shadow"] is True
    assert decisions[0]["chosen"] == "node-1"
    assert decisions[1]["rejected"] == {"node-0": "cpu 95% > 90%"}


def test_decision_explains_each_term_and_sums_to_the_score() -> None:
    client = app_with(**WITH_POD).test_client()
    client.post("/prioritize", json=REQUEST)
    decision = client.get("/api/v1/decisions?pod=default/cache-plain&limit=1").get_json()["decisions"][0]
    best = decision["nodes"][0]
    assert best["node"] == decision["chosen"] == "node-1"
    assert best["score"] == round(sum(t["contribution"] for t in best["terms"]))
    cpu = next(t for t in best["terms"] if t["metric"] == "cpu_utilisation")
    # With score_with_pod the profile scores usage with the pod's own requests added,
    # and says so: node-1 is at 10% of its cores before the pod.
    assert cpu["value"] > 0.10 and cpu["weight"] == 3 and cpu["fresh"] is True
    assert "with this pod" in cpu["note"]
    assert best["data_age_s"] == 0.0


def test_filter_decision_explains_the_rejected_nodes_and_the_only_one_left() -> None:
    client = app_with(**WITH_POD).test_client()
    client.post("/filter", json=REQUEST)
    decision = client.get("/api/v1/decisions?limit=1").get_json()["decisions"][0]
    assert decision["verb"] == "filter" and decision["chosen"] is None
    [rejected] = decision["nodes"]
    assert (rejected["node"], rejected["passed"], rejected["reason"]) == (
        "node-0", False, "cpu 95% > 90%")
    cpu = next(t for t in rejected["terms"] if t["metric"] == "cpu_utilisation")
    # The rule judged the node as it is (95%); the scored term adds the pod (score_with_pod).
    assert cpu["value"] == pytest.approx(0.95 + 0.1 / 32) and "with this pod" in cpu["note"]

    client.post("/filter", json={**REQUEST, "NodeNames": ["node-0", "node-2"]})
    decision = client.get("/api/v1/decisions?limit=1").get_json()["decisions"][0]
    assert decision["chosen"] == "node-2"
    assert [(n["node"], n["passed"]) for n in decision["nodes"]] == [("node-2", True),
                                                                    ("node-0", False)]


def test_decisions_filter_by_pod_and_validate_limit() -> None:
    client = app_with().test_client()
    client.post("/filter", json=REQUEST)
    assert client.get("/api/v1/decisions?pod=other/pod").get_json()["decisions"] == []
    assert len(client.get("/api/v1/decisions?pod=cache-plain").get_json()["decisions"]) == 1
    bad = client.get("/api/v1/decisions?limit=lots")
    assert bad.status_code == 400 and "limit" in bad.get_json()["error"]


def test_prioritize_winner_counts_as_load_for_the_next_pod() -> None:
    client = app_with(values=healthy(NODES, cpu_utilisation={n: 0.5 for n in NODES})).test_client()
    winners = []
    for i in range(4):
        pod = {**REQUEST["Pod"], "metadata": {**REQUEST["Pod"]["metadata"], "name": f"p{i}",
                                               "uid": f"u{i}"}}
        pod["spec"] = {**pod["spec"], "containers": [{"name": "c", "resources": {
            "requests": {"cpu": "8", "memory": "1Gi"}}}]}
        answer = client.post("/prioritize", json={**REQUEST, "Pod": pod}).get_json()
        best = max(answer, key=lambda h: (h["Score"], [-ord(c) for c in h["Host"]]))
        winners.append(best["Host"])
    assert len(set(winners)) == 4  # a burst of four big pods spreads over four equal nodes
    assert sample(client.get("/metrics").data, "extender_placements_total",
                  source="prioritize") == 4.0


def test_metrics_count_rejections_by_reason_and_expose_reference_scores() -> None:
    client = app_with().test_client()
    client.post("/filter", json=REQUEST)
    text = client.get("/metrics").data
    assert sample(text, "extender_nodes_rejected_total", reason="cpu") == 1.0
    assert sample(text, "extender_node_score", node="node-1") is not None
    assert sample(text, "extender_request_duration_seconds_count", verb="filter") == 1.0
    assert sample(text, "extender_prometheus_up") == 1.0


def test_rejections_are_counted_per_node() -> None:
    hot = {n: 0.95 for n in NODES[:3]}
    client = app_with(values=healthy(NODES, cpu_utilisation={**hot, "node-3": 0.2})).test_client()
    assert len(client.post("/filter", json=REQUEST).get_json()["FailedNodes"]) == 3
    assert sample(client.get("/metrics").data, "extender_nodes_rejected_total", reason="cpu") == 3.0


def test_readyz_stays_ready_before_the_first_refresh_and_says_so() -> None:
    s = settings()
    app = app_for(s, StaticSource(s, {}), start_refresher=False)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "degraded" and ready.get_json()["refreshes"] == 0


def test_selfcheck_reports_empty_entries() -> None:
    report = app_with().test_client().get("/api/v1/selfcheck").get_json()
    assert report["ok"] is False
    assert "gpu_utilisation" in report["empty_entries"]  # no GPUs in this cluster
    assert "cpu_utilisation" not in report["empty_entries"]


class FakeCoreApi:
    def __init__(self) -> None:
        self.bindings: list[tuple[str, Any, dict[str, Any]]] = []
        self.events: list[tuple[str, Any]] = []

    def create_namespaced_binding(self, namespace: str, body: Any, **kwargs: Any) -> None:
        self.bindings.append((namespace, body, kwargs))

    def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> None:
        self.events.append((namespace, body))


def test_api_binder_posts_a_binding_to_the_node() -> None:
    api = FakeCoreApi()
    ApiBinder(api).bind("ns", "pod", "uid-1", "node-7")
    namespace, body, kwargs = api.bindings[0]
    assert namespace == "ns" and body.target.name == "node-7" and body.target.kind == "Node"
    assert body.metadata.name == "pod" and body.metadata.uid == "uid-1"
    assert kwargs["_request_timeout"] > 0


def test_pod_events_are_written_off_the_request_path() -> None:
    api = FakeCoreApi()
    sink = ApiEventSink(api)
    s = settings(server={"pod_events": True})
    app = app_for(s, StaticSource(s, healthy(NODES)), events=sink, start_refresher=False)
    app.extensions["extender"].cache.refresh()
    app.test_client().post("/prioritize", json=REQUEST)
    localserver.wait_until(lambda: api.events, timeout_s=10, what="an event")
    namespace, event = api.events[0]
    assert namespace == "default" and event.involved_object.name == "cache-plain"
    assert event.reason == "MetricsAwareDecision" and "4 candidates" in event.message
    assert event.message.startswith("prioritize") and "; best node-" in event.message
    app.test_client().post("/filter", json={**REQUEST, "NodeNames": ["node-2"]})
    localserver.wait_until(lambda: len(api.events) > 1, timeout_s=10, what="a second event")
    assert api.events[1][1].message.endswith("; placed on node-2, the only node left")


def test_event_sink_drops_when_full_instead_of_blocking() -> None:
    class Blocked(FakeCoreApi):
        def create_namespaced_event(self, namespace: str, body: Any, **kwargs: Any) -> None:
            import threading

            threading.Event().wait()  # never returns

    sink = ApiEventSink(Blocked())
    app = app_with()
    app.test_client().post("/filter", json=REQUEST)
    decision = app.extensions["extender"].decisions._ring[-1]
    for _ in range(1100):
        sink.decision(decision)
    assert sink.dropped >= 99


def test_requests_before_the_first_refresh_are_answered_neutrally() -> None:
    s = settings()
    app = app_for(s, StaticSource(s, {}), start_refresher=False)
    client = app.test_client()
    assert client.post("/filter", json=REQUEST).get_json()["NodeNames"] == NODES
    scores = client.post("/prioritize", json=REQUEST).get_json()
    assert {h["Score"] for h in scores} == {s.cache.missing_score}


def test_one_feasible_node_with_bind_served_is_counted_once_by_bind() -> None:
    s = settings(server={"bind_enabled": True})
    binder = RecordingBinder()
    app = app_for(s, StaticSource(s, healthy(NODES, cpu_utilisation={
        "node-0": 0.95, "node-1": 0.10, "node-2": 0.40, "node-3": 0.70})),
        binder=binder, start_refresher=False, clock=lambda: NOW)
    app.extensions["extender"].cache.refresh()
    client = app.test_client()
    uid = REQUEST["Pod"]["metadata"].get("uid") or ""
    # node-0 fails the CPU filter: one node left, kube-scheduler skips prioritize and binds.
    binder.pods[("default", "cache-plain")] = REQUEST["Pod"]
    filtered = client.post("/filter", json={**REQUEST, "NodeNames": ["node-0", "node-1"]})
    assert filtered.get_json()["NodeNames"] == ["node-1"]
    client.post("/bind", json={"PodName": "cache-plain", "PodNamespace": "default",
                               "PodUID": uid, "Node": "node-1"})
    assert binder.bound == ["node-1"]
    metrics = client.get("/metrics").data
    assert sample(metrics, "extender_placements_total", source="bind") == 1.0
    assert sample(metrics, "extender_placements_total", source="filter") is None


def test_gpu_profile_keeps_fgds_best_nodes_from_kube_state_metrics_allocation() -> None:
    nodes = ["busy", "idle", "nodata"]
    values = healthy(nodes, cpu_utilisation={n: 0.2 for n in nodes})
    values.update({
        "cpu_allocatable_cores": {"busy": 96, "idle": 96},
        "cpu_requested_cores": {"busy": 40, "idle": 0},
        "memory_allocatable_bytes": {"busy": 2**39, "idle": 2**39},
        "memory_requested_bytes": {"busy": 2**36, "idle": 0},
        "gpus_allocatable": {"busy": 8, "idle": 8},
        "gpus_requested": {"busy": 7, "idle": 0},
    })
    s = settings()
    app = app_for(s, StaticSource(s, values), start_refresher=False, clock=lambda: NOW)
    app.extensions["extender"].cache.refresh()
    pod = {**REQUEST["Pod"], "metadata": {**REQUEST["Pod"]["metadata"],
                                           "annotations": {"extract.io/policy": "gpu"}}}
    pod["spec"] = {**pod["spec"], "containers": [{"name": "c", "resources": {
        "requests": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}}}]}
    answer = app.test_client().post("/filter", json={**REQUEST, "Pod": pod,
                                                     "NodeNames": nodes}).get_json()
    # FGD fills the node with one GPU left rather than breaking into a whole idle 8-GPU node;
    # the node without kube-state-metrics data is not judged on fragmentation.
    assert answer["NodeNames"] == ["busy", "nodata"]
    assert "fragments GPUs" in answer["FailedNodes"]["idle"]
