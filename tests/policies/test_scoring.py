"""The metrics-aware policy on hand-made tables where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from extender.kubeapi import Container, ObjectMeta, Pod, PodSpec, ResourceRequirements
from extender.policies.engine import Engine
from extender.policies.model import (
    NodeTable,
    PodDemand,
    column_medians,
    parse_quantity,
    parse_weights,
    pod_demand,
    request_pod,
)
from extender.settings import Settings
from tests.support import WITH_POD, settings

NOW = 1_000_000.0
POD = PodDemand(namespace="ns", name="p", uid="u1", cpu_cores=1, memory_bytes=2**30)
GPU_POD = PodDemand(namespace="ns", name="g", uid="u2", cpu_cores=1, memory_bytes=2**30, gpus=1,
                    gpu_milli=1000)


def table(s: Settings, rows: dict[str, dict[str, float]], *, age: float = 0.0,
          ages: dict[tuple[str, str], float] | None = None) -> NodeTable:
    metrics = tuple(e.name for e in s.catalog)
    names = tuple(rows)
    values = np.full((len(names), len(metrics)), np.nan)
    sampled = np.full_like(values, np.nan)
    defaults = {"cpu_cores": 32, "memory_total_bytes": 128 * 2**30, "node_ready": 1,
                "node_pressure": 0}
    for i, name in enumerate(names):
        for j, metric in enumerate(metrics):
            value = rows[name].get(metric, defaults.get(metric, np.nan))
            if value is None:
                continue
            values[i, j] = value
            sampled[i, j] = NOW - (ages or {}).get((name, metric), age)
    return NodeTable(names=names, metrics=metrics, values=values, sampled_at=sampled, built_at=NOW)


def only(weights: dict[str, float]) -> dict[str, float]:
    """Profile weights with every shipped weight not named here at 0 (settings merge deeply)."""
    shipped = settings().profile().weights
    return {**dict.fromkeys(shipped, 0.0), **weights}


def cpu_only(s: Settings) -> Settings:
    return settings(policy={"profiles": {"metrics-aware": {
        "filters": [{"metric": "cpu_utilisation", "above": 0.9, "label": "cpu"}],
        "weights": only({"cpu_utilisation": 1}),
        # Usage alone: these tests pin the engine's arithmetic, not the shipped choice.
        "hotspot": {"score_with_pod": False}}}})


def test_scores_are_proportional_to_the_metric_not_ranks() -> None:
    s = cpu_only(settings())
    rows = {f"n{i:03d}": {"cpu_utilisation": i / 500} for i in range(450)}
    out = Engine(s).evaluate(POD, table(s, rows), list(rows), NOW)
    scores = np.array(out.scores)
    # 10 * (1 - u), rounded: a rank scale would give most of 450 nodes the same 0.
    expected = np.floor(10 * (1 - np.arange(450) / 500) + 0.5)
    assert (scores == expected).all()
    assert len(set(out.scores)) == 10


def test_filter_reason_is_human_readable() -> None:
    s = settings()
    rows = {"busy": {"cpu_utilisation": 0.93, "memory_available_ratio": 0.5},
            "full": {"cpu_utilisation": 0.2, "memory_available_ratio": 0.04},
            "sick": {"cpu_utilisation": 0.2, "memory_available_ratio": 0.5, "node_ready": 0},
            "ok": {"cpu_utilisation": 0.2, "memory_available_ratio": 0.5}}
    out = Engine(s).evaluate(POD, table(s, rows), list(rows), NOW)
    assert {n: r.message for n, r in out.rejected.items()} == {
        "busy": "cpu 93% > 90%",
        "full": "memory available 4% < 10%",
        "sick": "node is NotReady (kube-state-metrics)",
    }
    assert out.passed == ["ok"]
    assert out.rejected["busy"].code == "cpu"


def two_terms(**cache: str) -> Settings:
    return settings(cache=cache, policy={"profiles": {"metrics-aware": {
        "weights": only({"cpu_utilisation": 1, "memory_available_ratio": 1})}}})


def test_a_stale_term_counts_as_the_worst_value_so_the_node_never_wins() -> None:
    s = two_terms()
    rows = {"a": {"cpu_utilisation": 0.0, "memory_available_ratio": 0.0},
            "b": {"cpu_utilisation": 0.0, "memory_available_ratio": 0.0}}
    t = table(s, rows, ages={("b", "memory_available_ratio"): 1000})  # b's memory is stale
    out = Engine(s).evaluate(POD, t, ["a", "b"], NOW)
    # Both: cpu idle (g = 1); memory a: 0% available (g = 0), b: missing -> worst (g = 0). The
    # weights are not renormalised over b's remaining term (that gave b 10 against a's 5).
    assert out.scores == [5, 5]
    col = t.column["memory_available_ratio"]
    assert not out.evaluation.fresh[1, col] and out.evaluation.imputed[1, col]
    assert not out.evaluation.imputed[0].any()


@pytest.mark.parametrize("policy", ["worst", "neutral"])
def test_a_node_whose_exporter_is_gone_never_outscores_an_otherwise_identical_node(
        policy: str) -> None:
    s = two_terms(missing_data=policy)
    healthy = {"cpu_utilisation": 0.3, "memory_available_ratio": 0.6}
    rows = {"healthy": healthy, "twin": dict(healthy),
            "dead": {"cpu_utilisation": None, "memory_available_ratio": None,
                     "deadline_miss_ratio": 0.0},
            "half": {"cpu_utilisation": None, "memory_available_ratio": 0.6}}
    out = Engine(s).evaluate(POD, table(s, rows), list(rows), NOW)
    scores = dict(zip(rows, out.scores, strict=True))
    assert scores["dead"] <= scores["healthy"] and scores["half"] <= scores["healthy"]
    assert scores["healthy"] == scores["twin"]


def test_neutral_takes_the_median_of_the_fresh_nodes_of_the_whole_table() -> None:
    s = two_terms(missing_data="neutral")
    rows = {f"n{i}": {"cpu_utilisation": u, "memory_available_ratio": 1.0}
            for i, u in enumerate((0.0, 0.2, 0.4, 0.6, 0.8))}
    rows["lost"] = {"cpu_utilisation": None, "memory_available_ratio": 1.0}
    t = table(s, rows)
    engine = Engine(s)
    # cpu median of the fresh nodes 0.4 -> g = 0.6; memory g = 1: (0.6 + 1) / 2 -> 8. Offered
    # alone with the busiest node, it still gets the table's median, not the pair's.
    assert engine.evaluate(POD, t, ["lost"], NOW).scores == [8]
    assert engine.evaluate(POD, t, ["n4", "lost"], NOW).scores == [6, 8]


def test_on_missing_reject_fails_the_node_and_names_the_terms() -> None:
    s = settings(cache={"missing_data": "reject"}, policy={"profiles": {"metrics-aware": {
        "filters": [], "weights": only({"cpu_utilisation": 1, "memory_available_ratio": 1})}}})
    rows = {"ok": {"cpu_utilisation": 0.2, "memory_available_ratio": 0.5},
            "gone": {"cpu_utilisation": None, "memory_available_ratio": None}}
    out = Engine(s).evaluate(POD, table(s, rows), list(rows), NOW)
    assert out.passed == ["ok"]
    assert out.rejected["gone"].message == ("no fresh data for cpu_utilisation, "
                                            "memory_available_ratio (exporter down or series "
                                            "missing?)")


def test_a_catalog_entry_can_override_the_missing_policy() -> None:
    s = two_terms()  # default worst; deadline_miss_ratio ships with on_missing: neutral
    assert s.metric("deadline_miss_ratio").on_missing == "neutral"
    assert s.metric("cpu_utilisation").on_missing is None


def test_node_without_fresh_data_gets_missing_score_and_never_beats_a_known_node() -> None:
    s = cpu_only(settings())
    rows = {"known-busy": {"cpu_utilisation": 0.85}, "silent": {"cpu_utilisation": 0.0}}
    t = table(s, rows, ages={("silent", "cpu_utilisation"): 10_000})
    out = Engine(s).evaluate(POD, t, ["known-busy", "silent", "ghost"], NOW)
    assert out.scores == [2, 0, 0]
    assert out.best() == "known-busy"


def test_missing_data_reject_fails_nodes_with_stale_filtered_metric() -> None:
    s = two_terms(missing_data="reject")
    rows = {"fresh": {"cpu_utilisation": 0.2, "memory_available_ratio": 0.5},
            "stale": {"cpu_utilisation": 0.2, "memory_available_ratio": 0.5}}
    t = table(s, rows, ages={("stale", "cpu_utilisation"): 500})
    out = Engine(s).evaluate(POD, t, ["fresh", "stale"], NOW)
    assert out.passed == ["fresh"]
    assert out.rejected["stale"].message == "cpu_utilisation data older than 90s"


def test_gpu_metrics_count_only_for_gpu_pods() -> None:
    s = settings(policy={"profiles": {"metrics-aware": {
        "weights": only({"cpu_utilisation": 1, "gpu_utilisation": 1})}}})
    rows = {"hot-gpu": {"cpu_utilisation": 0.0, "gpu_utilisation": 1.0},
            "cool-gpu": {"cpu_utilisation": 0.5, "gpu_utilisation": 0.0}}
    engine = Engine(s)
    t = table(s, rows)
    assert engine.evaluate(POD, t, list(rows), NOW).best() == "hot-gpu"
    assert engine.evaluate(GPU_POD, t, list(rows), NOW).best() == "cool-gpu"


def test_annotation_selects_profile_and_unknown_profile_falls_back_with_note() -> None:
    s = settings()
    engine = Engine(s)
    rows = {"a": {"cpu_utilisation": 0.3, "memory_available_ratio": 0.5}}
    t = table(s, rows)
    power = PodDemand(name="x", policy="power")
    assert engine.evaluate(power, t, ["a"], NOW).profile == "power"
    unknown = engine.evaluate(PodDemand(name="x", policy="nope"), t, ["a"], NOW)
    assert unknown.profile == "metrics-aware"
    assert "unknown policy 'nope'" in unknown.note


def test_weights_annotation_overrides_profile_weights() -> None:
    s = settings()
    rows = {"cpu-busy": {"cpu_utilisation": 0.8, "memory_available_ratio": 0.9},
            "mem-busy": {"cpu_utilisation": 0.1, "memory_available_ratio": 0.2}}
    t = table(s, rows)
    engine = Engine(s)
    memory_first = PodDemand(name="m", weights=parse_weights("cpu_utilisation=0,memory_available_ratio=5"))
    assert engine.evaluate(memory_first, t, list(rows), NOW).best() == "cpu-busy"
    assert engine.evaluate(POD, t, list(rows), NOW).best() == "mem-busy"


def test_ties_are_broken_by_name_deterministically() -> None:
    s = cpu_only(settings())
    rows = {name: {"cpu_utilisation": 0.5} for name in ["c", "a", "b"]}
    out = Engine(s).evaluate(POD, table(s, rows), ["c", "a", "b"], NOW)
    assert out.best() == "a"


def test_burst_spreads_over_nodes_thanks_to_placement_compensation() -> None:
    s = cpu_only(settings())
    rows = {f"n{i}": {"cpu_utilisation": 0.30 + 0.01 * i} for i in range(4)}
    t = table(s, rows)
    engine = Engine(s)
    big = PodDemand(namespace="ns", cpu_cores=8, memory_bytes=2**30)
    chosen = []
    for k in range(4):
        pod = PodDemand(namespace="ns", name=f"p{k}", cpu_cores=8, memory_bytes=2**30)
        best = engine.evaluate(pod, t, list(rows), NOW + k).best()
        assert best is not None
        engine.record_placement(best, pod, NOW + k)
        chosen.append(best)
    assert len(set(chosen)) >= 3, chosen
    # Without compensation every pod would go to the idlest node.
    plain = Engine(s)
    assert {plain.evaluate(big, t, list(rows), NOW, pending=False).best() for _ in range(4)} == {"n0"}


def test_placement_counts_until_a_newer_sample_shows_it_or_the_window_ends() -> None:
    s = settings(cache={"max_staleness_s": 1000},
                 policy={"profiles": {"metrics-aware": {"weights": only({"cpu_utilisation": 1}),
                                                        "hotspot": {"score_with_pod": False}}}})
    engine = Engine(s)
    pod = PodDemand(namespace="ns", name="p", cpu_cores=16)
    engine.record_placement("n0", pod, NOW - 40)
    rows = {"n0": {"cpu_utilisation": 0.2}}
    before = table(s, rows, age=50)  # sampled 10 s before the placement
    after = table(s, rows, age=5)  # sampled 35 s after it (> settle_s = 30): includes the pod
    col = before.column["cpu_utilisation"]
    assert engine.evaluate(pod, before, ["n0"], NOW).evaluation.values[0, col] == pytest.approx(0.7)
    assert engine.evaluate(pod, after, ["n0"], NOW).evaluation.values[0, col] == pytest.approx(0.2)
    # window_s = 60: at NOW + 30 the placement is 70 s old and forgotten, whatever the sample.
    later = engine.evaluate(pod, before, ["n0"], NOW + 30).evaluation.values[0, col]
    assert later == pytest.approx(0.2)


@pytest.mark.parametrize(("text", "value"), [("100m", 0.1), ("2", 2.0), ("1Gi", 2**30),
                                             ("1.5G", 1.5e9), ("1e3", 1000.0), (3, 3.0)])
def test_quantities_parse_like_kubernetes(text: str | int, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


def test_milli_quantities_are_exact_divisions() -> None:
    # The simulator sends cpu_milli as "<n>m" and compares with cpu_milli / 1000 bit for bit.
    for milli in range(0, 200_000, 7):
        assert parse_quantity(f"{milli}m") == milli / 1000


def pod(requests: dict[str, str], annotations: dict[str, str]) -> Pod:
    return Pod(metadata=ObjectMeta(name="p", namespace="ns", annotations=annotations),
               spec=PodSpec(containers=[Container(
                   name="c", resources=ResourceRequirements(requests=requests))]))


def test_gpu_sharing_annotations_as_in_openb() -> None:
    shared = pod_demand(pod({"cpu": "4"}, {"alibabacloud.com/gpu-milli": "450",
                                           "alibabacloud.com/gpu-card-model": "V100M16|T4"}))
    assert (shared.gpus, shared.gpu_milli, shared.gpu_models) == (1, 450, ("V100M16", "T4"))
    assert shared.wants_gpu
    two = pod_demand(pod({}, {"alibabacloud.com/gpu-milli": "1000",
                              "alibabacloud.com/gpu-count": "2"}))
    assert (two.gpus, two.gpu_milli) == (2, 2000)
    # nvidia.com/gpu wins: whole GPUs, the annotation is not read.
    whole = pod_demand(pod({"nvidia.com/gpu": "1"}, {"alibabacloud.com/gpu-milli": "300"}))
    assert (whole.gpus, whole.gpu_milli) == (1, 1000)
    for bad in ({"alibabacloud.com/gpu-milli": "1500"}, {"alibabacloud.com/gpu-milli": "lots"},
                {"alibabacloud.com/gpu-milli": "500", "alibabacloud.com/gpu-count": "0"}):
        with pytest.raises(ValueError):
            pod_demand(pod({}, bad))


@pytest.mark.parametrize(("gpus", "milli", "models"), [(0, 0, ()), (1, 450, ("T4",)),
                                                        (2, 1000, ()), (8, 1000, ("A10", "G2"))])
def test_request_pod_is_the_inverse_of_pod_demand(gpus: int, milli: int,
                                                  models: tuple[str, ...]) -> None:
    wire_pod = request_pod(name="p", namespace="ns", uid="u", cpu_milli=2300, memory_mib=3072,
                           gpus=gpus, gpu_milli=milli, gpu_models=models)
    demand = pod_demand(wire_pod)
    assert (demand.cpu_cores, demand.memory_bytes) == (2.3, 3072 * 2**20)
    assert (demand.gpus, demand.gpu_milli, demand.gpu_models) == (gpus, gpus * milli, models)


@pytest.mark.parametrize("text", ["x", "1Qi", "", "--1"])
def test_bad_quantities_raise(text: str) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(text)


@pytest.mark.parametrize("text", ["cpu", "cpu=-1", "=2", "cpu=fast"])
def test_bad_weight_annotations_raise(text: str) -> None:
    with pytest.raises(ValueError, match="invalid weight"):
        parse_weights(text)


def test_score_with_pod_scores_cpu_and_memory_with_the_pods_own_requests() -> None:
    """Two idle nodes score the same on usage alone; with the pod's requests added, the node the
    pod would nearly fill scores lower. The CPU filter (no `with_pod`) still checks the node as
    it is: the small node is not rejected, only scored down."""
    s = settings(**WITH_POD)
    assert s.profile().hotspot.score_with_pod
    rows = {"small": {"cpu_utilisation": 0.0, "memory_available_ratio": 1.0, "cpu_cores": 16},
            "large": {"cpu_utilisation": 0.0, "memory_available_ratio": 1.0, "cpu_cores": 64}}
    big = PodDemand(namespace="ns", name="big", cpu_cores=15, memory_bytes=8 * 2**30)
    out = Engine(s).evaluate(big, table(s, rows), list(rows), NOW)
    assert not out.rejected
    small, large = out.scores
    assert large > small
    # The explanation's values are those scored: CPU with the pod, 15 of 16 cores.
    assert out.evaluation is not None
    cpu = table(s, rows).column["cpu_utilisation"]
    assert out.evaluation.values[0, cpu] == 15 / 16
    # decide() (the webhook's path) gives the same answer.
    fast = Engine(s).decide(big, table(s, rows), list(rows), NOW)
    assert fast.scores == out.scores and not fast.rejected

    off = settings(policy={"profiles": {"metrics-aware": {"hotspot": {"score_with_pod": False}}}})
    plain = Engine(off).evaluate(big, table(off, rows), list(rows), NOW)
    assert plain.scores[0] == plain.scores[1]


def test_scoring_with_the_pod_leaves_with_pod_rules_and_plain_rules_their_meaning() -> None:
    """A plain 90% CPU rule rejects on usage before the pod, a `with_pod` rule on usage with it,
    whether or not the profile scores with the pod."""
    for score_with_pod in (False, True):
        s = settings(policy={"profiles": {"metrics-aware": {
            "filters": [{"metric": "cpu_utilisation", "above": 0.9, "label": "cpu"},
                        {"metric": "memory_available_ratio", "below": 0.1, "with_pod": True,
                         "label": "memory"}],
            "hotspot": {"score_with_pod": score_with_pod}}}})
        rows = {"busy": {"cpu_utilisation": 0.95}, "fits": {"cpu_utilisation": 0.5},
                "tight": {"cpu_utilisation": 0.5, "memory_available_ratio": 0.15}}
        pod = PodDemand(namespace="ns", name="p", cpu_cores=14, memory_bytes=16 * 2**30)
        out = Engine(s).evaluate(pod, table(s, rows), list(rows), NOW)
        # fits: 50% + 14/32 cores = 94% with the pod, but the CPU rule is on usage before it.
        assert sorted(out.rejected) == ["busy", "tight"], (score_with_pod, out.rejected)
        assert out.rejected["tight"].message.startswith("memory 2% with this pod")


@examples(max_examples=300, deadline=None)
@given(data=st.data(), shape=st.tuples(st.integers(1, 40), st.integers(1, 6)))
def test_column_medians_are_nanmedian_bit_for_bit(data: st.DataObject,
                                                 shape: tuple[int, int]) -> None:
    """What `on_missing: neutral` imputes: the vectorised median equals numpy's."""
    values = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(
        -1e300, 1e300, allow_nan=False, allow_infinity=False)
        | st.sampled_from([0.0, -0.0, 1.0, 0.5])))
    keep = data.draw(hnp.arrays(np.bool_, shape))
    keep[data.draw(st.integers(0, shape[0] - 1)), :] = True  # at least one value per column
    expected = np.nanmedian(np.where(keep, values, np.nan), axis=0)
    assert np.array_equal(column_medians(values, keep), expected)
