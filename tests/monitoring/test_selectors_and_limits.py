"""Selectors against real series, limits and bad requests: clear 4xx answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from extender import localserver
from tests.monitoring.conftest import Stack, app_settings
from tests.monitoring.world import PARTITION_NAMESPACE
from tests.support import app_for

pytestmark = pytest.mark.prometheus


def get(client: FlaskClient, metric: str, **params: str) -> Any:
    return client.get(f"/api/v1/metrics/{metric}", query_string=params)


def labels(answer: Any, key: str) -> set[str]:
    assert answer.status_code == 200, answer.json
    return {s["labels"][key] for s in answer.json["series"]}


def eventually(check: Any, what: str) -> None:
    localserver.wait_until(check, timeout_s=30, interval_s=0.5, what=what)


@pytest.fixture(scope="module")
def client(stack: Stack) -> FlaskClient:
    return stack.app.test_client()


@pytest.fixture(scope="module")
def limited(stack: Stack) -> Iterator[Flask]:
    """An extender on the same Prometheus with tiny limits."""
    app = app_for(app_settings(stack.monitoring_yaml, stack.prometheus_url,
                                  max_series=2, max_points_per_series=10), start_refresher=False)
    yield app


def pods_on(stack: Stack, node: str) -> set[str]:
    return {pod.name for pod, where in stack.world.pods.values() if where == node}


def test_node_selector_at_node_pod_and_container_level(stack: Stack, client: FlaskClient) -> None:
    node = next(where for _, where in stack.world.pods.values())
    eventually(lambda: labels(get(client, "cpu_utilisation", selector=f"node={node}"), "node")
               == {node}, "cached node values")
    assert labels(get(client, "memory_available_bytes", selector=f"node={node}"), "node") == {node}
    assert labels(get(client, "cpu_requested_cores", level="pod", selector=f"node={node}"),
                  "pod") == pods_on(stack, node)
    assert labels(get(client, "memory_requested_bytes", level="container",
                      selector=f"node={node}"), "pod") == pods_on(stack, node)


def test_namespace_pod_and_container_selectors(client: FlaskClient) -> None:
    assert labels(get(client, "cpu_requested_cores", level="pod", selector="namespace=shop"),
                  "pod") == {"web-0", "web-1"}
    answer = get(client, "cpu_requested_cores", level="container",
                 selector="namespace=shop,pod=web-0,container=proxy")
    assert [(s["labels"], s["value"]) for s in answer.json["series"]] == [
        ({"namespace": "shop", "pod": "web-0", "container": "proxy"}, 0.2)]
    assert labels(get(client, "pods_running", level="namespace", selector="namespace=batch"),
                  "namespace") == {"batch"}


def test_pod_label_selectors_join_kube_pod_labels(stack: Stack, client: FlaskClient) -> None:
    eventually(lambda: labels(get(client, "memory_requested_bytes", level="pod",
                                  selector="label.app=web"), "pod") == {"web-0", "web-1"},
               "kube_pod_labels scraped")
    assert labels(get(client, "memory_requested_bytes", level="pod",
                      selector="label.app=web,label.tier=front"), "pod") == {"web-0"}
    workers = {pod for pod, _ in stack.world.workers()}
    assert labels(get(client, "cpu_requested_cores", level="pod",
                      selector="label.extract.io/partition=default"), "pod") == workers


def test_worker_selector_means_its_node_or_its_pod(stack: Stack, client: FlaskClient) -> None:
    worker, node = stack.world.workers()[0]
    eventually(lambda: labels(get(client, "deadline_miss_ratio", selector=f"worker={worker}"),
                              "node") == {node}, "deadline miss ratio in the cache")
    answer = get(client, "deadline_miss_ratio", level="pod", selector=f"worker={worker}")
    assert [(s["labels"], s["value"]) for s in answer.json["series"]] == [
        ({"namespace": PARTITION_NAMESPACE, "pod": worker}, stack.world.miss_ratio[worker])]
    assert labels(get(client, "cpu_requested_cores", level="container",
                      selector=f"worker={worker}"), "pod") == {worker}
    missing = get(client, "cpu_utilisation", selector="worker=partition-worker-nowhere")
    assert missing.status_code == 404
    assert "no partition worker named 'partition-worker-nowhere'" in missing.json["error"]


@pytest.mark.parametrize(("metric", "params", "status", "message"), [
    ("cpu_utilisation", {"selector": 'node=a"}) or vector(1'}, 400,
     "value must be a Kubernetes name"),
    ("cpu_utilisation", {"selector": "node=~openb.*"}, 400, "only key=value (equality) terms"),
    ("cpu_utilisation", {"selector": "host=a"}, 400, "unknown key 'host'"),
    ("cpu_utilisation", {"selector": "namespace=shop"}, 400,
     "namespace is not available at level node (at this level: node, worker)"),
    ("pods_running", {"level": "namespace", "selector": "worker=w"}, 400,
     "worker is not available at level namespace"),
    ("cpu_utilisation", {"level": "pod"}, 400, "has no level 'pod'; it has cluster, node"),
    ("cpu_utilisation", {"level": "rack"}, 400, "(levels are cluster, node, namespace, pod"),
    ("cpu_utilisation", {"levle": "node"}, 400, "unknown parameter 'levle'"),
    ("cpu_utilisation", {"step": "5s"}, 400, "end and step need start"),
    ("cpu_utilisation", {"start": "yesterday"}, 400, "start: expected Unix seconds, RFC 3339"),
    ("cpu_utilisation", {"start": "-1m", "step": "-5"}, 400, "step: must be > 0"),
    ("cpu_utilisation", {"start": "-1m", "end": "-2m"}, 400, "is before start"),
    ("no_such_metric", {}, 404, "no metric 'no_such_metric' in the catalog"),
])
def test_bad_requests_get_a_4xx_saying_what_is_wrong(client: FlaskClient, metric: str,
                                                     params: dict[str, str], status: int,
                                                     message: str) -> None:
    answer = get(client, metric, **params)
    assert answer.status_code == status
    assert message in answer.json["error"]


def test_too_many_points_per_series_is_a_400_naming_the_step_to_use(limited: Flask) -> None:
    answer = get(limited.test_client(), "cpu_utilisation", start="-60s", step="1s")
    assert answer.status_code == 400
    assert answer.json["error"] == ("start..end every 1s is 61 points per series, the limit is 10: "
                                    "use step >= 7s or a shorter range")
    assert get(limited.test_client(), "cpu_utilisation", level="cluster", start="-60s",
               step="7s").status_code == 200


def test_too_many_series_is_a_422_asking_to_narrow_the_selector(limited: Flask) -> None:
    client = limited.test_client()
    for params in ({"level": "pod"}, {"level": "pod", "start": "-3s", "step": "1"}):
        answer = get(client, "cpu_requested_cores", **params)
        assert answer.status_code == 422
        assert answer.json["error"].startswith("cpu_requested_cores at level pod has ")
        assert "the limit is 2: narrow the selector (keys at this level: node, namespace, pod" \
            in answer.json["error"]
    assert get(client, "cpu_requested_cores", level="pod", selector="namespace=shop").status_code \
        == 200
