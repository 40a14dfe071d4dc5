"""The webhook's fast path (`Engine.decide`) gives exactly the reference answers (`evaluate`)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.policies.engine import Context, Engine, Outcome
from extender.policies.hotspot import Pending
from extender.policies.model import NodeTable, PodDemand
from extender.policies.scoring import (
    UNKNOWN_NODE,
    WithPodScores,
    evaluate,
    format_value,
    row_sums,
)
from tests.support import WITH_POD
from tests.support import settings as load

NOW = 1_000_000.0
NODES = [f"n{i}" for i in range(12)]
SETTINGS = {mode: load(cache={"missing_data": mode}, server={"unknown_nodes": mode})
            for mode in ("neutral", "reject")}
WITH_POD_SETTINGS = {mode: load(cache={"missing_data": mode}, server={"unknown_nodes": mode},
                                **WITH_POD) for mode in ("neutral", "reject")}


def random_table(seed: int, mode: str) -> NodeTable:
    s = SETTINGS[mode]
    rng = np.random.default_rng(seed)
    metrics = tuple(e.name for e in s.catalog)
    shape = (len(NODES), len(metrics))
    values = rng.uniform(0, 1, shape)
    column = {m: j for j, m in enumerate(metrics)}
    values[:, column["cpu_cores"]] = rng.choice([8, 32, 64], len(NODES))
    values[:, column["memory_total_bytes"]] = 64 * 2**30
    values[:, column["node_ready"]] = rng.choice([0, 1, 1, 1], len(NODES))
    values[:, column["node_pressure"]] = rng.choice([0, 0, 0, 1], len(NODES))
    values[rng.uniform(0, 1, shape) < 0.15] = np.nan  # missing series
    sampled = NOW - rng.choice([0.0, 10.0, 80.0, 200.0], shape)  # some stale, some about to be
    sampled[np.isnan(values)] = np.nan
    return NodeTable(names=tuple(NODES), metrics=metrics, values=values, sampled_at=sampled)


@settings(max_examples=250, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["neutral", "reject"]),
       gpu=st.booleans(), profile=st.sampled_from([None, "metrics-aware", "power"]),
       candidates=st.lists(st.sampled_from(NODES + ["ghost-1", "ghost-2"]), min_size=1,
                           max_size=14, unique=True),
       placements=st.lists(st.tuples(st.sampled_from(NODES), st.floats(0, 90)), max_size=6),
       later=st.sampled_from([0.0, 5.0, 15.0, 95.0]),
       between=st.lists(st.sampled_from(NODES), max_size=3), with_pod=st.booleans(),
       cpu=st.floats(0, 64), memory=st.floats(0, 2.0**37))
def test_decide_matches_evaluate(seed: int, mode: str, gpu: bool, profile: str | None,
                                 candidates: list[str], placements: list[tuple[str, float]],
                                 later: float, between: list[str], with_pod: bool, cpu: float,
                                 memory: float) -> None:
    """With and without `score_with_pod` (then the scores come from `WithPodScores`)."""
    s = (WITH_POD_SETTINGS if with_pod else SETTINGS)[mode]
    table = random_table(seed, mode)
    engine = Engine(s)
    for k, (node, ago) in enumerate(placements):
        engine.record_placement(node, PodDemand(namespace="ns", name=f"p{k}", cpu_cores=4,
                                                memory_bytes=2**30), NOW - ago)
    pod = PodDemand(namespace="ns", name="x", cpu_cores=cpu, memory_bytes=memory, gpus=int(gpu),
                    gpu_milli=1000 * int(gpu), policy=profile)
    # Decide first at NOW (building the baseline), then later: the baseline must expire when a
    # sample goes stale in between, and nodes placed on in between must be evaluated again.
    for step, now in enumerate((NOW, NOW + later)):
        for k, node in enumerate(between if step else []):
            engine.record_placement(node, PodDemand(namespace="ns", name=f"q{k}", cpu_cores=2,
                                                    memory_bytes=2**29), now)
        fast = engine.decide(pod, table, candidates, now)
        if with_pod and profile != "power":  # the per-pod scores came from the baseline's sums
            assert engine._baselines[(s.policy.default, gpu)].with_pod is not None
        slow = engine.evaluate(pod, table, candidates, now)
        assert fast.scores == slow.scores
        assert {n: r.message for n, r in fast.rejected.items()} == \
            {n: r.message for n, r in slow.rejected.items()}
        top = fast.ranking(3)
        assert top == slow.ranking(3)
        detail = fast.detail(top)
        assert detail.scores.tolist() == [slow.scores[i] for i in top]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["neutral", "reject"]),
       gpu=st.booleans(), pods=st.lists(st.tuples(st.floats(0, 128), st.floats(0, 2.0**38)),
                                        min_size=1, max_size=4),
       busy=st.floats(0, 1), count=st.integers(1, 60))
def test_with_pod_scores_are_evaluates_scores(seed: int, mode: str, gpu: bool,
                                              pods: list[tuple[float, float]], busy: float,
                                              count: int) -> None:
    """`WithPodScores` against `evaluate` on its own, over many rows: capacities zero, missing
    or tiny, pending load on some rows, candidates in any order, repeated or not in the table."""
    s = WITH_POD_SETTINGS[mode]
    rng = np.random.default_rng(seed)
    metrics = tuple(e.name for e in s.catalog)
    column = {m: j for j, m in enumerate(metrics)}
    n = 80
    values = rng.uniform(-0.2, 1.2, (n, len(metrics)))
    values[:, column["cpu_cores"]] = rng.choice([0, 1e-3, 4, 96, np.nan], n)
    values[:, column["memory_total_bytes"]] = rng.choice([0, 2.0**30, 2.0**40, np.nan], n)
    values[rng.uniform(0, 1, values.shape) < 0.1] = np.nan
    sampled = NOW - rng.choice([0.0, 50.0, 200.0], values.shape)
    table = NodeTable(names=tuple(f"m{i}" for i in range(n)), metrics=metrics, values=values,
                      sampled_at=sampled)
    compiled = Engine(s).compiled(s.policy.default, metrics, None)
    assert compiled.per_pod_scores_only
    cache = s.cache
    every = np.append(np.arange(n, dtype=np.intp), -1)
    template = PodDemand(name="<baseline>", gpus=int(gpu))
    base = evaluate(template, table, every, compiled, now=NOW,
                    max_staleness_s=cache.max_staleness_s, missing_score=cache.missing_score)
    scores = WithPodScores.of(table, base, compiled, cache.missing_score)
    assert scores is not None
    rows = rng.choice(every, count)
    loaded = rng.uniform(0, 1, count) < busy
    pending = Pending(np.where(loaded, rng.uniform(0, 16, count), 0.0),
                      np.where(loaded, rng.uniform(0, 2.0**35, count), 0.0))
    for cpu, memory in pods:
        pod = PodDemand(name="x", cpu_cores=cpu, memory_bytes=memory, gpus=int(gpu))
        for extra in (None, pending):
            reference = evaluate(pod, table, rows, compiled, now=NOW + 1,
                                 max_staleness_s=cache.max_staleness_s,
                                 missing_score=cache.missing_score, pending=extra)
            fast = scores.scores(pod, rows, extra)
            assert fast is not None
            assert fast.tolist() == reference.scores.tolist()
            # Bit for bit before rounding too (a score only shows a difference at x.5).
            sums = scores.sums(pod, rows, extra)
            assert sums is not None
            counted = (reference.fresh | reference.imputed) * reference.weights
            assert sums[0].tobytes() == row_sums(counted * reference.goodness,
                                                 compiled.summed).tobytes()
            assert sums[1].tobytes() == row_sums(counted, compiled.summed).tobytes()


def test_with_pod_scores_leave_what_they_cannot_compute_exactly_to_evaluate() -> None:
    """An infinite CPU value (adding a load to -inf can give NaN) and a pod of infinite load:
    no fast scores, and `decide` still answers as `evaluate` does."""
    s = WITH_POD_SETTINGS["neutral"]
    table = random_table(3, "neutral")
    table.values[2, table.column["cpu_utilisation"]] = -np.inf
    engine = Engine(s)
    pod = PodDemand(namespace="ns", name="c", cpu_cores=3, memory_bytes=2**33)
    fast = engine.decide(pod, table, NODES, NOW)
    assert engine._baselines[(s.policy.default, False)].with_pod is None
    assert fast.scores == Engine(s).evaluate(pod, table, NODES, NOW).scores
    table = random_table(3, "neutral")
    compiled = engine.compiled(s.policy.default, table.metrics, None)
    every = np.append(np.arange(len(NODES), dtype=np.intp), -1)
    base = evaluate(PodDemand(name="<baseline>"), table, every, compiled, now=NOW,
                    max_staleness_s=90, missing_score=0)
    scores = WithPodScores.of(table, base, compiled, 0)
    assert scores is not None
    assert scores.scores(PodDemand(name="huge", cpu_cores=np.inf), every, None) is None


def test_a_profile_with_pod_specific_terms_builds_no_baseline() -> None:
    # The gpu profile's FGD term depends on the pod's GPU request, so `decide` answers through
    # `evaluate` (and the property above, which compares the baseline path with `evaluate`,
    # covers only the profiles that have one). A baseline built for it would be wrong.
    s = SETTINGS["neutral"]
    table = random_table(7, "neutral")
    engine = Engine(s)
    pod = PodDemand(namespace="ns", name="g", cpu_cores=1, gpus=1, gpu_milli=1000, policy="gpu")
    assert engine.compiled("gpu", table.metrics, None).per_pod
    engine.decide(pod, table, NODES, NOW)
    assert engine._baselines == {}
    # With `score_with_pod` the default profile's scores are per pod; its verdicts (rules on the
    # node without the pod) still come from a baseline.
    s = load(cache={"missing_data": "neutral"}, server={"unknown_nodes": "neutral"}, **WITH_POD)
    engine = Engine(s)
    compiled = engine.compiled(s.policy.default, table.metrics, None)
    assert compiled.per_pod and compiled.per_pod_scores_only
    pod = PodDemand(namespace="ns", name="c", cpu_cores=3, memory_bytes=2**33)
    fast = engine.decide(pod, table, NODES, NOW)
    assert engine._baselines  # the default profile does build one
    slow = Engine(s).evaluate(pod, table, NODES, NOW)
    assert fast.scores == slow.scores and fast.rejected == slow.rejected


def test_decide_on_an_empty_table_gives_every_node_the_missing_score() -> None:
    s = SETTINGS["neutral"]
    empty = NodeTable.empty(tuple(e.name for e in s.catalog))
    out = Engine(s).decide(PodDemand(name="x"), empty, ["a", "b"], NOW)
    assert out.scores == [0, 0] and out.rejected == {}
    rejecting = Engine(SETTINGS["reject"]).decide(PodDemand(name="x"), empty, ["a"], NOW)
    assert rejecting.rejected["a"].code == "unknown"


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.integers(0, 3), min_size=1, max_size=12),
       rejected=st.lists(st.booleans(), min_size=12, max_size=12),
       ghosts=st.lists(st.booleans(), min_size=12, max_size=12), k=st.integers(0, 6),
       order=st.randoms(use_true_random=False))
def test_ranking_is_best_score_first_then_name(scores: list[int], rejected: list[bool],
                                               ghosts: list[bool], k: int, order) -> None:
    """Whether the names are table rows or not (ties then rank by the table's name order)."""
    names = [("ghost-" if ghosts[i] else "") + f"n{i}" for i in range(len(scores))]
    order.shuffle(names)
    table = random_table(0, "neutral")
    out = Engine(SETTINGS["neutral"]).evaluate(PodDemand(name="x"), table, names, NOW)
    flagged = {n: UNKNOWN_NODE for n, r in zip(names, rejected[:len(names)], strict=True) if r}
    out = Outcome(out.profile, names, np.array(scores), flagged, context=out.context)
    expected = sorted((i for i, name in enumerate(names) if name not in out.rejected),
                      key=lambda i: (-scores[i], names[i]))[:k]
    assert out.ranking(k) == expected
    without_table = Outcome(out.profile, names, out.score_array, out.rejected)
    assert without_table.ranking(k) == expected


def rule_by_rule(ev, names, s, profile, metrics, pod) -> dict[str, str]:
    """The filter verdicts as the configuration reads: rule after rule, first failure wins; a
    `with_pod` rule checks the value with the pod's requests added, the others the value without
    them (also when the profile scores with the pod)."""
    hot = s.profile(profile).hotspot
    units = {entry.name: entry.unit for entry in s.catalog}
    out: dict[str, str] = {}
    if s.server.unknown_nodes == "reject":
        out.update({names[i]: UNKNOWN_NODE.message for i in range(len(names)) if ev.rows[i] < 0})
    column = {metric: j for j, metric in enumerate(metrics)}
    for rule in s.profile(profile).filters:
        j = column.get(rule.metric, -1)
        if j < 0:
            continue
        label, unit = rule.label or rule.metric, units.get(rule.metric, "")
        mine = " with this pod" if rule.with_pod else ""
        for i, name in enumerate(names):
            value, fresh = float(ev.values[i, j]), bool(ev.fresh[i, j])
            if ev.own_included:  # a profile scoring with the pod: its rules see the node as is
                value -= float(ev.own[i, j])
            if name in out:
                continue
            if rule.with_pod and rule.metric == hot.cpu_metric:
                cores = float(ev.values[i, column[hot.cores_metric]])
                value += pod.cpu_cores / cores if cores > 0 else 0.0
            elif rule.with_pod:
                total = float(ev.values[i, column[hot.memory_total_metric]])
                value -= pod.memory_bytes / total if total > 0 else 0.0
            if fresh and rule.above is not None and value > rule.above:
                out[name] = rule.reason or (f"{label} {format_value(value, unit)}{mine} > "
                                            f"{format_value(rule.above, unit)}")
            elif fresh and rule.below is not None and value < rule.below:
                out[name] = rule.reason or (f"{label} {format_value(value, unit)}{mine} < "
                                            f"{format_value(rule.below, unit)}")
            elif not fresh and ev.rows[i] >= 0 and \
                    (rule.on_missing or s.cache.missing_data) == "reject":
                out[name] = (f"no {rule.metric} data" if math.isnan(value)
                             or math.isnan(ev.age_s[i, j]) else
                             f"{rule.metric} data older than {s.cache.max_staleness_s:.0f}s")
    # A weighted term whose policy is `reject` fails a node lacking it, naming every such term.
    policy = {e.name: e.on_missing or s.cache.missing_data for e in s.catalog}
    for i, name in enumerate(names):
        lacking = [m for j, m in enumerate(metrics) if policy.get(m) == "reject"
                   and ev.weights[j] > 0 and not ev.fresh[i, j]]
        if lacking and ev.rows[i] >= 0 and name not in out:
            out[name] = (f"no fresh data for {', '.join(lacking)} (exporter down or series "
                         f"missing?)")
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["neutral", "reject"]),
       profile=st.sampled_from(["metrics-aware", "power", "gpu"]),
       candidates=st.lists(st.sampled_from(NODES + ["ghost-1"]), min_size=1, max_size=13,
                           unique=True))
