"""`extender learn` end to end on a tiny replay, and the simulator running the learned policy."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from extender.cli import main
from extender.errors import ExtenderError
from extender.learning.cli import learn_from_replay
from extender.openb import load_nodes, load_pods
from extender.policies.fragmentation import TargetWorkload
from extender.policies.learned import FeatureSet, read_model
from extender.settings import load_settings
from extender.sim import policies as registry
from extender.sim.replay import run_replay
from tests.support import CONFIG, OPENB


def head(source: Path, target: Path, rows: int, every: int = 1) -> Path:
    with source.open(newline="") as handle:
        lines = list(csv.reader(handle))
    kept = [lines[0], *lines[1:][::every][:rows]]
    with target.open("w", newline="") as out:
        csv.writer(out).writerows(kept)
    return target


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """16 nodes and the first 1500 tasks of the CPU-heavy list: enough contention for misses."""
    tmp = tmp_path_factory.mktemp("tiny-replay")
    return (head(OPENB / "openb_node_list_all_node.csv", tmp / "nodes.csv", 16, every=100),
            head(OPENB / "openb_pod_list_cpu050.csv", tmp / "pods.csv", 1500))


def test_extender_learn_end_to_end_on_a_tiny_replay(tiny: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = tiny
    out = tmp_path / "model.json"
    code = main(["learn", "--from", "replay", "--nodes", str(nodes), "--pods", str(pods),
                 "--speedup", "40", "--behaviour", "kube-default,random", "--rounds", "5",
                 "--min-leaf", "10", "--test-pods", str(pods), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    model = read_model(out)
    assert model.file.training.source == "replay"
    assert "pods.csv x40 under random" in printed and f"wrote {out}" in printed
    assert [m.name for m in model.file.evaluation] == ["train", "test: rest of the time",
                                                       "test: pods.csv"]
    train, rest, other = model.file.evaluation
    assert train.positives > 0 and train.samples == model.file.training.samples
    # By time: the test part is the last 30% of each replay's placements.
    assert rest.samples == pytest.approx(0.3 * (train.samples + rest.samples), abs=3)
    assert other.samples == train.samples + rest.samples  # the same list again, all its time

    # The simulator runs the learned policy with it, and the term follows the model.
    settings = load_settings(CONFIG, environ={}, overrides={"policy": {"learned_model": str(out)}})
    n, p = load_nodes(nodes), load_pods(pods)
    workload = TargetWorkload.from_tasks(p.cpu_milli.tolist(), p.num_gpu.tolist(),
                                         p.gpu_milli.tolist(), p.spec)
    assert "learned" in registry.names(settings)
    policy = registry.build("learned", nodes=n, workload=workload, settings=settings)
    assert isinstance(policy, registry.OursPolicy) and "learned" in policy.engine.derived_terms
    result = run_replay(n, p, policy, name="learned", seed=42, speedup=40)
    assert result.placed > 0 and result.tasks == len(p)


def test_features_at_placement_are_what_the_extender_sees(tiny: tuple[Path, Path]) -> None:
    """The recorded row of a placement equals the term's own features for that node."""
    from extender.learning.dataset import REPLAY_FEATURES, Recorder

    nodes, pods = tiny
    settings = load_settings(CONFIG, environ={})
    n, p = load_nodes(nodes), load_pods(pods)
    workload = TargetWorkload.from_mix([(1000, 0, 0, 1)])
    feed = registry.OursPolicy(settings, "metrics-aware", n, workload)
    features = FeatureSet(REPLAY_FEATURES, settings.cache.max_staleness_s)
    recorder = Recorder(registry.BASELINES["kube-default"], feed, features)
    run_replay(n, p, recorder, name="x", seed=1, speedup=40)
    assert len(recorder.rows) > 100
    rows = np.vstack(recorder.rows)
    column = REPLAY_FEATURES.index
    # Utilisation is the lagged observation: never above what the requests allow by much, and
    # the pod's own demand makes `fit` exactly utilisation + its share of the cores.
    share = rows[:, column("pod.cpu_cores")] / rows[:, column("node.cpu_cores")]
    assert np.allclose(rows[:, column("fit.cpu_utilisation_after")],
                       rows[:, column("node.cpu_utilisation")] + share)
    assert np.allclose(rows[:, column("fit.cpu_free_after_cores")],
                       rows[:, column("alloc.cpu_free_cores")] - rows[:, column("pod.cpu_cores")])


def test_training_on_a_single_class_is_a_clear_error(tiny: tuple[Path, Path]) -> None:
    nodes, pods = tiny
    with pytest.raises(ExtenderError, match="single class"):
        learn_from_replay(nodes, pods, settings=load_settings(CONFIG, environ={}),
                          behaviours=["kube-default"], speedups=[1], seed=42, train_share=0.7,
                          rounds=2, min_samples_in_leaf=5, progress=lambda _: None)
