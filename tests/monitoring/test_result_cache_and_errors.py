"""The named-metric blueprint with an injected source: result cache, error mapping, timeouts."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from extender.errors import PrometheusUnreachable, QueryFailed
from extender.metrics.prometheus import RangeSeries, Sample
from extender.monitoring.routes import default_source
from tests.support import StaticSource, app_for, settings

NOW = 1_800_000_000.0


class FakeSource:
    """Counts queries; answers one pod series, or raises `error`."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.error: Exception | None = None

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        self.calls.append(promql)
        if self.error:
            raise self.error
        return [Sample({"namespace": "ns", "pod": "p", "job": "x", "instance": "y"}, 1.5, NOW - 2)]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[RangeSeries]:
        self.calls.append(promql)
        if self.error:
            raise self.error
        return [RangeSeries({"namespace": "ns", "pod": "p"}, ((start, 1.0), (end, 2.0)))]


def app_with(source: FakeSource, **monitoring: Any) -> Flask:
    """The app with an empty metrics cache and `source` answering the Monitoring API."""
    s = settings(monitoring=monitoring)
    return app_for(s, StaticSource(s, {}), history=source, start_refresher=False,
                   clock=lambda: NOW)


def test_identical_questions_within_the_ttl_cost_one_query_and_answers_keep_level_labels() -> None:
    source = FakeSource()
    client = app_with(source).test_client()
    for _ in range(3):
        answer = client.get("/api/v1/metrics/cpu_usage_cores?level=pod")
        assert answer.json["series"] == [
            {"labels": {"namespace": "ns", "pod": "p"}, "value": 1.5, "timestamp": NOW - 2,
             "age_s": 2.0}]
    client.get("/api/v1/metrics/cpu_usage_cores?level=pod&selector=namespace=ns")
    assert len(source.calls) == 2  # the selector makes another query


def test_failures_are_not_cached_and_map_to_502_and_503() -> None:
    source = FakeSource()
    client = app_with(source).test_client()
    source.error = QueryFailed("bad_data: parse error")
    answer = client.get("/api/v1/metrics/cpu_usage_cores?level=pod")
    assert answer.status_code == 502
    assert answer.json["error"] == "Prometheus rejected the query: bad_data: parse error"
    source.error = PrometheusUnreachable("timed out")
    answer = client.get("/api/v1/metrics/cpu_usage_cores?level=pod&start=-1m&step=30s")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    source.error = None
    assert client.get("/api/v1/metrics/cpu_usage_cores?level=pod").status_code == 200
    assert len(source.calls) == 3


def test_history_answers_carry_the_rounded_range_and_points() -> None:
    client = app_with(FakeSource()).test_client()
    body = client.get("/api/v1/metrics/cpu_usage_cores",
                      query_string={"level": "pod", "start": str(NOW - 60.4), "step": "30s"}).json
    assert (body["start"], body["end"], body["step"], body["unit"]) == (NOW - 60, NOW, 30.0, "cores")
    assert body["series"] == [{"labels": {"namespace": "ns", "pod": "p"},
                               "points": [[NOW - 60, 1.0], [NOW, 2.0]]}]


def test_the_monitoring_source_uses_the_monitoring_timeout() -> None:
    s = settings(monitoring={"query_timeout_s": 0.75})
    assert default_source(s).settings.query_timeout_s == 0.75
    assert default_source(s).settings.url == s.prometheus.url


@pytest.mark.parametrize("level", ["cluster", "node"])
def test_a_cached_metric_with_no_cache_data_answers_empty_not_an_error(level: str) -> None:
    source = FakeSource()
    answer = app_with(source).test_client().get(f"/api/v1/metrics/cpu_utilisation?level={level}")
    assert answer.status_code == 200
    assert answer.json["source"] == ("cache" if level == "node" else "prometheus")
    assert len(source.calls) == (0 if level == "node" else 1)
