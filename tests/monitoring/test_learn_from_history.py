"""`extender learn --from monitoring`: samples from a real Prometheus' history through the
Monitoring API (node metrics, and the deadline sidecars' deadline_miss_ratio as the label), a
model file the `learned` term loads. Small data: the quality of such a model is not evaluated."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from extender.cli import main
from extender.client import MonitoringClient
from extender.learning.dataset import from_monitoring
from extender.policies.learned import provided_features, read_model
from tests.monitoring.conftest import Stack

pytestmark = pytest.mark.prometheus


def test_a_model_learned_from_the_monitoring_api_history(stack: Stack, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    world = stack.world
    worker = next(w for w, ratio in world.miss_ratio.items() if ratio > 0)
    node = dict(world.workers())[worker]
    kept = world.miss_ratio[worker]
    # Ten seconds without misses on one node, then misses again: two classes in the history.
    world.miss_ratio[worker] = 0.0
    try:
        time.sleep(10)
    finally:
        world.miss_ratio[worker] = kept
    time.sleep(8)
    end = time.time()
    start = end - 18
    samples = from_monitoring(MonitoringClient(stack.app_url), start=start, end=end, step_s=1,
                              horizon_s=2, metrics=("cpu_utilisation", "memory_available_ratio",
                                                    "deadline_miss_ratio"))
    assert samples.features == ("node.cpu_utilisation", "node.memory_available_ratio",
                                "node.deadline_miss_ratio")
    assert 0 < samples.positives < len(samples)
    # Samples carry the node's metrics (rates need a few scrapes after Prometheus starts: the
    # first seconds of a fresh session may lack them, and stay NaN, as the term would see).
    assert np.isfinite(samples.x[:, 0]).mean() > 0.5 and np.isfinite(samples.x[:, 1]).mean() > 0.5
    early = samples.position < 0.5
    assert not samples.missed[early & (samples.x[:, 2] == 0)].all()
    out = tmp_path / "live.json"
    code = main(["learn", "--from", "monitoring", "--url", stack.app_url, "--start", str(start),
                 "--end", str(end), "--step", "1s", "--horizon", "2s", "--rounds", "3", "--min-leaf", "2",
                 "--metrics", "cpu_utilisation,memory_available_ratio,deadline_miss_ratio",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    model = read_model(out)
    assert model.file.training.source == "monitoring"
    assert model.file.training.samples > 0 and model.file.evaluation[0].name == "train"
    # The extender over the shipped catalog can feed it.
    catalog = [e.name for e in stack.app.extensions["extender"].settings.catalog]
    assert set(model.features) <= provided_features(catalog, allocation=True)
    assert f"wrote {out}" in printed and node


def test_history_without_deadline_series_is_a_clear_error(stack: Stack) -> None:
    from extender.errors import ExtenderError

    api = MonitoringClient(stack.app_url)
    with pytest.raises(ExtenderError, match="no node-level metric not_a_metric"):
        from_monitoring(api, start=time.time() - 10, end=time.time(), step_s=1, horizon_s=2,
                        metrics=("not_a_metric",))
