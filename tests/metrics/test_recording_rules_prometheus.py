"""Recording rules in a real Prometheus over the emulated exporters: the recorded path gives the
very table the raw queries give, a Prometheus without the rules falls back to the raw queries
with the missing rules named, rules loaded later are picked up, and broken rule files are caught.

The rules are the shipped ones (`extender recording-rules` from config/) for a 5 s rate window,
evaluated every second instead of every 15 s, so that the test needs seconds: a 1 m rate over
series younger than a minute is still settling.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from extender import localserver
from extender.demo import launcher
from extender.demo.emulator import Emulator, EmulatorServer, load_fleet
from extender.metrics import rules
from extender.metrics.cache import Fetcher, MetricsCache, Snapshot
from extender.metrics.prometheus import PrometheusSource
from extender.monitoring.answers import selfcheck
from extender.policies.engine import Engine
from extender.policies.model import NodeTable
from extender.service import Extender
from extender.settings import Settings
from tests.metrics.test_recording_rules import RECORDED, SHIPPED
from tests.support import OPENB, settings

pytestmark = pytest.mark.prometheus

RULE_INTERVAL = "1s"
RATE_WINDOW = "5s"
RECORDED_5S = {entry: name.replace("rate1m", "rate5s") for entry, name in RECORDED.items()}


def base(**sections: dict[str, object]) -> Settings:
    """The shipped settings with a 5 s rate window (the recorded names carry it too)."""
    cache = {"rate_window": RATE_WINDOW, **sections.pop("cache", {})}
    return settings(cache=cache, **sections)


@dataclass
class Stack:
    emulator: Emulator
    server: EmulatorServer
    names: list[str]
    ruled: localserver.LocalServer
    bare: localserver.LocalServer
    rules_path: Path

    def settings(self, prom: localserver.LocalServer, mode: str = "auto") -> Settings:
        return base(prometheus={"url": prom.url, "query_timeout_s": 5, "retries": 0},
                    cache={"recording_rules": mode})


def write_rules(path: Path) -> Path:
    path.write_text(rules.document(base(), interval=RULE_INTERVAL))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # OpenB nodes of every kind, GPU ones included (gpus_requested has series).
    emulator = Emulator(load_fleet(OPENB / "openb_node_list_all_node.csv", limit=8, seed=3),
                        seed=3)
    rules_path = write_rules(tmp_path_factory.mktemp("rules") / "recording-rules.yaml")
    with EmulatorServer(emulator) as server:
        targets = server.scrape_targets()
        servers: list[localserver.LocalServer] = []
        try:
            ruled = launcher.prometheus(targets, rule_files=[rules_path]).start()
            servers.append(ruled)
            bare = launcher.prometheus(targets).start()
            servers.append(bare)
            yield Stack(emulator, server, [n.name for n in emulator.nodes], ruled, bare,
                        rules_path)
        finally:
            for prom in servers:
                prom.stop()


def cache_for(s: Settings) -> MetricsCache:
    return MetricsCache(s, Fetcher(s, PrometheusSource(s.prometheus)))


def settled(stack: Stack, prom: localserver.LocalServer, *, recorded: bool) -> Snapshot:
    """An auto-mode snapshot once every node has every recorded entry (read recorded or raw, as
    `recorded` says) and CPU utilisation is the emulator's."""
    cache = cache_for(stack.settings(prom))

    def ready() -> Snapshot | None:
        snap = cache.refresh()
        table = snap.table
        path = set(snap.status.recorded) if recorded else set(snap.status.rules_missing)
        ok = path == set(RECORDED) and set(stack.names) <= set(table.names) and all(
            abs(table.value(n, "cpu_utilisation")
                - stack.emulator.reading(n).cpu_utilisation) < 0.02 for n in stack.names)
        return snap if ok else None

    return localserver.wait_until(ready, timeout_s=60, interval_s=0.5,
                                  what=f"settled data on {prom.url}")


def rule_time(url: str) -> float:
    """The last evaluation time of the rule group (every rule of a group shares it)."""
    source = PrometheusSource(settings(prometheus={"url": url}).prometheus)
    found = source.query(f"timestamp({RECORDED_5S['cpu_utilisation']})")
    assert found, "no recorded series"
    return found[0].value


def differences(a: NodeTable, b: NodeTable) -> list[str]:
    if a.names != b.names or a.metrics != b.metrics:
        return [f"names/metrics differ: {a.names} {b.names}"]
    out = []
    for j, metric in enumerate(a.metrics):
        x, y = a.values[:, j], b.values[:, j]
        if x.tobytes() != y.tobytes():
            out.append(f"{metric}: {x.tolist()} != {y.tolist()}")
    return out


