"""The webhook's fast path (`Engine.decide`) gives exactly the reference answers (`evaluate`)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.policies.engine import Engine
from extender.policies.model import NodeTable, PodDemand
from tests.support import settings as load

NOW = 1_000_000.0
NODES = [f"n{i}" for i in range(12)]
SETTINGS = {mode: load(cache={"missing_data": mode}, server={"unknown_nodes": mode})
            for mode in ("neutral", "reject")}


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


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["neutral", "reject"]),
       gpu=st.booleans(), profile=st.sampled_from([None, "metrics-aware", "power", "gpu"]),
       candidates=st.lists(st.sampled_from(NODES + ["ghost-1", "ghost-2"]), min_size=1,
                           max_size=14, unique=True),
       placements=st.lists(st.tuples(st.sampled_from(NODES), st.floats(0, 90)), max_size=6),
       later=st.sampled_from([0.0, 5.0, 15.0, 95.0]),
       between=st.lists(st.sampled_from(NODES), max_size=3))
def test_decide_matches_evaluate(seed: int, mode: str, gpu: bool, profile: str | None,
                                 candidates: list[str], placements: list[tuple[str, float]],
                                 later: float, between: list[str]) -> None:
    s = SETTINGS[mode]
    table = random_table(seed, mode)
    engine = Engine(s)
    for k, (node, ago) in enumerate(placements):
        engine.record_placement(node, PodDemand(namespace="ns", name=f"p{k}", cpu_cores=4,
                                                memory_bytes=2**30), NOW - ago)
    pod = PodDemand(namespace="ns", name="x", cpu_cores=1, memory_bytes=2**30, gpus=int(gpu),
                    gpu_milli=1000 * int(gpu), policy=profile)
    # Decide first at NOW (building the baseline), then later: the baseline must expire when a
    # sample goes stale in between, and nodes placed on in between must be evaluated again.
    for step, now in enumerate((NOW, NOW + later)):
        for k, node in enumerate(between if step else []):
            engine.record_placement(node, PodDemand(namespace="ns", name=f"q{k}", cpu_cores=2,
                                                    memory_bytes=2**29), now)
        fast = engine.decide(pod, table, candidates, now)
        slow = engine.evaluate(pod, table, candidates, now)
        assert fast.scores == slow.scores
        assert {n: r.message for n, r in fast.rejected.items()} == \
            {n: r.message for n, r in slow.rejected.items()}
        top = fast.ranking(3)
        assert top == slow.ranking(3)
        detail = fast.detail(top)
        assert detail.scores.tolist() == [slow.scores[i] for i in top]


def test_decide_on_an_empty_table_gives_every_node_the_missing_score() -> None:
    s = SETTINGS["neutral"]
    empty = NodeTable.empty(tuple(e.name for e in s.catalog))
    out = Engine(s).decide(PodDemand(name="x"), empty, ["a", "b"], NOW)
    assert out.scores == [0, 0] and out.rejected == {}
    rejecting = Engine(SETTINGS["reject"]).decide(PodDemand(name="x"), empty, ["a"], NOW)
    assert rejecting.rejected["a"].code == "unknown"
