"""The OpenAPI document covers every /api/v1 route; the typed client speaks the same names."""

from __future__ import annotations

import re
from typing import Any

import pytest

from extender import localserver
from extender.client import MonitoringApiError, MonitoringClient, selector_text
from tests.monitoring.conftest import Stack
from tests.support import StaticSource, app_for, settings


@pytest.fixture(scope="module")
def document() -> tuple[Any, dict[str, Any]]:
    s = settings()
    app = app_for(s, StaticSource(s, {}), start_refresher=False)
    answer = app.test_client().get("/api/v1/openapi.json")
    assert answer.status_code == 200
    return app, answer.json


def test_every_api_route_is_documented_and_every_documented_path_exists(document) -> None:
    app, doc = document
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes == documented
    assert doc["openapi"].startswith("3.")


def test_every_schema_reference_resolves(document) -> None:
    _, doc = document
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(doc).replace("'", '"')))
    assert refs and refs <= set(doc["components"]["schemas"])
    name = next(p for p in doc["paths"]["/api/v1/metrics/{name}"]["get"]["parameters"]
                if p["name"] == "name")
    assert "cpu_utilisation" in name["schema"]["enum"]


def test_selector_text_joins_terms() -> None:
    assert selector_text({"namespace": "shop", "label.app": "web"}) == "namespace=shop,label.app=web"
    assert selector_text("node=a") == "node=a" and selector_text(None) is None


@pytest.mark.prometheus
def test_the_client_reads_catalog_values_history_and_targets_over_http(stack: Stack) -> None:
    api = MonitoringClient(stack.app_url, timeout_s=5)
    assert "power_watts" in {m.name for m in api.metrics()}
    pods = localserver.wait_until(lambda: (answer := api.current(
        "cpu_requested_cores", level="pod", selector={"namespace": "shop"})).series and answer,
        timeout_s=30, what="kube-state-metrics scraped")
    assert (pods.unit, {s.labels["pod"]: s.value for s in pods.series}) == (
        "cores", {"web-0": 1.2, "web-1": 2.0})
    history = api.history("cpu_requested_cores", level="cluster", start="-4s", step=2)
    assert history.step == 2 and all(len(s.points) <= 3 for s in history.series)
    assert {g.labels["worker"] for g in api.sd_targets()} == {p for p, _ in stack.world.workers()}
    nodes = api.nodes().nodes
    assert nodes and api.selfcheck().kubernetes_nodes == len(nodes)
    assert api.decisions(limit=5).decisions == []
    with pytest.raises(MonitoringApiError) as info:
        api.current("cpu_utilisation", selector="node=~x")
    assert info.value.status == 400 and "equality" in info.value.message
    with pytest.raises(MonitoringApiError) as info:
        api.node("no-such-node")
    assert info.value.status == 404
