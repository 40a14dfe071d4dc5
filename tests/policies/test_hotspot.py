"""The placement ledger agrees with the plain definition of pending load, and stays bounded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.policies.hotspot import MAX_PER_NODE, Ledger
from extender.policies.model import NodeTable, PodDemand

WINDOW, SETTLE = 60.0, 30.0

placements = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                                st.floats(0, 200, allow_nan=False),
                                # Whole millicores, as Kubernetes quantities are.
                                st.integers(0, 8000).map(lambda m: m / 1000)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(placements=placements, now=st.floats(0, 300, allow_nan=False),
       samples=st.lists(st.one_of(st.just(math.nan), st.floats(0, 300, allow_nan=False)),
                        min_size=3, max_size=3))
def test_pending_matches_the_definition(placements: list[tuple[str, float, float]], now: float,
                                        samples: list[float]) -> None:
    ledger = Ledger(WINDOW, SETTLE)
    recorded: list[tuple[str, float, float]] = []
    for k, (node, at, cpu) in enumerate(sorted(placements, key=lambda p: p[1])):
        ledger.record(node, PodDemand(namespace="ns", name=f"p{k}", cpu_cores=cpu), at)
        recorded.append((node, at, cpu))
    names = ["a", "b", "c"]
    got = ledger.pending(names, np.array(samples), now).cpu_cores
    for i, name in enumerate(names):
        latest = max((at for n, at, _ in recorded if n == name), default=-math.inf)
        # Forgotten on record once older than the newest placement's window: the definition
        # below applies to placements still inside the window at `now`, which are all kept.
        expected = sum(cpu for n, at, cpu in recorded if n == name
                       and at >= now - WINDOW and at >= latest - WINDOW
                       and not (samples[i] >= at + SETTLE))
        assert got[i] == pytest.approx(expected, abs=1e-9)



def test_same_pod_is_counted_once() -> None:
    ledger = Ledger(WINDOW, SETTLE)
    pod = PodDemand(namespace="ns", name="p", cpu_cores=2)
    ledger.record("a", pod, 10.0)
    ledger.record("a", pod, 11.0)  # prioritize winner, then bind
    assert ledger.pending(["a"], np.array([math.nan]), 20.0).cpu_cores[0] == 2


def test_ledger_is_bounded_per_node() -> None:
    ledger = Ledger(WINDOW, SETTLE)
    for k in range(3 * MAX_PER_NODE):
        ledger.record("a", PodDemand(namespace="ns", name=f"p{k}", cpu_cores=1), 10.0 + k * 1e-3)
    assert len(ledger.snapshot(11.0)["a"]) == MAX_PER_NODE


def test_running_totals_follow_the_per_node_bound() -> None:
    ledger = Ledger(WINDOW, SETTLE)
    table = NodeTable(names=("a",), metrics=("cpu",), values=np.zeros((1, 1)),
                      sampled_at=np.full((1, 1), math.nan))
    rows = table.rows(["a"])
    assert ledger.pending_for(table, 0, rows, 10.0) is None
    for k in range(MAX_PER_NODE + 50):  # totals exist while the bound starts evicting
        ledger.record("a", PodDemand(namespace="ns", name=f"p{k}", cpu_cores=1), 10.0 + k * 1e-3)
        fast = ledger.pending_for(table, 0, rows, 11.0)
        assert fast is not None and fast.cpu_cores[0] == min(k + 1, MAX_PER_NODE)
    assert ledger.pending(["a"], np.array([math.nan]), 11.0).cpu_cores[0] == MAX_PER_NODE


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("record"), st.sampled_from(["a", "b", "c", "d"]), st.floats(0, 5),
              st.integers(0, 4000), st.integers(0, 2**33)),
    st.tuples(st.just("query"), st.floats(0, 5)),
    st.tuples(st.just("refresh"), st.lists(st.one_of(st.just(math.nan), st.floats(0, 300)),
                                           min_size=3, max_size=3))), max_size=30))
def test_running_totals_equal_the_reference(steps: list[tuple]) -> None:
    """`pending_for` (running totals) gives bit-identical loads to `pending_rows` (the logs) while
    placements, queries and new tables interleave, the clock moving forward."""
    ledger = Ledger(WINDOW, SETTLE)
    names = ("a", "b", "c")  # "d" is placed on but is no table node
    table = NodeTable(names=names, metrics=("cpu",), values=np.zeros((3, 1)),
                      sampled_at=np.full((3, 1), math.nan))
    candidates = ["c", "ghost", "a", "b"]
    rows = table.rows(candidates)
    now, k = 100.0, 0
    for step in steps:
        if step[0] == "record":
            _, node, dt, mcpu, mem = step
            now += dt
            k += 1
            ledger.record(node, PodDemand(namespace="ns", name=f"p{k}", cpu_cores=mcpu / 1000,
                                          memory_bytes=mem), now)
        elif step[0] == "refresh":
            table = NodeTable(names=names, metrics=("cpu",), values=np.zeros((3, 1)),
                              sampled_at=np.array(step[1]).reshape(3, 1))
        else:
            now += step[1]
        fast = ledger.pending_for(table, 0, rows, now)
        slow = ledger.pending(candidates, table.sampled_at[rows, 0], now)
        if fast is None:
            assert not slow.any
        else:
            assert fast.cpu_cores.tolist() == slow.cpu_cores.tolist()
            assert fast.memory_bytes.tolist() == slow.memory_bytes.tolist()


def pod(name: str, cpu: float = 1.0, uid: str = "") -> PodDemand:
    return PodDemand(namespace="ns", name=name, uid=uid or f"uid-{name}", cpu_cores=cpu)


def cpu_on(ledger: Ledger, now: float = 10.0) -> dict[str, float]:
    names = ["a", "b"]
    load = ledger.pending(names, np.array([math.nan, math.nan]), now).cpu_cores
    return dict(zip(names, load.tolist(), strict=True))


def test_a_confirmed_placement_moves_the_guess_of_the_same_pod() -> None:
    ledger = Ledger(WINDOW, SETTLE)
    assert ledger.record("a", pod("x"), 1.0)                   # prioritize's favourite
    assert ledger.record("b", pod("x"), 2.0, confirmed=True)   # the API server: bound on b
    assert cpu_on(ledger) == {"a": 0.0, "b": 1.0}
    assert not ledger.record("a", pod("x"), 3.0)               # a later guess changes nothing
    assert cpu_on(ledger) == {"a": 0.0, "b": 1.0}


def test_the_same_pod_from_two_sources_is_counted_once_by_uid() -> None:
    ledger = Ledger(WINDOW, SETTLE)
    ledger.record("a", pod("x", uid="u1"), 1.0)
    ledger.record("a", pod("x", uid="u1"), 1.5, confirmed=True)  # bind, then the watch
    ledger.record("a", pod("x", uid="u1"), 2.0, confirmed=True)
    assert cpu_on(ledger) == {"a": 1.0, "b": 0.0}
    # A pod re-created under the same name is another pod.
    ledger.record("a", pod("x", uid="u2"), 3.0, confirmed=True)
    assert cpu_on(ledger) == {"a": 2.0, "b": 0.0}


def test_a_forgotten_pod_leaves_its_node_and_the_running_totals() -> None:
    ledger = Ledger(WINDOW, SETTLE)
    table = NodeTable(names=("a", "b"), metrics=("cpu",), values=np.zeros((2, 1)),
                      sampled_at=np.full((2, 1), math.nan))
    rows = np.array([0, 1])
    ledger.record("a", pod("x", 2.0), 1.0, confirmed=True)
    ledger.record("a", pod("y", 3.0), 2.0, confirmed=True)
    assert ledger.pending_for(table, 0, rows, 10.0).cpu_cores.tolist() == [5.0, 0.0]
    ledger.forget("uid-x")
    assert ledger.pending_for(table, 0, rows, 10.0).cpu_cores.tolist() == [3.0, 0.0]
    assert cpu_on(ledger) == {"a": 3.0, "b": 0.0}
    ledger.forget("uid-unknown")  # nothing to forget: no error


def test_each_profile_reads_the_ledger_with_its_own_window_and_settle_time() -> None:
    ledger = Ledger(120.0, SETTLE)
    table = NodeTable(names=("a",), metrics=("cpu",), values=np.zeros((1, 1)),
                      sampled_at=np.array([[75.0]]))
    rows = np.array([0])
    ledger.record("a", pod("old", 1.0), 0.0)
    ledger.record("a", pod("new", 2.0), 70.0)
    # At 100: a 60 s window keeps only "new"; 120 s keeps both. The sample at 75 shows "new"
    # only for a settle time under 5 s.
    assert ledger.pending_for(table, 0, rows, 100.0, window_s=60, settle_s=30).cpu_cores[0] == 2.0
    assert ledger.pending_for(table, 0, rows, 100.0, window_s=120, settle_s=80).cpu_cores[0] == 3.0
    assert ledger.pending_for(table, 0, rows, 100.0, window_s=120, settle_s=1) is None  # none
