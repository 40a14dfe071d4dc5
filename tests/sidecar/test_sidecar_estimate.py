"""The estimator, the miss rule and the sliding window (pure functions, no clock)."""

from __future__ import annotations

import math
import random

import pytest

from extender.sidecar.estimate import (
    DurationEstimator,
    SlidingWindow,
    expect,
    is_miss,
    limit_s,
)
from extender.sidecar.settings import EstimatorSettings, JitterSettings

JITTER = JitterSettings(relative=0.5, absolute_s=1.0)


def trained(durations: list[float], **settings: float) -> DurationEstimator:
    estimator = DurationEstimator(EstimatorSettings(**settings))  # type: ignore[arg-type]
    for duration in durations:
        estimator.observe("fit", duration)
    return estimator


def lognormal(median: float, sigma: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [median * math.exp(rng.gauss(0.0, sigma)) for _ in range(n)]


def test_limit_is_expected_times_one_plus_relative_plus_absolute() -> None:
    assert limit_s(10.0, JITTER) == pytest.approx(16.0)
    assert limit_s(10.0, JitterSettings(relative=0.0, absolute_s=0.0)) == 10.0


def test_miss_is_strictly_above_the_limit() -> None:
    assert not is_miss(16.0, 16.0)
    assert is_miss(16.000001, 16.0)
    assert not is_miss(3.0, math.inf)


def test_nothing_is_learned_before_min_samples_runs() -> None:
    estimator = trained([2.0] * 4, min_samples=5)
    assert estimator.learned("fit") is None
    estimator.observe("fit", 2.0)
    assert estimator.learned("fit") == pytest.approx(2.0)
    assert estimator.learned("other") is None


def test_warm_up_is_a_geometric_mean_not_the_first_sample() -> None:
    estimator = trained([1.0, 4.0, 1.0, 4.0], min_samples=4)
    assert estimator.learned("fit") == pytest.approx(2.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_online_estimate_converges_to_the_median_of_noisy_durations(seed: int) -> None:
    estimator = trained(lognormal(median=5.0, sigma=0.3, n=400, seed=seed))
    assert estimator.learned("fit") == pytest.approx(5.0, rel=0.12)


def test_one_hung_run_moves_the_estimate_by_a_bounded_amount() -> None:
    estimator = trained(lognormal(median=5.0, sigma=0.1, n=200, seed=4))
    before = estimator.learned("fit")
    assert before is not None
    estimator.observe("fit", 50_000.0)
    after = estimator.learned("fit")
    assert after is not None
    assert 1.0 < after / before < 1.10  # a plain EWMA of durations would be ~1000x


def test_instant_run_is_floored_instead_of_breaking_the_log() -> None:
    estimator = trained([2.0] * 10 + [0.0])
    learned = estimator.learned("fit")
    assert learned is not None and math.isfinite(learned) and 1.5 < learned < 2.0


def test_a_lasting_slowdown_is_learned_within_a_few_times_one_over_alpha_runs() -> None:
    estimator = trained([4.0] * 100 + [8.0] * 60, alpha=0.1)
    assert estimator.learned("fit") == pytest.approx(8.0, rel=0.1)


def test_identical_durations_do_not_freeze_the_estimate() -> None:
    # Zero deviation so far: the deviation floor still lets a change through.
    estimator = trained([3.0] * 50 + [6.0] * 80)
    assert estimator.learned("fit") == pytest.approx(6.0, rel=0.1)


def test_memory_is_bounded_by_max_types_least_recently_seen_forgotten() -> None:
    estimator = DurationEstimator(EstimatorSettings(max_types=3, min_samples=1))
    for task_type in ("a", "b", "c"):
        estimator.observe(task_type, 1.0)
    estimator.observe("a", 1.0)  # refreshes "a"
    estimator.observe("d", 1.0)
    assert len(estimator) == 3
    assert estimator.learned("b") is None
    assert estimator.learned("a") is not None


def test_expectation_prefers_profile_then_event_then_learned() -> None:
    estimator = trained([2.0] * 5, min_samples=5)
    common = {"estimator": estimator, "jitter": JITTER}
    assert expect("fit", 7.0, profile={"fit": 9.0}, **common).source == "profile"  # type: ignore[arg-type]
    by_event = expect("fit", 7.0, profile={}, **common)  # type: ignore[arg-type]
    assert (by_event.source, by_event.seconds, by_event.limit_s) == ("event", 7.0, 11.5)
    learned = expect("fit", None, profile={}, **common)  # type: ignore[arg-type]
    assert learned.source == "learned" and learned.seconds == pytest.approx(2.0)
    unknown = expect("new", None, profile={}, **common)  # type: ignore[arg-type]
    assert (unknown.source, unknown.seconds, unknown.limit_s) == ("none", None, math.inf)


def test_window_ratio_counts_only_the_last_window() -> None:
    window = SlidingWindow(seconds=60.0, buckets=60)
    window.add(0.0, True)
    window.add(0.0, True)
    window.add(30.0, False)
    window.add(30.0, False)
    assert window.ratio(30.0) == 0.5
    assert window.ratio(61.0) == 0.0  # the misses at t=0 left, the two in time remain
    assert window.counts(61.0) == (2, 0)
    assert window.counts(200.0) == (0, 0)
    assert window.ratio(200.0) == 0.0


def test_window_memory_is_fixed_under_a_burst() -> None:
    window = SlidingWindow(seconds=60.0, buckets=10)
    for i in range(100_000):
        window.add(i * 0.01, i % 4 == 0)  # 1000 s of verdicts at 100/s
    assert len(window._ring) <= 10
    total, missed = window.counts(1000.0)
    assert 5400 <= total <= 6000 and missed == pytest.approx(total / 4, abs=1)


def test_window_adds_a_verdict_from_a_clock_stepped_back_to_the_newest_bucket() -> None:
    window = SlidingWindow(seconds=60.0, buckets=60)
    window.add(100.0, False)
    window.add(50.0, True)
    assert window.counts(100.0) == (2, 1)
