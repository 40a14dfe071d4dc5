"""Bad input gets a clear error in the verb's result type and loses nothing; never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import fixture, sample

POD = fixture("names-0000-filter-cache-plain.json")["request"]["Pod"]


def post(app: Flask, path: str, data: Any) -> Any:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return app.test_client().post(path, data=body, content_type="application/json")


@pytest.mark.parametrize("verb", ["filter", "prioritize", "bind", "preempt"])
def test_malformed_json_gets_400_with_error(make_app: Callable[..., Flask], verb: str) -> None:
    response = post(make_app(), f"/{verb}", b'{"Pod": {"metadata": ')
    assert response.status_code == 400
    assert "invalid" in response.get_json()["Error"]


def test_wrong_types_get_400_naming_the_field(make_app: Callable[..., Flask]) -> None:
    response = post(make_app(), "/filter", {"Pod": POD, "NodeNames": "node-1"})
    assert response.status_code == 400
    assert "NodeNames" in response.get_json()["Error"]


def test_missing_pod_gets_400(make_app: Callable[..., Flask]) -> None:
    response = post(make_app(), "/filter", {"NodeNames": ["node-1"]})
    assert response.status_code == 400
    assert response.get_json()["Error"] == "Pod is required"


def test_unparsable_resource_quantity_gets_400(make_app: Callable[..., Flask]) -> None:
    pod = json.loads(json.dumps(POD))
    pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "lots"
    response = post(make_app(), "/filter", {"Pod": pod, "NodeNames": ["node-1"]})
    assert response.status_code == 400
    assert "invalid quantity 'lots'" in response.get_json()["Error"]


def test_empty_node_list_keeps_the_mode(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    names = post(app, "/filter", {"Pod": POD, "NodeNames": [], "Nodes": None}).get_json()
    assert names["NodeNames"] == [] and names["Nodes"] is None
    nodes = post(app, "/filter", {"Pod": POD, "NodeNames": None, "Nodes": {"items": []}}).get_json()
    assert nodes["Nodes"] == {"items": []} and nodes["NodeNames"] is None
    assert post(app, "/prioritize", {"Pod": POD, "NodeNames": []}).get_json() == []


def test_ten_megabyte_body_gets_413(make_app: Callable[..., Flask]) -> None:
    names = [f"node-{i}-{'x' * 40}" for i in range(220_000)]
    body = json.dumps({"Pod": POD, "NodeNames": names}).encode()
    assert len(body) > 10 * 2**20
    response = post(make_app(), "/filter", body)
    assert response.status_code == 413
    assert "limit" in response.get_json()["Error"]


def test_unknown_nodes_pass_with_the_missing_score_by_default(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    result = post(app, "/filter", {"Pod": POD, "NodeNames": ["node-1", "ghost"]}).get_json()
    assert result["NodeNames"] == ["node-1", "ghost"]
    scores = post(app, "/prioritize", {"Pod": POD, "NodeNames": ["node-1", "ghost"]}).get_json()
    assert scores[1] == {"Host": "ghost", "Score": 0}
    assert scores[0]["Score"] > 0


def test_unknown_nodes_get_a_reason_when_configured_to_reject(make_app: Callable[..., Flask]) -> None:
    app = make_app(server={"unknown_nodes": "reject"})
    result = post(app, "/filter", {"Pod": POD, "NodeNames": ["node-1", "ghost"]}).get_json()
    assert result["NodeNames"] == ["node-1"]
    assert "not in the metrics cache" in result["FailedNodes"]["ghost"]


def test_url_prefix_is_honoured(make_app: Callable[..., Flask]) -> None:
    app = make_app("/scheduler")
    assert post(app, "/scheduler/filter", {"Pod": POD, "NodeNames": ["node-1"]}).status_code == 200
    assert post(app, "/filter", {"Pod": POD, "NodeNames": ["node-1"]}).status_code == 404


def test_bad_requests_are_counted_on_metrics(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    post(app, "/filter", b"not json")
    text = app.test_client().get("/metrics").data
    assert sample(text, "extender_requests_total", code="400", verb="filter") == 1.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                      children, max_size=4),
    max_leaves=20,
)
names = st.lists(st.sampled_from(["node-1", "node-5", "ghost", ""]) | st.text(max_size=8),
                 max_size=6)
containers = st.lists(st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=5),
    "resources": st.fixed_dictionaries({}, optional={
        "requests": st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]),
                                    st.sampled_from(["1", "100m", "1Gi", "-1", "x", "1e3", 2, 0.5])
                                    | json_values, max_size=3),
        "limits": json_values}),
}), max_size=3)
pods = st.fixed_dictionaries({}, optional={
    "metadata": st.fixed_dictionaries({}, optional={
        "name": st.text(max_size=5), "namespace": json_values,
        "annotations": st.dictionaries(st.sampled_from(["extract.io/policy", "extract.io/weights"]),
                                       st.text(max_size=30), max_size=2)}),
    "spec": st.fixed_dictionaries({}, optional={"containers": containers,
                                                "initContainers": containers | json_values}),
}) | json_values
bodies = st.fixed_dictionaries({}, optional={
    "Pod": pods, "NodeNames": names | json_values,
    "Nodes": st.fixed_dictionaries({"items": st.lists(st.fixed_dictionaries(
        {"metadata": st.fixed_dictionaries({"name": st.text(max_size=8)})}), max_size=3)})
    | json_values,
}) | json_values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, verb=st.sampled_from(["filter", "prioritize", "preempt", "bind"]))
def test_fuzzed_bodies_never_get_a_5xx(make_app: Callable[..., Flask], body: Any, verb: str) -> None:
    app = _fuzz_app(make_app)
    response = post(app, f"/{verb}", body)
    assert response.status_code in (200, 400), response.data
    assert response.is_json


_APP: list[Flask] = []


def _fuzz_app(make_app: Callable[..., Flask]) -> Flask:
    if not _APP:
        _APP.append(make_app())
    return _APP[0]
