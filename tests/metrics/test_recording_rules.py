"""Recording rules: which query each refresh sends (`cache.recording_rules`), the fallback and
its warnings, the generated rule files and their validation (no Prometheus; the real one is in
test_recording_rules_prometheus.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from extender.errors import ConfigError
from extender.metrics import rules
from extender.metrics.cache import Fetcher, MetricsCache
from extender.metrics.rules import recorded_query
from extender.monitoring.answers import selfcheck
from extender.policies.engine import Engine
from extender.service import Extender
from extender.settings import Settings, load_settings
from tests.policies.test_risk import with_catalog
from tests.support import CONFIG, REPO, StaticSource, healthy, settings

NODES = ["a", "b"]
RECORDED = {"cpu_utilisation": "instance:extender_cpu_utilisation:ratio_rate1m",
            "cpu_cores": "instance:extender_cpu_cores:count",
            "network_receive_bytes": "instance:extender_network_receive_bytes:rate1m",
            "network_transmit_bytes": "instance:extender_network_transmit_bytes:rate1m",
            "disk_throughput": "instance:extender_disk_throughput_bytes:rate1m",
            "cpu_requested_cores": "node:extender_cpu_requested_cores:sum",
            "memory_requested_bytes": "node:extender_memory_requested_bytes:sum",
            "gpus_requested": "node:extender_gpus_requested:sum"}
"""The shipped catalog's recorded entries (default rate window 1m)."""


def values() -> dict[str, dict[str, float]]:
    return healthy(NODES, cpu_utilisation={"a": 0.2, "b": 0.7},
                   cpu_requested_cores={"a": 3.0, "b": 5.5},
                   memory_requested_bytes={"a": 2.0**30, "b": 2.0**31},
                   gpus_requested={"a": 1.0, "b": 0.0})


def refresh(s: Settings, source: StaticSource, cache: MetricsCache | None = None
            ) -> MetricsCache:
    cache = cache or MetricsCache(s, Fetcher(s, source))
    cache.refresh()
    return cache


def raw_queries(s: Settings, source: StaticSource) -> set[str]:
    recorded = {s.metric(name).query for name in RECORDED}
    return recorded & set(source.queries)


def test_the_shipped_catalog_records_the_heavy_entries() -> None:
    s = settings()
    assert {e.name: e.recorded for e in s.catalog if e.recorded} == RECORDED
    # `$rate_window` is substituted in the names as in the queries: rules of another window
    # are other series.
    other = settings(cache={"rate_window": "2m"})
    assert other.metric("cpu_utilisation").recorded == \
        "instance:extender_cpu_utilisation:ratio_rate2m"
    assert "[2m]" in other.metric("cpu_utilisation").query


def test_auto_reads_the_recorded_series_when_prometheus_has_them() -> None:
    s = settings()
    assert s.cache.recording_rules == "auto"
    source = StaticSource(s, values(), NODES)
    snap = refresh(s, source).current()
    # Entries without data in this source (gpus? no: set above) are all read recorded.
    assert set(snap.status.recorded) == set(RECORDED)
    assert snap.status.rules_missing == {}
    assert raw_queries(s, source) == set()  # no heavy query sent
    assert snap.table.value("b", "cpu_utilisation") == 0.7
    assert snap.table.value("b", "cpu_requested_cores") == 5.5


def test_auto_falls_back_to_the_raw_queries_and_names_the_missing_rules(
        caplog: pytest.LogCaptureFixture) -> None:
    s = settings()
    ruled = refresh(s, StaticSource(s, values(), NODES))
    with_rules = ruled.current()
    source = StaticSource(s, values(), NODES)
    source.rules = False
    with caplog.at_level(logging.WARNING, logger="extender.metrics.cache"):
        cache = refresh(s, source)
        cache.refresh()  # logged once per change, not once per refresh
    snap = cache.current()
    assert snap.status.recorded == ()
    assert snap.status.rules_missing == RECORDED
    assert raw_queries(s, source) == {s.metric(name).query for name in RECORDED}
    # The same table as with the rules.
    assert snap.table.names == with_rules.table.names
    assert snap.table.values.tobytes() == with_rules.table.values.tobytes()
    warnings = [r.getMessage() for r in caplog.records if "recording rules" in r.getMessage()]
    assert len(warnings) == 1
    assert all(name in warnings[0] for name in RECORDED.values())
    assert "raw queries" in warnings[0]
    report = selfcheck(Extender(s, cache, Engine(s)), snap)
    assert report.missing_recording_rules == RECORDED
    assert report.recorded_entries == []
    # A warning, not a failure: the raw queries answer (this source lacks other entries).
    assert report.ok == selfcheck(Extender(s, ruled, Engine(s)), with_rules).ok
    assert report.empty_entries == selfcheck(Extender(s, ruled, Engine(s)), with_rules).empty_entries


