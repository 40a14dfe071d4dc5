"""The rebalancer's pure logic: detection with debounce and staleness, victim choice, limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from extender.metrics.cache import Fetcher
from extender.policies.engine import Engine
from extender.policies.model import NodeTable, PodDemand
from extender.rebalance.choose import EvictionPlan, NodeRoom, PodView, choose, exclusion
from extender.rebalance.controller import TokenBucket
from extender.rebalance.detect import Debounce, Detection, detect
from extender.rebalance.settings import RebalanceSettings
from extender.settings import Settings
from tests.support import StaticSource, healthy, settings

NOW = 1_000_000.0
CORES = 8
GIB = 2.0**30
EXT = settings()
RULES = RebalanceSettings()  # cpu hot above 0.85 (cool below 0.60), memory hot below 0.10
DEBOUNCE = RULES.debounce_cycles


def table(nodes: list[str], at: float = NOW, **overrides: Mapping[str, float]) -> NodeTable:
    """A table as the extender's cache builds it, from a static source evaluated at `at`."""
    values = healthy(nodes, cpu_cores={n: CORES for n in nodes},
                     memory_total_bytes={n: 32 * GIB for n in nodes}, **overrides)
    return Fetcher(EXT, StaticSource(EXT, values, nodes)).collect(at)[0]


def run(tbl: NodeTable, cycles: int = DEBOUNCE, state: Debounce | None = None,
        now: float = NOW) -> Detection:
    found = Detection({}, {}, frozenset(), {}, state or Debounce())
    for _ in range(cycles):
        found = detect(tbl, RULES.thresholds, found.state, now=now,
                       max_staleness_s=EXT.cache.max_staleness_s, debounce_cycles=DEBOUNCE)
    return found


def pod(name: str, node: str = "a", *, cpu: float = 1.0, memory: float = GIB, age: float = 3600,
        **fields: Any) -> PodView:
    base: dict[str, Any] = {"owner_kind": "ReplicaSet"}
    base.update(fields)
    return PodView(namespace=base.pop("namespace", "work"), name=name, node=node,
                   demand=PodDemand(namespace="work", name=name, cpu_cores=cpu,
                                    memory_bytes=memory),
                   created_at=NOW - age, **base)


def nodes(*names: str, **views: NodeRoom) -> dict[str, NodeRoom]:
    out = {n: NodeRoom(n, cpu_free_cores=CORES, memory_free_bytes=32 * GIB) for n in names}
    out.update(views)
    return out


def plan(tbl: NodeTable, pods: list[PodView], node_views: Mapping[str, NodeRoom], *,
         rules: RebalanceSettings = RULES, ext: Settings = EXT, budget: int = 10,
         found: Detection | None = None, cooldown: Mapping[str, float] | None = None) -> EvictionPlan:
    return choose(found or run(tbl), pods, node_views, tbl, Engine(ext), rules, now=NOW,
                  budget=budget, cooldown=cooldown)


# --- detect -----------------------------------------------------------------------------------


def test_a_node_is_hot_only_after_the_debounce_cycles() -> None:
    tbl = table(["a", "b"], cpu_utilisation={"a": 0.95})
    early = run(tbl, DEBOUNCE - 1)
    assert not early.hot and [b.cycles for b in early.warming["a"]] == [DEBOUNCE - 1]
    found = run(tbl, DEBOUNCE)
    assert list(found.hot) == ["a"] and found.hot["a"][0].metric == "cpu_utilisation"
    assert "b" in found.cool and "a" not in found.cool


def test_one_cycle_under_the_limit_restarts_the_count() -> None:
    hot, calm = table(["a"], cpu_utilisation={"a": 0.95}), table(["a"], cpu_utilisation={"a": 0.5})
    state = run(hot, DEBOUNCE - 1).state
    state = run(calm, 1, state).state
    assert not run(hot, DEBOUNCE - 1, state).hot
    assert run(hot, DEBOUNCE, state).hot


def test_higher_is_better_metrics_are_hot_below_their_limit() -> None:
    found = run(table(["a", "b"], memory_available_ratio={"a": 0.05}))
    assert found.hot["a"][0].metric == "memory_available_ratio" and not found.hot["a"][0].above


def test_stale_data_is_never_hot_and_resets_the_count() -> None:
    old = table(["a", "b"], at=NOW - EXT.cache.max_staleness_s - 1, cpu_utilisation={"a": 0.99})
    found = run(old, DEBOUNCE + 2)
    assert not found.hot and not found.warming and not found.cool
    assert found.stale["a"] == ("cpu_utilisation", "memory_available_ratio")
    # Two hot cycles, a stale one, then fresh again: the count starts over.
    fresh = table(["a"], cpu_utilisation={"a": 0.99})
    state = run(fresh, DEBOUNCE - 1).state
    state = run(old, 1, state).state
    assert not run(fresh, 1, state).hot


