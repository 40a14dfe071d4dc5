"""The placement ledger agrees with the plain definition of pending load, and stays bounded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.policies.hotspot import MAX_PER_NODE, Ledger
from extender.policies.model import PodDemand

WINDOW, SETTLE = 60.0, 30.0

placements = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                                st.floats(0, 200, allow_nan=False),
                                st.floats(0, 8, allow_nan=False)), max_size=40)


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
