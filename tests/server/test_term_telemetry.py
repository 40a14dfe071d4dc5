"""`extender_node_score_term{node,term}`: what each term gave the reference pod, bounded."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import WITH_POD, StaticSource, app_for, healthy, sample, settings

NODES = ["node-0", "node-1", "node-2"]
NOW = 1_800_000_000.0


def metrics_page(**monitoring: Any) -> str:
    s = settings(monitoring=monitoring, **WITH_POD) if monitoring else settings(**WITH_POD)
    values = healthy(NODES, cpu_utilisation={"node-0": 0.8, "node-1": 0.1, "node-2": 0.4})
    app = app_for(s, StaticSource(s, values), start_refresher=False, clock=lambda: NOW)
    app.extensions["extender"].cache.refresh()
    return app.test_client().get("/metrics").data.decode()


def terms_of(text: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == "extender_node_score_term":
                out.setdefault(found.labels["node"], {})[found.labels["term"]] = found.value
    return out


def test_terms_add_up_to_each_nodes_score_and_follow_the_cpu_value() -> None:
    text = metrics_page()
    terms = terms_of(text)
    assert set(terms) == set(NODES)
    # The default profile's weighted terms the nodes report (GPU terms do not count for the
    # reference pod, which asks for none).
    assert set(terms["node-0"]) == {"cpu_utilisation", "memory_available_ratio",
                                    "network_receive_bytes", "network_transmit_bytes",
                                    "disk_io_now", "disk_throughput", "deadline_miss_ratio",
                                    "node_cpu_power_watts"}
    for node in NODES:
        score = sample(text, "extender_node_score", node=node)
        assert score is not None
        assert sum(terms[node].values()) == pytest.approx(score, abs=0.5)  # score is rounded
    cpu = {node: terms[node]["cpu_utilisation"] for node in NODES}
    # cpu weight 3 of 9 (GPU weights do not count, nor the power term: no node reports power
    # here), scored with the reference pod's core added (score_with_pod): node-1 at 0.1 of 32
    # cores gives 3/9 * 10 * (1 - 0.1 - 1/32).
    assert all(terms[node]["node_cpu_power_watts"] == 0 for node in NODES)
    assert cpu["node-1"] == pytest.approx(10 * 3 / 9 * (1 - 0.1 - 1 / 32), abs=1e-3)
    assert cpu["node-1"] > cpu["node-2"] > cpu["node-0"]


def test_terms_are_absent_above_the_node_limit_and_when_switched_off() -> None:
    for text in (metrics_page(term_telemetry_max_nodes=2), metrics_page(term_telemetry=False)):
        assert terms_of(text) == {}
        assert "extender_node_score_term" not in text.replace(
            "# HELP extender_node_score_term", "").replace("# TYPE extender_node_score_term", "")
        # The per-node totals stay.
        assert sample(text, "extender_node_score", node="node-1") is not None
    assert set(terms_of(metrics_page(term_telemetry_max_nodes=3))) == set(NODES)


def test_a_node_limit_below_one_is_a_config_error() -> None:
    from extender.errors import ConfigError

    with pytest.raises(ConfigError, match="monitoring.term_telemetry_max_nodes"):
        settings(monitoring={"term_telemetry_max_nodes": 0})
