"""The risk aggregates' PromQL against a real Prometheus holding known data.

The data is emulated and exact: 30 minutes of a per-node gauge every 15 s, written as OpenMetrics
and turned into TSDB blocks by `promtool tsdb create-blocks-from openmetrics` (Prometheus'
backfilling), so the expected mean + k·sd and quantile are computed from the very values stored.
The catalog entries go through `load_settings` (query generation and validation) and the
production `Fetcher` (one query per entry, evaluated at one instant).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from extender.demo import launcher
from extender.metrics.cache import Fetcher
from extender.metrics.prometheus import PrometheusSource
from tests.policies.test_risk import with_catalog

pytestmark = pytest.mark.prometheus

STEP_S = 15
NODES = ("node-a", "node-b", "node-c")


def load(node: int, t: float) -> float:
    """A gauge that swings differently per node: the aggregates differ from the last value."""
    return round(0.3 + 0.1 * node + (0.25 - 0.05 * node) * math.sin(t / (97 + 40 * node))
                 + 0.03 * ((int(t) // STEP_S * (node + 3)) % 7), 6)


class Data:
    def __init__(self, end: float) -> None:
        self.end = end
        self.start = end - 1800
        self.times = np.arange(self.start, end + 1, STEP_S, dtype=float)

    def openmetrics(self) -> str:
        lines = ["# HELP risk_load Emulated per-node load.", "# TYPE risk_load gauge"]
        for i, node in enumerate(NODES):
            lines += [f'risk_load{{node="{node}"}} {load(i, t)} {t:.0f}' for t in self.times]
        return "\n".join([*lines, "# EOF", ""])

    def steps(self, node: int, at: float, window: float, step: float, closed: bool) -> np.ndarray:
        """EXPR at the subquery's steps: multiples of `step` in [at - window, at] (Prometheus
        2.x) or (at - window, at] (3.x); each sees the last sample at or before it."""
        first = math.ceil((at - window) / step) * step
        grid = np.arange(first, at + step / 2, step)
        if not closed:
            grid = grid[grid > at - window]
        return np.array([load(node, math.floor(t / STEP_S) * STEP_S) for t in grid])


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Data, bool]]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    workdir = tmp_path_factory.mktemp("prometheus-risk")
    # Aligned to the hour's 30 s grid, well inside the 1 h retention, ending 2 minutes ago.
    import time

    data = Data(math.floor((time.time() - 120) / 60) * 60)
    source = workdir / "input.om"
    source.write_text(data.openmetrics())
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source),
                    str(workdir / "data")], check=True, capture_output=True, timeout=120)
    server = launcher.prometheus([], workdir=workdir).start()
    try:
        info = requests.get(f"{server.url}/api/v1/status/buildinfo", timeout=5).json()["data"]
        closed = int(info["version"].split(".")[0]) < 3  # 3.x made ranges left-open
        yield server.url, data, closed
    finally:
        server.stop()


def fetch(url: str, tmp_path: Path, *entries: dict[str, object], at: float) -> dict[str, dict[str, float]]:
    s = with_catalog(tmp_path, *entries, prometheus={"url": url, "retries": 0})
    table, status = Fetcher(s, PrometheusSource(s.prometheus)).collect(at)
    names = [e["name"] for e in entries]
    for name in names:
        assert name not in status.errors, status.errors
    return {str(name): {node: table.value(node, str(name)) for node in NODES} for name in names}


def test_mean_plus_k_sd_over_a_window_is_what_prometheus_returns(
        backfilled: tuple[str, Data, bool], tmp_path: Path) -> None:
    url, data, closed = backfilled
    at = data.end - 300
    entries = (
        {"name": "load", "query": "max by (node) (risk_load)", "node_labels": ["node"],
         "direction": "info"},
        {"name": "load_risk", "node_labels": ["node"],
         "risk": {"of": "load", "window": "10m", "resolution": "30s", "k": 1.5}},
        {"name": "load_p90", "node_labels": ["node"], "query": "max by (node) (risk_load)",
         "risk": {"window": "5m", "resolution": "1m", "quantile": 0.9}},
    )
    got = fetch(url, tmp_path, *entries, at=at)
    for i, node in enumerate(NODES):
        window = data.steps(i, at, 600, 30, closed)
        assert len(window) == (21 if closed else 20)
        assert got["load"][node] == pytest.approx(load(i, at))
        assert got["load_risk"][node] == pytest.approx(window.mean() + 1.5 * window.std(),
                                                       rel=1e-9)
        assert got["load_risk"][node] != pytest.approx(got["load"][node], abs=1e-3)
        p90 = data.steps(i, at, 300, 60, closed)
        assert got["load_p90"][node] == pytest.approx(np.quantile(p90, 0.9), rel=1e-9)


def test_the_shipped_style_entry_over_a_rate_expression_parses(
        backfilled: tuple[str, Data, bool], tmp_path: Path) -> None:
    url, data, _ = backfilled
    # The catalog's own cpu_utilisation expression (rate inside the subquery) must be valid
    # PromQL; this Prometheus has no node-exporter data, so it answers with no series.
    s = with_catalog(tmp_path, {"name": "cpu_utilisation_risk", "unit": "ratio",
                                "risk": {"of": "cpu_utilisation", "k": 1.0}},
                     prometheus={"url": url, "retries": 0})
    samples = PrometheusSource(s.prometheus).query(s.metric("cpu_utilisation_risk").query,
                                                   data.end)
    assert samples == []
