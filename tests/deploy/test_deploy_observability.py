"""Alerts and the dashboard: valid for Prometheus and Grafana, and about metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from extender.partition.settings import load_partition_settings
from tests.deploy.conftest import MANIFESTS, REPO, find, render, write_config

DASHBOARD = MANIFESTS / "components/monitoring/dashboards/extract-extender.json"
EXTERNAL_METRICS = {
    "up": "Prometheus, per target",
    "push_time_seconds": "Pushgateway, per pushed group",
    "scheduler_schedule_attempts_total": "kube-scheduler",
    "scaph_host_power_microwatts": "Scaphandre",
    "DCGM_FI_DEV_POWER_USAGE": "dcgm-exporter",
}
_METRIC_DEF = re.compile(r"\b(Counter|Gauge|Histogram|Summary)(MetricFamily)?\(\s*\"([a-z_:]+)\"")
_PROMQL_NOISE = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),                                    # strings
    re.compile(r"\{[^}]*\}"),                                            # label matchers
    re.compile(r"\[[^\]]*\]"),                                           # ranges
    re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
]
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


def exposed_metrics() -> set[str]:
    """Every series name our code exposes (prometheus_client suffixes included)."""
    names = set()
    for source in (REPO / "extender").rglob("*.py"):
        for kind, family, name in _METRIC_DEF.findall(source.read_text()):
            if kind == "Counter":
                base = name.removesuffix("_total")
                names |= {base + "_total"} if family else {base + "_total", base + "_created"}
            elif kind in ("Histogram", "Summary"):
                names |= {name + s for s in ("_bucket", "_sum", "_count")}
            else:
                names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (function names and keywords excluded)."""
    for noise in _PROMQL_NOISE:
        expr = noise.sub(" ", expr)
    words = re.findall(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()", expr)
    return {w for w in words if w not in _KEYWORDS}


def rule_groups() -> list[dict[str, Any]]:
    rule = find(render("manifests/overlays/production"), "PrometheusRule", "extract-extender")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"])
            for panel in dashboard["panels"] for target in panel["targets"]]


def test_metric_name_extraction_skips_functions_labels_and_numbers() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, verb) (rate(a_bucket{verb="x{y}"}[5m]))) '
            '/ 1e6 > on (node) group_left (pod) b or absent(c{job="d"}) unless time() - e')
    assert metric_names(expr) == {"a_bucket", "b", "c", "e"}


def test_code_exposes_the_metrics_the_deployment_relies_on() -> None:
    # The scan of extender/ is what the next two tests trust: make sure it finds something.
    assert {"extender_requests_total", "extender_request_duration_seconds_bucket",
            "partition_workers_desired", "deadline_miss_ratio"} <= exposed_metrics()


def test_alerts_use_only_metrics_that_exist() -> None:
    known = exposed_metrics() | set(EXTERNAL_METRICS)
    for group in rule_groups():
        for rule in group["rules"]:
            assert metric_names(rule["expr"]) <= known, rule["alert"]


def test_dashboard_panels_use_only_metrics_that_exist() -> None:
    known = exposed_metrics() | set(EXTERNAL_METRICS)
    exprs = dashboard_exprs()
    assert exprs
    for title, expr in exprs:
        assert metric_names(expr) <= known, title


def test_dashboard_shows_what_an_operator_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    wanted = {
        "decisions/s": "extender_requests_total",
        "latency": "extender_request_duration_seconds_bucket",
        "rejected nodes by reason": "extender_nodes_rejected_total",
        "per-node scores": "extender_node_score",
        "what each term gave": "extender_node_score_term",
        "miss ratio": "deadline_miss_ratio",
        "host energy": "scaph_host_power_microwatts",
        "GPU energy": "DCGM_FI_DEV_POWER_USAGE",
    }
    assert {topic for topic, metric in wanted.items() if metric not in used} == set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_config_map_is_labelled_for_grafanas_sidecar() -> None:
    config_map = find(render("manifests/overlays/production"), "ConfigMap",
                      "extract-extender-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["extract-extender.json"]) == \
        json.loads(DASHBOARD.read_text())


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    if not shutil.which("promtool"):
        pytest.skip("promtool missing: run hack/install-deps.sh (Debian package prometheus)")
    path = tmp_path / "alerts.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_promtool_accepts_the_rules(rules_file: Path) -> None:
    done = promtool("check", "rules", str(rules_file))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rejects_a_broken_rule(rules_file: Path) -> None:
    rules_file.write_text(rules_file.read_text().replace("> 90", "> > 90", 1))
    assert promtool("check", "rules", str(rules_file)).returncode != 0


def test_alerts_fire_as_specified(rules_file: Path) -> None:
    shutil.copy(Path(__file__).with_name("alerts_test.yaml"), rules_file.parent)
    done = promtool("test", "rules", str(rules_file.parent / "alerts_test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_monitors_point_at_ports_that_exist() -> None:
    objects = render("manifests/overlays/production")
    service = find(objects, "Service", "extender")
    monitor = find(objects, "ServiceMonitor", "extender")
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    pod_monitor = find(objects, "PodMonitor", "partition-controller")
    spec = find(objects, "Deployment", "partition-controller")["spec"]["template"]["spec"]
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in \
        {p["name"] for c in spec["containers"] for p in c["ports"]}
    pushgateway = find(objects, "ServiceMonitor", "deadline-pushgateway")
    assert pushgateway["spec"]["endpoints"][0]["honorLabels"] is True


def test_operator_guide_lists_every_alert() -> None:
    guide = (REPO / "docs" / "deploy.md").read_text()
    table = guide.partition("| Alert | Fires when | Severity |")[2].partition("\n\n")[0]
    documented = set(re.findall(r"^\| ([A-Z][A-Za-z]+) \|", table, re.MULTILINE))
    shipped = {rule["alert"] for group in rule_groups() for rule in group["rules"]}
    assert documented == shipped


def test_sidecar_pod_monitor_matches_the_dev_worker_template(tmp_path: Path) -> None:
    objects = render("manifests/overlays/dev")
    template = load_partition_settings(write_config(objects, tmp_path) / "partition.yaml")
    monitor = find(objects, "PodMonitor", "deadline-sidecar")
    labels = template.pod_template["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    sidecar = next(c for c in template.pod_template["spec"]["containers"]
                   if endpoint["port"] in {p["name"] for p in c.get("ports", [])})
    port = next(p["containerPort"] for p in sidecar["ports"] if p["name"] == endpoint["port"])
    assert f"--listen=0.0.0.0:{port}" in sidecar["args"]
    # The same identity labels as the Pushgateway grouping key.
    assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"node", "worker"}


def test_dashboard_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["type"] in {"timeseries", "stat", "bargauge", "gauge", "table"}, panel["title"]
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_the_monitoring_component_ships_the_catalogs_recording_rules() -> None:
    # The same groups as the plain rules file (both generated from config/catalog.yaml).
    rule = find(render("manifests/overlays/production"), "PrometheusRule",
                "extract-extender-recording-rules")
    plain = yaml.safe_load((REPO / "config/recording-rules.yaml").read_text())
    assert rule["spec"] == plain
    records = {r["record"] for g in plain["groups"] for r in g["rules"]}
    assert "node:extender_cpu_requested_cores:sum" in records