def test_filter_verdicts_are_the_first_failing_rule(seed: int, mode: str, profile: str,
                                                    candidates: list[str]) -> None:
    s = SETTINGS[mode]
    table = random_table(seed, mode)
    pod = PodDemand(name="x", policy=profile, cpu_cores=4.0, memory_bytes=8 * 2**30)
    out = Engine(s).evaluate(pod, table, candidates, NOW)
    assert out.evaluation is not None and out.context is not None
    expected = rule_by_rule(out.evaluation, candidates, s, profile, table.metrics, pod)
    assert {n: r.message for n, r in out.rejected.items()} == expected


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.integers(0, 10), min_size=1, max_size=40),
       data=st.data(), k=st.integers(0, 8), table_rows=st.booleans())
def test_ranking_is_the_best_k_passing_candidates_by_score_then_name(
        scores: list[int], data: st.DataObject, k: int, table_rows: bool) -> None:
    n = len(scores)
    names = data.draw(st.lists(st.text("abc", min_size=1, max_size=4), min_size=n, max_size=n,
                               unique=True))
    rejected = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    # Names ranked through the table's rows, or (unknown nodes) among themselves.
    table = NodeTable(names=tuple(sorted(names, reverse=True)), metrics=(),
                      values=np.zeros((n, 0)), sampled_at=np.zeros((n, 0)))
    outcome = Outcome("p", names, np.array(scores, np.int64),
                      {name: UNKNOWN_NODE for name, r in zip(names, rejected, strict=True) if r},
                      context=None if not table_rows else _context(table, names))
    expected = sorted((i for i in range(n) if not rejected[i]), key=lambda i: (-scores[i], names[i]))
    assert outcome.ranking(k) == expected[:k]


def _context(table: NodeTable, names: list[str]) -> Context:
    s = SETTINGS["neutral"]
    engine = Engine(s)
    compiled = engine.compiled(s.policy.default, table.metrics, None)
    return Context(PodDemand(name="x"), table, table.rows(names), compiled, NOW, None,
                   s.cache.max_staleness_s, s.cache.missing_score, {})
