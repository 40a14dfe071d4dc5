"""Risk aggregates (catalog `risk`): the generated PromQL, the validation, scoring and filtering
on them, the explanation, and the simulator's version computed from the observed history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from extender.errors import ConfigError
from extender.policies.engine import Engine
from extender.policies.explain import Breakdown
from extender.policies.model import NodeTable, PodDemand
from extender.settings import RiskAggregate, Settings, load_settings
from extender.sim.history import RiskSeries
from tests.support import CONFIG, REPO

NOW = 1_000_000.0
POD = PodDemand(namespace="ns", name="p", cpu_cores=1, memory_bytes=2**30)
RISK_CPU = {"name": "cpu_utilisation_risk", "unit": "ratio", "direction": "lower_is_better",
            "risk": {"of": "cpu_utilisation", "window": "10m", "resolution": "30s", "k": 1.0}}


def with_catalog(tmp_path: Path, *extra: dict[str, Any], **overrides: Any) -> Settings:
    """The shipped settings with `extra` catalog entries appended."""
    data = yaml.safe_load((REPO / "config" / "catalog.yaml").read_text())
    data["metrics"] = [*data["metrics"], *extra]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(CONFIG, environ={}, overrides={"catalog_file": str(path), **overrides})


def test_mean_plus_k_sd_is_one_subquery_of_the_entry_it_names(tmp_path: Path) -> None:
    s = with_catalog(tmp_path, RISK_CPU)
    base = s.metric("cpu_utilisation").query
    assert "$rate_window" not in base
    sub = f"({base})[10m:30s]"
    assert s.metric("cpu_utilisation_risk").query == (
        f"avg_over_time({sub}) + 1 * stddev_over_time({sub})")


def test_a_quantile_of_its_own_query(tmp_path: Path) -> None:
    entry = {"name": "memory_risk", "query": "node_memory_Active_bytes / node_memory_MemTotal_bytes",
             "risk": {"quantile": 0.95, "window": "1h", "resolution": "1m"}}
    s = with_catalog(tmp_path, entry)
    assert s.metric("memory_risk").query == (
        "quantile_over_time(0.95, (node_memory_Active_bytes / node_memory_MemTotal_bytes)[1h:1m])")


@pytest.mark.parametrize(("risk", "message"), [
    ({"of": "cpu_utilisation"}, "set exactly one of `k`"),
    ({"of": "cpu_utilisation", "k": 1, "quantile": 0.9}, "set exactly one of `k`"),
    ({"of": "cpu_utilisation", "k": -1}, "risk.k: expected a number >= 0"),
    ({"of": "cpu_utilisation", "quantile": 1.5}, "risk.quantile: expected 0..1"),
    ({"of": "cpu_utilisation", "k": 1, "window": "ten minutes"}, "expected a PromQL duration"),
    ({"of": "cpu_utilisation", "k": 1, "window": "1m", "resolution": "5m"},
     "resolution (5m) must be shorter than window (1m)"),
    ({"of": "no_such_metric", "k": 1}, "risk.of: 'no_such_metric' is not a catalog entry"),
    ({"of": "cpu_utilisation_risk", "k": 1}, "is not a catalog entry without risk"),
    ({"k": 1}, "query: required (or set risk.of)"),
    ({"of": "cpu_utilisation", "k": 1, "bogus": 1}, "Object contains unknown field `bogus`"),
])
def test_bad_risk_settings_are_clear_errors(tmp_path: Path, risk: dict[str, Any],
                                            message: str) -> None:
    with pytest.raises(ConfigError, match="catalog.yaml") as error:
        with_catalog(tmp_path, {"name": "cpu_utilisation_risk", "risk": risk})
    assert message in str(error.value)


def test_query_and_of_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set `query` or `risk.of`, not both"):
        with_catalog(tmp_path, {**RISK_CPU, "query": "up"})


def table(s: Settings, rows: dict[str, dict[str, float]]) -> NodeTable:
    metrics = tuple(e.name for e in s.catalog)
    values = np.full((len(rows), len(metrics)), np.nan)
    defaults = {"cpu_cores": 32, "memory_total_bytes": 128 * 2**30, "node_ready": 1,
                "node_pressure": 0, "memory_available_ratio": 0.5}
    for i, node in enumerate(rows):
        for j, metric in enumerate(metrics):
            values[i, j] = rows[node].get(metric, defaults.get(metric, np.nan))
    return NodeTable(names=tuple(rows), metrics=metrics, values=values,
                     sampled_at=np.where(np.isnan(values), np.nan, NOW), built_at=NOW)


def risk_profile(tmp_path: Path) -> Settings:
    return with_catalog(tmp_path, RISK_CPU, policy={"default": "risk", "profiles": {"risk": {
        "filters": [{"metric": "cpu_utilisation_risk", "above": 0.8, "label": "cpu risk"}],
        "weights": {"cpu_utilisation_risk": 1}, "hotspot": {"enabled": False}}}})


def test_scores_and_filters_use_the_aggregate_not_the_current_value(tmp_path: Path) -> None:
    s = risk_profile(tmp_path)
    # `steady` is busier now but stable; `swinging` is idle now but its mean + sd is high.
    rows = {"steady": {"cpu_utilisation": 0.5, "cpu_utilisation_risk": 0.55},
            "swinging": {"cpu_utilisation": 0.1, "cpu_utilisation_risk": 0.75},
            "hot": {"cpu_utilisation": 0.2, "cpu_utilisation_risk": 0.95}}
    out = Engine(s).evaluate(POD, table(s, rows), list(rows), NOW)
    assert out.rejected["hot"].message == "cpu risk 95% > 80%"
    assert out.best() == "steady"
    assert dict(zip(out.names, out.scores, strict=True))["steady"] == 5  # 10 * (1 - 0.55), half up
    # The baseline path gives the same answer.
    decided = Engine(s).decide(POD, table(s, rows), list(rows), NOW)
    assert decided.scores == out.scores and set(decided.rejected) == {"hot"}


def test_the_explanation_says_it_is_a_risk_aggregate_and_with_which_parameters(
        tmp_path: Path) -> None:
    s = risk_profile(tmp_path)
    rows = {"a": {"cpu_utilisation": 0.5, "cpu_utilisation_risk": 0.55}}
    out = Engine(s).evaluate(POD, table(s, rows), list(rows), NOW)
    [node] = Breakdown.of(out, [0]).explain()
    terms = {t.metric: t for t in node.terms}
    assert terms["cpu_utilisation_risk"].note == (
        "risk aggregate: mean + 1·sd of cpu_utilisation over 10m at 30s resolution")
    assert terms["cpu_utilisation_risk"].value == 0.55
    assert terms["cpu_utilisation"].note is None


def test_describe_names_a_quantile() -> None:
    risk = RiskAggregate(quantile=0.95, window="1h", resolution="1m")
    assert risk.describe() == "risk aggregate: p95 over 1h at 1m resolution"


# --- the simulator -----------------------------------------------------------------------------


def test_the_simulator_aggregates_the_values_seen_at_each_resolution_step() -> None:
    series = RiskSeries(RiskAggregate(of="cpu_utilisation", window="2m", resolution="30s", k=2.0))
    assert series.aggregate(0.0) is None
    # Observations at irregular times; each step takes the first observation at or after it.
    seen = {0.0: [0.1, 0.5], 31.0: [0.3, 0.5], 95.0: [0.2, 0.5], 120.0: [0.6, np.nan],
            170.0: [0.4, 0.5]}
    for t, values in seen.items():
        series.record(t, np.array(values))
    # Steps in [170 - 120, 170] = 60, 90, 120, 150: values 0.2 (at 95: steps 60 and 90),
    # 0.6 (step 120), 0.4 (step 150); the second node has no value at step 120.
    got = series.aggregate(170.0)
    assert got is not None
    first = np.array([0.2, 0.2, 0.6, 0.4])
    assert got[0] == pytest.approx(first.mean() + 2 * first.std())
    assert got[1] == pytest.approx(0.5)  # NaN steps are absent, as a missing sample


def test_the_simulator_quantile_interpolates_as_promql() -> None:
    series = RiskSeries(RiskAggregate(of="cpu_utilisation", window="1m", resolution="10s",
                                      quantile=0.9))
    for t in range(0, 70, 10):
        series.record(float(t), np.array([t / 100]))
    got = series.aggregate(60.0)
    assert got is not None
    # PromQL's quantile_over_time: linear interpolation between the sorted values 0.0 .. 0.6.
    assert got[0] == pytest.approx(np.quantile(np.arange(0, 70, 10) / 100, 0.9))


def test_the_simulated_extender_table_carries_the_risk_column(tmp_path: Path) -> None:
    from extender.openb import load_nodes
    from extender.policies.fragmentation import OPENB_DEFAULT_MIX, TargetWorkload
    from extender.sim.policies import OursPolicy
    from extender.sim.replay import Observation
    from tests.support import OPENB

    s = risk_profile(tmp_path)
    nodes = load_nodes(OPENB / "openb_node_list_gpu_node.csv")
    policy = OursPolicy(s, "risk", nodes, TargetWorkload.from_mix(OPENB_DEFAULT_MIX))
    from extender.sim.cluster import Cluster

    view = Cluster(nodes).view()
    n = len(nodes)
    for t, load in ((0.0, 0.2), (30.0, 0.6)):
        util = np.full(n, load)
        policy.observe(Observation(t + 30, t, util, np.zeros(n), np.full(n, np.nan),
                                   np.zeros(n), np.zeros(n)))
        got = policy.table(view)
    column = got.column["cpu_utilisation_risk"]
    assert got.values[0, column] == pytest.approx(0.4 + 1.0 * 0.2)  # mean 0.4, sd 0.2
