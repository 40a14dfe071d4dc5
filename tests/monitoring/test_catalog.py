"""Loading config/monitoring.yaml: validation errors name file, key and reason; history ranges."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from extender.errors import ConfigError
from extender.monitoring.catalog import load_for, load_monitoring_catalog, render
from extender.monitoring.query import RequestError, parse_duration, parse_time, time_range
from tests.support import settings

NOW = 1_800_000_000.0


def write(tmp_path: Path, metrics: list[dict[str, object]], **top: object) -> Path:
    path = tmp_path / "monitoring.yaml"
    path.write_text(yaml.safe_dump({"metrics": metrics, **top}))
    return path


def metric(**levels: object) -> dict[str, object]:
    return {"name": "m", "unit": "ratio", "description": "d", "levels": levels}


def test_shipped_catalog_loads_with_every_template_rendered() -> None:
    catalog = load_for(settings())
    assert len(catalog.metrics) >= 30
    for m in catalog.metrics:
        for level in m.levels:
            assert "{{" not in m.level(level).query
    assert "[1m]" in catalog.metric("cpu_usage_cores").level("pod").query  # cache.rate_window


@pytest.mark.parametrize(("levels", "message"), [
    ({"rack": "q"}, "metrics.0.levels.rack: unknown level"),
    ({"node": "rate(x[{{windw}}])"}, r"metrics.0.levels.node.query: unknown parameter \{\{windw\}\}"),
    ({"node": "x{{ y"}, "malformed placeholder"),
    ({"pod": {"query": "q", "cache": "cpu_utilisation"}}, "only the node level is cached"),
    ({"node": {"query": "q", "cache": "nope"}}, "'nope' is not in the scoring catalog"),
    ({}, "declare at least one level"),
    ({"node": {"query": "q", "colour": 1}}, "colour"),
])
def test_bad_levels_are_reported_with_their_key(tmp_path: Path, levels: dict[str, object],
                                               message: str) -> None:
    path = write(tmp_path, [metric(**levels)], params={"window": "1m"})
    with pytest.raises(ConfigError, match=message):
        load_monitoring_catalog(path, cache_entries={"cpu_utilisation"})


def test_duplicate_and_badly_named_metrics_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate metric 'm'"):
        load_monitoring_catalog(write(tmp_path, [metric(node="q"), metric(node="q")]))
    bad = {**metric(node="q"), "name": "CPU-Use"}
    with pytest.raises(ConfigError, match="expected lower_snake_case"):
        load_monitoring_catalog(write(tmp_path, [bad]))


def test_params_come_from_defaults_file_then_environment(tmp_path: Path) -> None:
    path = write(tmp_path, [metric(node="rate(x[{{window}}]) # {{partition_namespace}}")],
                 params={"window": "2m"}, discovery={"namespace": "work"})
    assert load_monitoring_catalog(path, defaults={"window": "1m"}).metrics[0].level("node").query \
        == "rate(x[2m]) # work"
    loaded = load_monitoring_catalog(path, environ={"MONITORING_PARAMS__WINDOW": "30s"})
    assert loaded.metrics[0].level("node").query == "rate(x[30s]) # work"


def test_render_collapses_whitespace_of_folded_yaml() -> None:
    assert render("sum(\n  x )  {{a}}", {"a": "y"}, "here") == "sum( x ) y"


def test_time_formats_and_durations() -> None:
    assert parse_time("1800000000.5", NOW, "start") == 1800000000.5
    assert parse_time("-15m", NOW, "start") == NOW - 900
    utc = dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC).timestamp()
    assert parse_time("2027-01-15T08:00:00Z", NOW, "start") == utc
    assert parse_time("2027-01-15T10:00:00+02:00", NOW, "start") == utc
    assert parse_time("2027-01-15T08:00:00", NOW, "start") == utc  # no zone: UTC
    assert parse_duration("30s", "step") == 30 and parse_duration("1.5", "step") == 1.5
    assert parse_duration("250ms", "step") == 0.25
    with pytest.raises(RequestError, match="step: must be > 0"):
        parse_duration("0", "step")
    with pytest.raises(RequestError, match="start: expected Unix seconds, RFC 3339"):
        parse_time("yesterday", NOW, "start")


def test_history_range_counts_points_inclusively_and_bounds_them() -> None:
    span = time_range("-60s", None, "15s", NOW, 100)
    assert (span.end - span.start, span.points) == (60, 5)
    with pytest.raises(RequestError, match="is 61 points per series, the limit is 10: use step >= 7s"):
        time_range("-60s", None, "1s", NOW, 10)
    with pytest.raises(RequestError, match="is before start"):
        time_range("-10s", "-20s", None, NOW, 10)