def test_auto_picks_up_rules_installed_later(caplog: pytest.LogCaptureFixture) -> None:
    s = settings()
    source = StaticSource(s, values(), NODES)
    source.rules = False
    cache = refresh(s, source)
    assert cache.current().status.rules_missing
    source.rules = True
    source.queries.clear()
    with caplog.at_level(logging.INFO, logger="extender.metrics.cache"):
        snap = cache.refresh()
    assert snap.status.rules_missing == {}
    assert set(snap.status.recorded) == set(RECORDED)
    assert raw_queries(s, source) == set()
    assert any("recording rules found" in r.getMessage() for r in caplog.records)


def test_an_entry_without_data_either_way_is_not_a_missing_rule() -> None:
    s = settings()
    data = values()
    del data["gpus_requested"]  # no GPUs in this cluster: neither series exists
    source = StaticSource(s, data, NODES)
    source.rules = False
    snap = refresh(s, source).current()
    assert "gpus_requested" not in snap.status.rules_missing
    assert snap.status.series["gpus_requested"] == 0


def test_recorded_never_sends_the_raw_queries_and_reports_missing_series() -> None:
    s = settings(cache={"recording_rules": "recorded"})
    source = StaticSource(s, values(), NODES)
    source.rules = False
    cache = refresh(s, source)
    snap = cache.current()
    assert raw_queries(s, source) == set()
    assert snap.status.rules_missing == RECORDED
    assert snap.status.series["cpu_utilisation"] == 0
    report = selfcheck(Extender(s, cache, Engine(s)), snap)
    assert not report.ok and "cpu_utilisation" in report.empty_entries
    assert report.missing_recording_rules == RECORDED


def test_raw_never_asks_for_recorded_series() -> None:
    s = settings(cache={"recording_rules": "raw"})
    source = StaticSource(s, values(), NODES)
    snap = refresh(s, source).current()
    assert not set(source.queries) & set(source.recorded)
    assert snap.status.recorded == () and snap.status.rules_missing == {}
    assert snap.table.value("a", "cpu_requested_cores") == 3.0


def test_recorded_query_ignores_series_older_than_max_staleness() -> None:
    assert recorded_query("node:x:sum", 90) == \
        "node:x:sum and (time() - timestamp(node:x:sum) < 90)"
    s = settings(cache={"max_staleness_s": 45})
    source = StaticSource(s, values(), NODES)
    refresh(s, source)
    assert recorded_query(RECORDED["cpu_cores"], 45) in source.queries


@pytest.mark.parametrize("value", ["on", "yes", "sometimes", 1])
def test_a_bad_recording_rules_value_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="cache.recording_rules"):
        load_settings(CONFIG, environ={}, overrides={"cache": {"recording_rules": value}})


def test_the_switch_can_be_set_from_the_environment() -> None:
    s = load_settings(CONFIG, environ={"EXTENDER_CACHE__RECORDING_RULES": "raw"})
    assert s.cache.recording_rules == "raw"


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "x", "query": "up", "recorded": "not a name"}, "expected a metric name"),
    ({"name": "x", "query": "up", "recorded": "node:x:max",
      "risk": {"window": "10m", "k": 1.0}}, "not with `risk`"),
])
def test_bad_recorded_names_are_config_errors(tmp_path: Path, entry: dict[str, object],
                                              message: str) -> None:
    with pytest.raises(ConfigError, match=rf"metrics\.\d+\.recorded: .*{message}"):
        with_catalog(tmp_path, entry)


def test_two_entries_recording_into_one_series_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="also the recorded series of x"):
        with_catalog(tmp_path, {"name": "x", "query": "up", "recorded": "node:up:max"},
                     {"name": "y", "query": "up", "recorded": "node:up:max"})


# --- the generated files ------------------------------------------------------------------------

SHIPPED = {"rules": REPO / "config/recording-rules.yaml",
           "prometheusrule": REPO / "manifests/components/monitoring/recording-rules.yaml"}


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_the_shipped_rule_files_are_the_generated_ones(kind: str) -> None:
    # One source of truth: `make recording-rules` rewrites both from config/.
    assert SHIPPED[kind].read_text() == rules.document(settings(), kind), \
        f"{SHIPPED[kind]} is out of date: run `make recording-rules`"


def test_the_plain_file_and_the_prometheusrule_carry_the_same_groups() -> None:
    plain = yaml.safe_load(SHIPPED["rules"].read_text())
    operator = yaml.safe_load(SHIPPED["prometheusrule"].read_text())
    assert operator["apiVersion"] == "monitoring.coreos.com/v1"
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"] == plain
    (group,) = plain["groups"]
    s = settings()
    assert group["interval"] == "15s"
    assert {r["record"]: r["expr"] for r in group["rules"]} == {
        name: s.metric(entry).query for entry, name in RECORDED.items()}


def test_each_rule_keeps_the_labels_of_its_entrys_node_identity() -> None:
    s = settings()
    for entry in rules.recorded_entries(s):
        kept = {"node"} if entry.node_labels == ("node",) else {"instance", "node"}
        assert set(entry.node_labels) <= kept
        assert f"by ({', '.join(sorted(kept))})" in entry.query, entry.name


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown recording rules format"):
        rules.document(settings(), "json")