def test_missing_metric_is_neither_hot_nor_cool() -> None:
    values = {"cpu_utilisation": {"b": 0.99}}  # a has no CPU series at all
    tbl = Fetcher(EXT, StaticSource(EXT, values, ["a", "b"])).collect(NOW)[0]
    found = run(tbl)
    assert "a" in found.stale and "a" not in found.cool and "a" not in found.hot


# --- choose ------------------------------------------------------------------------------------


def test_evicts_the_largest_contributor_towards_the_best_cool_node() -> None:
    tbl = table(["a", "b", "c"], cpu_utilisation={"a": 0.95, "b": 0.20, "c": 0.50})
    result = plan(tbl, [pod("small", cpu=0.5), pod("big", cpu=2.0)], nodes("a", "b", "c"))
    (ev,) = result.evictions
    assert ev.pod.name == "big" and ev.destination == "b"
    assert "expected to go to b" in ev.explanation and ev.projected == pytest.approx(0.95 - 2 / 8)
    assert ev.destination_score >= ev.source_score + RULES.margin
    assert [s.reason for s in result.skips] == ["limit:node"]  # per_node is 1


def test_lowest_priority_goes_first() -> None:
    tbl = table(["a", "b"], cpu_utilisation={"a": 0.95, "b": 0.2})
    result = plan(tbl, [pod("important", cpu=2.0, priority=1000), pod("batch", cpu=0.5)],
                  nodes("a", "b"))
    assert [e.pod.name for e in result.evictions] == ["batch"]


def test_a_node_projected_below_its_limit_loses_no_more() -> None:
    rules = msgspec.structs.replace(RULES, limits=msgspec.structs.replace(RULES.limits,
                                                                          per_node=5))
    tbl = table(["a", "b"], cpu_utilisation={"a": 0.90, "b": 0.1})
    result = plan(tbl, [pod("p1", cpu=1.0), pod("p2", cpu=1.0), pod("p3", cpu=1.0)],
                  nodes("a", "b"), rules=rules)
    assert len(result.evictions) == 1  # 0.90 - 1/8 = 0.775 < 0.85


EXCLUDED = [
    ({"owner_kind": "DaemonSet"}, "excluded:daemonset"),
    ({"owner_kind": None}, "excluded:no_controller"),
    ({"mirror": True}, "excluded:mirror"),
    ({"priority_class": "system-node-critical"}, "excluded:critical"),
    ({"priority": 2_000_000_000}, "excluded:critical"),
    ({"local_storage": True}, "excluded:local_storage"),
    ({"annotations": {"extract.io/evict": "false"}}, "excluded:annotation"),
    ({"namespace": "kube-system"}, "excluded:namespace"),
    ({"age": 60}, "too_young"),
]


@pytest.mark.parametrize(("fields", "reason"), EXCLUDED, ids=[r for _, r in EXCLUDED])
def test_excluded_pods_stay(fields: dict[str, Any], reason: str) -> None:
    tbl = table(["a", "b"], cpu_utilisation={"a": 0.95, "b": 0.2})
    result = plan(tbl, [pod("p", cpu=2.0, **fields)], nodes("a", "b"))
    assert not result.evictions
    assert [(s.pod, s.reason) for s in result.skips] == [("work/p" if "namespace" not in fields
                                                          else "kube-system/p", reason)]


def test_each_exclusion_can_be_switched_off() -> None:
    ex = RULES.exclude
    off = msgspec.structs.replace(
        RULES, min_pod_age_s=0, exclude=msgspec.structs.replace(
            ex, require_controller=False, mirror_pods=False, daemonsets=False, critical=False,
            local_storage=False, annotation="", namespaces=()))
    for fields, _ in EXCLUDED:
        assert exclusion(pod("p", **fields), off, NOW) is None, fields


def test_a_pod_that_scores_no_better_elsewhere_stays() -> None:
    # The only cool node is barely cool and short of memory: the extender prefers the pod's node.
    tbl = table(["a", "b"], cpu_utilisation={"a": 0.86, "b": 0.59},
                memory_available_ratio={"a": 0.95, "b": 0.31})
    result = plan(tbl, [pod("p", cpu=0.5)], nodes("a", "b"))
    assert not result.evictions
    (skip,) = result.skips
    assert skip.reason == "not_better" and "margin" in skip.detail


