"""Replay every request recorded from a real kube-scheduler; answers must keep the request's mode."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from flask import Flask

from tests.support import RecordingBinder, all_fixtures

FIXTURES = all_fixtures()


def _load(path: Path) -> tuple[dict, str, str]:
    recorded = json.loads(path.read_text())
    prefix, _, verb = recorded["path"].rpartition("/")
    return recorded, prefix, verb


def test_fixtures_are_present() -> None:
    assert len(FIXTURES) >= 60


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_replayed_request_gets_a_valid_answer_in_the_request_mode(
        path: Path, make_app: Callable[..., Flask]) -> None:
    recorded, prefix, verb = _load(path)
    binder = RecordingBinder()
    app = make_app(prefix, binder=binder)
    body = json.dumps(recorded["request"]).encode()
    response = app.test_client().post(recorded["path"], data=body,
                                      content_type="application/json")
    assert response.status_code == 200, response.data
    answer = response.get_json()
    request = recorded["request"]
    if verb == "filter":
        if request.get("NodeNames") is not None:
            offered = request["NodeNames"]
            assert answer["Nodes"] is None
            passed = answer["NodeNames"]
        else:
            offered = [n["metadata"]["name"] for n in request["Nodes"]["items"]]
            assert answer["NodeNames"] is None
            passed = [n["metadata"]["name"] for n in answer["Nodes"]["items"]]
            # Full Node objects come back verbatim.
            by_name = {n["metadata"]["name"]: n for n in request["Nodes"]["items"]}
            assert all(item == by_name[item["metadata"]["name"]] for item in answer["Nodes"]["items"])
        assert set(passed) <= set(offered)
        assert set(answer["FailedNodes"]) <= set(offered)
        # No node is silently dropped: each offered node passes or has a reason.
        assert set(passed) | set(answer["FailedNodes"]) == set(offered)
        assert answer["Error"] == ""
        if "node-5" in offered:
            assert answer["FailedNodes"]["node-5"] == "cpu 97% > 90%"
    elif verb == "prioritize":
        offered = request["NodeNames"] or [n["metadata"]["name"] for n in request["Nodes"]["items"]]
        assert [h["Host"] for h in answer] == offered
        assert all(isinstance(h["Score"], int) and 0 <= h["Score"] <= 10 for h in answer)
    elif verb == "bind":
        assert answer == {"Error": ""}
        assert binder.calls == [(request["PodNamespace"], request["PodName"], request["PodUID"],
                                 request["Node"])]
    elif verb == "preempt":
        victims = request["NodeNameToMetaVictims"]
        kept = answer["NodeNameToMetaVictims"]
        assert set(kept) <= set(victims)
        assert all(kept[node] == victims[node] for node in kept)
    else:  # pragma: no cover - a new verb in the fixtures must be handled here
        pytest.fail(f"unexpected verb {verb}")


def test_preempt_drops_candidates_our_filter_rejects(make_app: Callable[..., Flask]) -> None:
    recorded, prefix, _ = _load(next(p for p in FIXTURES if "preempt-0012" in p.name))
    request = recorded["request"]
    victims = dict(request["NodeNameToMetaVictims"])
    victims["node-5"] = {"Pods": [{"UID": "u-5"}], "NumPDBViolations": 0}  # node-5 is at 97% CPU
    request = {**request, "NodeNameToMetaVictims": victims}
    answer = make_app(prefix).test_client().post(recorded["path"], json=request).get_json()
    assert "node-5" not in answer["NodeNameToMetaVictims"]
    assert set(answer["NodeNameToMetaVictims"]) == set(victims) - {"node-5"}


def test_full_victims_are_answered_as_meta_victims(make_app: Callable[..., Flask]) -> None:
    recorded, prefix, _ = _load(next(p for p in FIXTURES if "preempt-0012" in p.name))
    pod = recorded["request"]["Pod"]
    victim = {"metadata": {"name": "v", "namespace": "default", "uid": "uid-v"}, "spec": {}}
    request = {"Pod": pod, "NodeNameToVictims": {"node-1": {"Pods": [victim], "NumPDBViolations": 1}},
               "NodeNameToMetaVictims": None}
    answer = make_app(prefix).test_client().post(recorded["path"], json=request).get_json()
    assert answer == {"NodeNameToMetaVictims": {"node-1": {"Pods": [{"UID": "uid-v"}],
                                                           "NumPDBViolations": 1}}}


def test_bind_without_bind_enabled_answers_an_error_and_binds_nothing(
        make_app: Callable[..., Flask]) -> None:
    recorded, prefix, _ = _load(next(p for p in FIXTURES if "bind-0002" in p.name))
    answer = make_app(prefix).test_client().post(recorded["path"], json=recorded["request"])
    assert answer.status_code == 200
    assert "not enabled" in answer.get_json()["Error"]


def test_bind_failure_is_reported_in_error(make_app: Callable[..., Flask]) -> None:
    class FailingBinder:
        def bind(self, *args: str) -> None:
            raise RuntimeError("pods \"x\" not found")

    recorded, prefix, _ = _load(next(p for p in FIXTURES if "bind-0002" in p.name))
    app = make_app(prefix, binder=FailingBinder())
    answer = app.test_client().post(recorded["path"], json=recorded["request"]).get_json()
    assert answer["Error"].startswith("binding failed")


def test_bind_records_the_placement_for_hot_spot_compensation(make_app: Callable[..., Flask]) -> None:
    filter_rec, prefix, _ = _load(next(p for p in FIXTURES if "bind-0000-filter" in p.name))
    bind_rec, _, _ = _load(next(p for p in FIXTURES if "bind-0002" in p.name))
    binder = RecordingBinder()
    pod = filter_rec["request"]["Pod"]
    binder.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
    app = make_app(prefix, binder=binder)
    client = app.test_client()
    client.post(bind_rec["path"], json=bind_rec["request"])  # this replica saw no filter call
    node = bind_rec["request"]["Node"]
    placements = client.get(f"/api/v1/nodes/{node}").get_json()["placements"]
    assert [p["pod"] for p in placements] == ["default/bind-plain"]
    # From the pod as the API server holds it (its requests are below the 0.25-core default for
    # pods without requests only if it has none).
    assert placements[0]["cpu_cores"] == pytest.approx(0.1)


def test_bind_of_a_pod_the_api_cannot_return_records_no_empty_placement(
        make_app: Callable[..., Flask]) -> None:
    bind_rec, prefix, _ = _load(next(p for p in FIXTURES if "bind-0002" in p.name))
    binder = RecordingBinder()  # holds no pod: it was deleted right after binding
    client = make_app(prefix, binder=binder).test_client()
    answer = client.post(bind_rec["path"], json=bind_rec["request"])
    assert answer.status_code == 200 and answer.get_json()["Error"] == ""
    assert binder.calls and client.get(
        f"/api/v1/nodes/{bind_rec['request']['Node']}").get_json()["placements"] == []


def test_answers_are_valid_wire_json(make_app: Callable[..., Flask]) -> None:
    from extender import protocol as wire

    recorded, prefix, _ = _load(next(p for p in FIXTURES if "nodes-0000" in p.name))
    data = make_app(prefix).test_client().post(recorded["path"], json=recorded["request"]).data
    result = msgspec.json.decode(data, type=wire.ExtenderFilterResult)
    assert result.Nodes is not None and len(result.Nodes.items) == 11  # node-5 is rejected
    assert list(result.FailedNodes) == ["node-5"]