def test_the_recorded_path_gives_the_raw_paths_table(stack: Stack) -> None:
    snap = settled(stack, stack.ruled, recorded=True)
    assert snap.status.rules_missing == {} and snap.status.errors == {}
    recorded = Fetcher(stack.settings(stack.ruled, "recorded"),
                       PrometheusSource(stack.settings(stack.ruled).prometheus))
    raw = Fetcher(stack.settings(stack.ruled, "raw"),
                  PrometheusSource(stack.settings(stack.ruled).prometheus))
    # Both evaluated at the rules' last evaluation time: the recorded series hold what the raw
    # queries gave then, bit for bit. A scrape appended just after the rule ran makes the raw
    # query see one sample more: try again at the next evaluation.
    diff: list[str] = []
    for _ in range(10):
        at = rule_time(stack.ruled.url)
        by_rules, status = recorded.collect(at)
        by_queries, _ = raw.collect(at)
        assert set(status.recorded) == set(RECORDED)
        diff = differences(by_rules, by_queries)
        if not diff:
            break
        localserver.wait_until(lambda at=at: rule_time(stack.ruled.url) > at, timeout_s=5,
                               what="the next rule evaluation")
    assert diff == []
    # And the values are the emulator's (the rules compute the right thing, not just the same).
    for name in stack.names:
        truth = stack.emulator.reading(name)
        assert by_rules.value(name, "cpu_cores") == truth.cores
        assert not np.isnan(by_rules.value(name, "cpu_requested_cores"))
    gpu_nodes = [n.name for n in stack.emulator.nodes if n.gpus]
    assert gpu_nodes and all(by_rules.value(n, "gpus_requested") >= 0 for n in gpu_nodes)


def test_the_loaded_rules_are_healthy(stack: Stack) -> None:
    def evaluated() -> list[dict[str, object]] | None:
        body = requests.get(f"{stack.ruled.url}/api/v1/rules", params={"type": "record"},
                            timeout=5).json()
        found = [r for g in body["data"]["groups"] for r in g["rules"]]
        return found if found and all(r.get("lastEvaluation", "").startswith("2")
                                      and not r["lastEvaluation"].startswith("0001")
                                      for r in found) else None

    found = localserver.wait_until(evaluated, timeout_s=20, what="evaluated rules")
    assert {r["name"] for r in found} == set(RECORDED_5S.values())
    assert {r["health"] for r in found} == {"ok"}, [r.get("lastError") for r in found]


def test_without_the_rules_auto_reads_the_raw_queries_and_warns(stack: Stack) -> None:
    s = stack.settings(stack.bare)
    settled(stack, stack.bare, recorded=False)
    cache = cache_for(s)
    snap = cache.refresh()
    assert snap.status.rules_missing == RECORDED_5S and snap.status.recorded == ()
    # The raw path's values: the same queries at the same instant.
    raw, _ = Fetcher(stack.settings(stack.bare, "raw"),
                     PrometheusSource(s.prometheus)).collect(snap.status.started_at)
    assert differences(snap.table, raw) == []
    report = selfcheck(Extender(s, cache, Engine(s)), snap)
    assert report.missing_recording_rules == RECORDED_5S
    assert report.recorded_entries == []
    # `recorded` does not fall back: those entries have no values.
    strict = cache_for(stack.settings(stack.bare, "recorded")).refresh()
    assert {name for name, count in strict.status.series.items() if count == 0} >= set(RECORDED)


def test_rules_loaded_later_are_used_from_the_next_refresh(
        stack: Stack, tmp_path: Path) -> None:
    prom = launcher.prometheus(stack.server.scrape_targets(), workdir=tmp_path).start()
    try:
        settled(stack, prom, recorded=False)
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(launcher.prometheus_config(
            stack.server.scrape_targets(), 1.0, [stack.rules_path])))
        requests.post(f"{prom.url}/-/reload", timeout=10).raise_for_status()
        snap = settled(stack, prom, recorded=True)
        assert snap.status.rules_missing == {}
    finally:
        prom.stop()


def test_prometheus_refuses_a_malformed_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHIPPED["rules"].read_text().replace(" by (node) (", " by (node) ((", 1))
    prom = launcher.prometheus([], rule_files=[bad], workdir=tmp_path)
    # It exits at start-up (wait_until reports the early exit as the timeout's cause).
    with pytest.raises((localserver.ServerError, TimeoutError)):
        prom.start(timeout_s=15)
    assert prom.process is not None and prom.process.poll() not in (None, 0)
    log = (tmp_path / "prometheus.log").read_text()
    assert "loading groups failed" in log and "node:extender_cpu_requested_cores:sum" in log


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool missing: run `make deps` (Debian package prometheus)")
    return path


@pytest.mark.parametrize("kind", ["rules", "prometheusrule"])
def test_promtool_accepts_the_shipped_rules(promtool: str, kind: str, tmp_path: Path) -> None:
    data = yaml.safe_load(SHIPPED[kind].read_text())
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data.get("spec", data)))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(RECORDED)} rules found" in done.stdout


def test_promtool_rejects_a_malformed_rule(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(SHIPPED["rules"].read_text().replace("record: node:", "record: node-", 1))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode != 0