def test_the_margin_is_respected() -> None:
    tbl = table(["a", "b"], cpu_utilisation={"a": 0.95, "b": 0.2})
    assert plan(tbl, [pod("p", cpu=1.0)], nodes("a", "b")).evictions
    strict = msgspec.structs.replace(RULES, margin=10)
    assert [s.reason for s in plan(tbl, [pod("p", cpu=1.0)], nodes("a", "b"),
                                   rules=strict).skips] == ["not_better"]


def test_no_destination_that_the_pod_would_make_hot() -> None:
    tbl = table(["a", "b"], cpu_utilisation={"a": 0.99, "b": 0.55})
    result = plan(tbl, [pod("p", cpu=3.0)], nodes("a", "b"))  # b: 0.55 + 3/8 > 0.85
    assert not result.evictions and result.skips[0].reason == "no_destination"


def test_destinations_must_fit_the_requests_and_be_schedulable() -> None:
    tbl = table(["a", "b", "c"], cpu_utilisation={"a": 0.95, "b": 0.1, "c": 0.1})
    views = nodes("a", b=NodeRoom("b", cpu_free_cores=0.5, memory_free_bytes=32 * GIB),
                  c=NodeRoom("c", schedulable=False, cpu_free_cores=8, memory_free_bytes=GIB))
    result = plan(tbl, [pod("p", cpu=1.0)], views)
    assert not result.evictions and result.skips[0].reason == "no_destination"


def test_no_ping_pong_the_moved_pod_does_not_come_back() -> None:
    """Cycle 1 moves the pod a -> b; the metrics then show it on b. b is not hot (it was cool
    with the pod's share added), so nothing moves back, however many cycles pass."""
    before = table(["a", "b"], cpu_utilisation={"a": 0.95, "b": 0.30})
    found = run(before)
    (ev,) = plan(before, [pod("p", cpu=2.0)], nodes("a", "b"), found=found).evictions
    assert ev.destination == "b"
    after = table(["a", "b"], cpu_utilisation={"a": 0.95 - 0.25, "b": 0.30 + 0.25})
    later = run(after, 10, found.state.reset("a"))
    assert not later.hot
    moved = pod("p-new", "b", cpu=2.0)
    assert not plan(after, [moved], nodes("a", "b"), found=later).evictions


def test_a_node_in_cooldown_is_neither_source_nor_destination() -> None:
    tbl = table(["a", "b"], cpu_utilisation={"a": 0.95, "b": 0.2})
    held = plan(tbl, [pod("p")], nodes("a", "b"), cooldown={"a": NOW + 10})
    assert not held.evictions and held.skips[0].reason == "cooldown"
    blocked = plan(tbl, [pod("p")], nodes("a", "b"), cooldown={"b": NOW + 10})
    assert not blocked.evictions and blocked.skips[0].reason == "no_destination"


def test_cycle_and_namespace_limits() -> None:
    names = ["a", "b", "c", "d", "e", "f"]
    tbl = table(names, cpu_utilisation={"a": 0.99, "b": 0.98, "c": 0.97, "d": 0.1, "e": 0.1,
                                        "f": 0.1})
    many = [pod("pa", "a"), pod("pb", "b"), pod("pc", "c", namespace="other")]
    assert len(plan(tbl, many, nodes(*names)).evictions) == 3
    by_cycle = plan(tbl, many, nodes(*names), budget=1)
    assert [e.pod.name for e in by_cycle.evictions] == ["pa"]
    assert by_cycle.skips[-1].reason == "limit:cycle"
    rules = msgspec.structs.replace(RULES, limits=msgspec.structs.replace(RULES.limits,
                                                                          per_namespace=1))
    by_namespace = plan(tbl, many, nodes(*names), rules=rules)
    # One per node, one per namespace: pa (work), pc (other); pb waits for the next cycle.
    assert sorted(e.pod.name for e in by_namespace.evictions) == ["pa", "pc"]
    assert [s.reason for s in by_namespace.skips] == ["limit:namespace"]


def test_each_destination_takes_one_pod_per_cycle() -> None:
    tbl = table(["a", "b", "d"], cpu_utilisation={"a": 0.99, "b": 0.98, "d": 0.1})
    result = plan(tbl, [pod("pa", "a"), pod("pb", "b", namespace="other")], nodes("a", "b", "d"))
    assert [e.pod.name for e in result.evictions] == ["pa"]
    assert result.skips[0].reason == "no_destination"


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate_per_s=0.1, burst=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert bucket.available(5.0) == 0 and bucket.available(10.0) == 1
    bucket.give_back()
    assert bucket.available(1000.0) == 2
