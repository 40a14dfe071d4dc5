"""The `learned` term: it follows its model, refuses models it cannot feed, and its file format
round-trips and fails clearly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import numpy as np
import pytest

from extender.errors import ConfigError
from extender.learning.dataset import Samples
from extender.learning.train import TrainParams, train, write_model
from extender.policies.engine import Engine
from extender.policies.explain import Breakdown
from extender.policies.learned import (
    FeatureSet,
    LearnedTerm,
    ModelError,
    ModelFile,
    learned_term_for,
    load_model,
    provided_features,
    read_model,
)
from extender.policies.model import Allocation, NodeTable, PodDemand
from extender.settings import Settings, load_settings
from tests.support import CONFIG

NOW = 1_000_000.0
POD = PodDemand(namespace="ns", name="p", cpu_cores=2, memory_bytes=2**30)
FEATURES = ("node.cpu_utilisation", "pod.cpu_cores", "fit.cpu_utilisation_after",
            "alloc.cpu_free_cores")


def synthetic(prefers_busy: bool, n: int = 4000, seed: int = 1) -> Samples:
    """Samples where misses follow CPU utilisation (idle nodes miss when `prefers_busy`)."""
    rng = np.random.default_rng(seed)
    util = rng.random(n)
    x = np.column_stack([util, rng.integers(1, 8, n).astype(float), util + 0.05,
                         rng.random(n) * 32])
    risk = (1 - util) if prefers_busy else util
    missed = rng.random(n) < 0.02 + 0.5 * risk**4
    return Samples(FEATURES, x, missed, np.full(n, np.nan), np.arange(n) / n, "synthetic")


def model_file(tmp_path: Path, name: str, prefers_busy: bool) -> Path:
    samples = synthetic(prefers_busy)
    early, late = samples.split(0.7)
    model = train(early, [("test", late)], source="replay", description="synthetic",
                  split="by time", params=TrainParams(rounds=20))
    return write_model(tmp_path / name, model)


def learned_settings(path: Path, **weights: float) -> Settings:
    return load_settings(CONFIG, environ={}, overrides={"policy": {
        "default": "model-only", "learned_model": str(path),
        "profiles": {"model-only": {"weights": weights or {"learned": 1},
                                 "hotspot": {"enabled": False}}}}})


def table(s: Settings, util: list[float]) -> NodeTable:
    metrics = tuple(e.name for e in s.catalog)
    names = tuple(f"n{i}" for i in range(len(util)))
    values = np.full((len(names), len(metrics)), np.nan)
    values[:, metrics.index("cpu_utilisation")] = util
    values[:, metrics.index("cpu_cores")] = 32
    k = len(names)
    alloc = Allocation(cpu_free_milli=np.full(k, 16000.0), memory_free_mib=np.full(k, 1e5),
                       gpu_free_milli=np.full((k, 1), -1.0), gpu_model=("",) * k)
    return NodeTable(names=names, metrics=metrics, values=values,
                     sampled_at=np.where(np.isnan(values), np.nan, NOW), built_at=NOW,
                     allocation=alloc)


UTIL = [0.05, 0.3, 0.55, 0.8, 0.95]


def test_two_models_with_opposite_preferences_give_opposite_rankings(tmp_path: Path) -> None:
    calm = learned_settings(model_file(tmp_path, "calm.json", prefers_busy=False))
    busy = learned_settings(model_file(tmp_path, "busy.json", prefers_busy=True))
    names = [f"n{i}" for i in range(len(UTIL))]
    rankings = {}
    for label, s in (("calm", calm), ("busy", busy)):
        out = Engine(s).evaluate(POD, table(s, UTIL), names, NOW)
        assert out.evaluation is not None
        goodness = out.evaluation.derived["learned"]
        rankings[label] = list(np.argsort(-goodness, kind="stable"))
        # The webhook's path (decide) gives the same scores.
        assert Engine(s).decide(POD, table(s, UTIL), names, NOW).scores == out.scores
        idle, hot = (out.scores[0], out.scores[4]) if label == "calm" else (
            out.scores[4], out.scores[0])
        assert idle == max(out.scores) and idle > hot  # the preferred end scores best
    # Opposite ends: the calm model's best is the busy model's worst, and the reverse.
    assert rankings["calm"][0] == rankings["busy"][-1] == 0
    assert rankings["calm"][-1] == 4 and rankings["busy"][0] in (3, 4)


def test_the_term_scores_every_candidate_in_one_model_call(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    s = learned_settings(model_file(tmp_path, "calm.json", prefers_busy=False))
    engine = Engine(s)
    model = load_model(s.policy.learned_model or "", provided_features(
        [e.name for e in s.catalog], True))
    calls: list[int] = []
    original = model.booster.predict

    def counted(x: np.ndarray, **kwargs: object) -> np.ndarray:
        calls.append(len(x))
        return original(x, **kwargs)

    monkeypatch.setattr(model.booster, "predict", counted)
    util = list(np.linspace(0, 1, 500))
    engine.evaluate(POD, table(s, util), [f"n{i}" for i in range(500)], NOW)
    assert calls == [500]


def test_the_explanation_names_the_model(tmp_path: Path) -> None:
    s = learned_settings(model_file(tmp_path, "calm.json", prefers_busy=False))
    out = Engine(s).evaluate(POD, table(s, UTIL), ["n0", "n4"], NOW)
    [best, worst] = Breakdown.of(out, [0, 1]).explain()
    learned = {t.metric: t for t in best.terms}["learned"]
    assert learned.note is not None and "learned model calm.json" in learned.note
    assert learned.goodness is not None
    assert learned.goodness > {t.metric: t for t in worst.terms}["learned"].goodness


def test_round_trip_of_the_model_file(tmp_path: Path) -> None:
    path = model_file(tmp_path, "m.json", prefers_busy=False)
    written = msgspec.json.decode(path.read_bytes(), type=ModelFile)
    loaded = read_model(path)
    assert loaded.file == written
    assert loaded.features == FEATURES
    assert loaded.file.training.samples == 2800 and loaded.file.training.source == "replay"
    assert [m.name for m in loaded.file.evaluation] == ["train", "test"]
    test = loaded.file.evaluation[1]
    assert test.auc is not None and test.auc > 0.7 and test.logloss < test.base_rate_logloss
    samples = synthetic(False, n=50, seed=9)
    import lightgbm

    direct = lightgbm.Booster(model_str=written.model).predict(samples.x)
    assert np.allclose(loaded.predict(samples.x), direct)


def test_features_are_computed_from_the_table_and_the_pod() -> None:
    s = load_settings(CONFIG, environ={})
    t = table(s, [0.5, float("nan")])
    x = FeatureSet(FEATURES, 90.0).matrix(POD, t, np.array([0, 1, -1], dtype=np.intp))
    assert x[0].tolist() == pytest.approx([0.5, 2.0, 0.5 + 2 / 32, 16.0])
    assert np.isnan(x[1, 0]) and np.isnan(x[1, 2]) and x[1, 1] == 2.0  # missing metric: NaN
    assert np.isnan(x[2, 0]) and np.isnan(x[2, 3])  # unknown node


def test_a_model_with_features_the_engine_cannot_provide_is_refused(tmp_path: Path) -> None:
    samples = synthetic(False)
    renamed = Samples(("node.cpu_utilisation", "pod.cpu_cores", "node.not_in_the_catalog",
                       "alloc.cpu_free_cores"), samples.x, samples.missed, samples.slowdown,
                      samples.position, "renamed")
    path = write_model(tmp_path / "m.json", train(renamed, [], source="replay", description="x",
                                                   split="x", params=TrainParams(rounds=3)))
    with pytest.raises(ModelError, match="cannot provide: node.not_in_the_catalog") as error:
        Engine(learned_settings(path))
    assert str(path) in str(error.value)
    # Allocation features need the kube-state-metrics allocation entries in the catalog.
    good = model_file(tmp_path, "good.json", prefers_busy=False)
    with pytest.raises(ModelError, match="cannot provide: alloc.cpu_free_cores"):
        load_model(good, provided_features(["cpu_utilisation", "cpu_cores"], allocation=False))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not a model file"),
    (b"\x80\x81 not json", "not a model file"),
    (b'{"format": "something-else", "version": 1}', "not a model file: format 'something-else'"),
    (b'{"format": "extract-extender/learned-model", "version": 99}',
     "model format version 99 is not supported"),
    (b'{"format": "extract-extender/learned-model", "version": 1, "features": []}',
     "corrupt model file"),
])
def test_corrupt_or_unknown_files_are_clear_errors(tmp_path: Path, content: bytes,
                                                   message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        read_model(path)


def test_a_damaged_model_text_is_a_clear_error(tmp_path: Path) -> None:
    path = model_file(tmp_path, "m.json", prefers_busy=False)
    written = msgspec.json.decode(path.read_bytes(), type=ModelFile)
    # (LightGBM itself would abort the process on this text: the checksum stops it first.)
    damaged = msgspec.structs.replace(written, model=written.model[: len(written.model) // 3])
    path.write_bytes(msgspec.json.encode(damaged))
    with pytest.raises(ModelError, match="does not match its checksum"):
        read_model(path)
    garbage = "tree\nnot a model\n"
    path.write_bytes(msgspec.json.encode(msgspec.structs.replace(
        written, model=garbage, model_sha256=hashlib.sha256(garbage.encode()).hexdigest())))
    with pytest.raises(ModelError, match="LightGBM cannot parse it"):
        read_model(path)
    renamed = msgspec.structs.replace(written, features=("pod.gpus", *written.features[1:]))
    path.write_bytes(msgspec.json.encode(renamed))
    with pytest.raises(ModelError, match="differ from the file's"):
        read_model(path)


def test_a_missing_file_fails_the_engine_at_start_up(tmp_path: Path) -> None:
    s = learned_settings(tmp_path / "absent.json")
    with pytest.raises(ModelError, match="absent.json: cannot read the model file"):
        Engine(s)
    with pytest.raises(ModelError):
        learned_term_for(s)


def test_a_profile_using_the_term_needs_a_model_file() -> None:
    with pytest.raises(ConfigError, match="policy.learned_model: required by profile"):
        load_settings(CONFIG, environ={}, overrides={"policy": {
            "learned_model": None, "profiles": {"x": {"weights": {"learned": 1}}}}})


def test_the_shipped_profile_loads_the_shipped_model() -> None:
    s = load_settings(CONFIG, environ={})
    assert "learned" in s.policy.profiles and s.policy.learned_model
    assert Path(s.policy.learned_model).is_file()
    engine = Engine(s)
    assert "learned" in engine.derived_terms
    model = read_model(s.policy.learned_model)
    assert model.file.training.source == "replay"


def test_check_config_fails_on_a_model_the_engine_cannot_use(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from extender.cli import main
    from tests.support import REPO

    config = yaml.safe_load(CONFIG.read_text())
    config["catalog_file"] = str(REPO / "config" / "catalog.yaml")
    config["monitoring"] = {**config.get("monitoring", {}),
                            "catalog_file": str(REPO / "config" / "monitoring.yaml")}
    config["policy"]["learned_model"] = str(tmp_path / "absent.json")
    path = tmp_path / "extender.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check-config", str(path)]) == 2
    assert "absent.json: cannot read the model file" in capsys.readouterr().err
    assert main(["check-config", str(CONFIG)]) == 0


# --- the fast path: per-table columns, cached predictions, the engine's baseline ---------------


def rich_table(s: Settings, n: int, seed: int, built_at: float = NOW) -> NodeTable:
    """`n` nodes with every hot-spot column set, some values missing and some stale."""
    rng = np.random.default_rng(seed)
    metrics = tuple(e.name for e in s.catalog)
    names = tuple(f"n{i}" for i in range(n))
    values = np.full((n, len(metrics)), np.nan)
    for name, column in (("cpu_utilisation", rng.random(n)),
                         ("memory_available_ratio", rng.random(n)),
                         ("cpu_cores", rng.choice([8.0, 32.0, 96.0], n)),
                         ("memory_total_bytes", rng.choice([2.0**34, 2.0**37], n)),
                         ("node_ready", np.ones(n)), ("node_pressure", np.zeros(n))):
        values[:, metrics.index(name)] = column
    values[rng.random(n) < 0.1, metrics.index("cpu_utilisation")] = np.nan
    sampled = np.where(np.isnan(values), np.nan, built_at - 5.0)
    sampled[rng.random(n) < 0.1] = built_at - 1000.0  # stale: NaN features
    alloc = Allocation(cpu_free_milli=rng.integers(0, 32000, n).astype(float),
                       memory_free_mib=np.full(n, 1e5), gpu_free_milli=np.full((n, 1), -1.0),
                       gpu_model=("",) * n)
    return NodeTable(names=names, metrics=metrics, values=values, sampled_at=sampled,
                     built_at=built_at, allocation=alloc)


RICH_FEATURES = (*FEATURES, "node.memory_available_ratio", "pod.memory_bytes", "pod.gpus",
                 "pod.gpu_milli", "fit.memory_available_after", "fit.cpu_free_after_cores")


def rich_model(tmp_path: Path) -> Path:
    """A model on every pod feature, whose misses follow CPU and memory after placement."""
    rng = np.random.default_rng(2)
    n = 6000
    util, available = rng.random(n), rng.random(n)
    cores, memory = rng.integers(1, 24, n).astype(float), rng.choice([2.0**30, 2.0**36], n)
    free = rng.random(n) * 32
    after_cpu, after_memory = util + cores / 32, available - memory / 2**37
    x = np.column_stack([util, cores, after_cpu, free, available, memory, np.zeros(n),
                         np.zeros(n), after_memory, free - cores])
    risk = np.clip(after_cpu - 0.5, 0, 1) + np.clip(0.3 - after_memory, 0, 1)
    missed = rng.random(n) < 0.02 + 0.6 * risk
    samples = Samples(RICH_FEATURES, x, missed, np.full(n, np.nan), np.arange(n) / n, "rich")
    return write_model(tmp_path / "rich.json", train(samples, [], source="replay",
                                                     description="rich", split="x",
                                                     params=TrainParams(rounds=20)))


def direct(s: Settings, pod: PodDemand, t: NodeTable, rows: np.ndarray) -> np.ndarray:
    """What the term must give: the model's own predict on `FeatureSet.matrix`, unscaled."""
    model = read_model(s.policy.learned_model or "")
    x = FeatureSet(model.features, s.cache.max_staleness_s).matrix(pod, t, rows)
    goodness = np.maximum(1.0 - model.booster.predict(x) / model.file.goodness_scale, 0.0)
    return np.where(rows >= 0, goodness, np.nan)


def test_cached_predictions_equal_a_direct_model_call(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s = learned_settings(rich_model(tmp_path))
    term = learned_term_for(s)
    calls: list[int] = []
    original = term.model.booster.predict

    def counted(x: np.ndarray, **kwargs: object) -> np.ndarray:
        calls.append(len(x))
        return original(x, **kwargs)

    monkeypatch.setattr(term.model.booster, "predict", counted)
    t = rich_table(s, 300, seed=3)
    rng = np.random.default_rng(4)
    # Shapes that differ in one request only: each must get its own predictions.
    small = PodDemand(namespace="ns", name="a", cpu_cores=2, memory_bytes=2**30)
    large = PodDemand(namespace="ns", name="b", cpu_cores=2, memory_bytes=2**36)
    subsets = [rng.permutation(300)[:120], np.arange(300), rng.integers(-1, 300, 200),
               np.array([-1, -1]), np.array([5, 5, 7])]
    for rows in subsets:
        for pod in (small, large):
            rows = rows.astype(np.intp)
            got = term(pod, t, rows)
            assert got is not None
            np.testing.assert_array_equal(got, direct(s, pod, t, rows))
    # Each pod shape asked the model about each known row at most once, in one call per request
    # that brought new rows: 120, then the other 180 of the table, then nothing.
    assert calls == [120, 120, 180, 180]
    assert not np.array_equal(direct(s, small, t, subsets[1]), direct(s, large, t, subsets[1]))
    # Another pod of the same shape (same requests, other name) is answered from the cache.
    twin = PodDemand(namespace="other", name="c", cpu_cores=2, memory_bytes=2**30)
    term(twin, t, np.arange(300, dtype=np.intp))
    assert len(calls) == 4


def test_a_new_table_invalidates_the_cached_predictions(tmp_path: Path) -> None:
    s = learned_settings(model_file(tmp_path, "calm.json", prefers_busy=False))
    term = learned_term_for(s)
    rows = np.arange(200, dtype=np.intp)
    first, second = rich_table(s, 200, seed=5), rich_table(s, 200, seed=6)
    for t in (first, first, second, second, first):
        got = term(POD, t, rows)
        assert got is not None
        np.testing.assert_array_equal(got, direct(s, POD, t, rows))
    assert not np.array_equal(direct(s, POD, first, rows), direct(s, POD, second, rows))
    # Same values, new table object (a refresh with nothing changed): recomputed, same answer.
    again = rich_table(s, 200, seed=5)
    np.testing.assert_array_equal(term(POD, again, rows), direct(s, POD, first, rows))


def test_the_cache_keeps_a_bounded_number_of_pod_shapes(tmp_path: Path) -> None:
    s = learned_settings(model_file(tmp_path, "calm.json", prefers_busy=False))
    model = load_model(s.policy.learned_model or "",
                       provided_features([e.name for e in s.catalog], True))
    term = LearnedTerm(model, s.cache.max_staleness_s, shapes=3)
    t = rich_table(s, 50, seed=7)
    rows = np.arange(50, dtype=np.intp)
    for i in range(10):
        pod = PodDemand(namespace="ns", name=f"p{i}", cpu_cores=1 + i, memory_bytes=2**30)
        np.testing.assert_array_equal(term(pod, t, rows), direct(s, pod, t, rows))
    assert term._cache is not None and len(term._cache.shapes) == 3


def test_decide_adds_the_learned_term_to_the_baseline_as_evaluate_does(tmp_path: Path) -> None:
    path = model_file(tmp_path, "calm.json", prefers_busy=False)
    s = load_settings(CONFIG, environ={}, overrides={"policy": {
        "default": "model", "learned_model": str(path), "profiles": {"model": {
            "filters": [{"metric": "cpu_utilisation", "above": 0.9, "label": "cpu"}],
            "weights": {"learned": 3, "cpu_utilisation": 1, "memory_available_ratio": 1},
            "hotspot": {"enabled": True}}}}})
    engine, reference = Engine(s), Engine(s)
    t = rich_table(s, 400, seed=8)
    names = [f"n{i}" for i in range(0, 400, 2)] + ["not-in-the-table"]
    pods = [PodDemand(namespace="ns", name=f"p{i}", uid=f"u{i}", cpu_cores=1 + i % 3,
                      memory_bytes=2**31) for i in range(12)]
    for i, pod in enumerate(pods):
        fast = engine.decide(pod, t, names, NOW + i)
        full = reference.evaluate(pod, t, names, NOW + i)
        assert fast.evaluation is None  # the baseline path, not a full evaluation
        assert fast.scores == full.scores
        assert fast.rejected == full.rejected
        assert full.evaluation is not None and fast.derived is not None
        np.testing.assert_array_equal(fast.derived["learned"], full.evaluation.derived["learned"])
        # The explanation shows the learned term's goodness, as from a full evaluation.
        top = fast.ranking(3)
        assert Breakdown.of(fast, top).explain() == Breakdown.of(full, top).explain()
        # Recent placements: later pods see them as pending load on these nodes.
        best = fast.best()
        assert best is not None and best == full.best()
        for e in (engine, reference):
            e.record_placement(best, pod, NOW + i)
