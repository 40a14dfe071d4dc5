"""The published metrics, built from one Tracker snapshot per collection.

A custom Collector (prometheus_client's `Collector` protocol) rather than Counter/Gauge objects
updated alongside the tracker: the state is kept once, and every scrape or push shows totals,
ratio and histogram from the same instant. The same registry serves `/metrics` and the pushes.

Names are fixed; the extender's catalog and dashboards read them:

    deadline_tasks_total            tasks with a verdict (ended, or overdue while running)
    deadline_tasks_missed_total     of which missed
    deadline_miss_ratio             misses / verdicts over the sliding window (0 when empty)
    deadline_window_tasks           verdicts in that window (how much the ratio is worth)
    deadline_tasks_running          tasks started and not ended
    deadline_lateness_seconds       histogram of max(0, duration - limit) of ended tasks with an
                                    expectation; le="0" counts those in time
    deadline_bad_events_total{reason}  rejected events (see extender.sidecar.events)

No `node` or `worker` label: the Pushgateway grouping key adds them (see extender.sidecar.push).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from extender.sidecar.tracker import Stats


class DeadlineCollector:
    """Yields the deadline metric families from `stats()` (e.g. `Tracker.stats`)."""

    def __init__(self, stats: Callable[[], Stats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield CounterMetricFamily("deadline_tasks_total", "Tasks with a deadline verdict.",
                                  value=s.tasks_total)
        yield CounterMetricFamily("deadline_tasks_missed_total",
                                  "Tasks that ran past expected * (1 + relative) + absolute.",
                                  value=s.missed_total)
        yield GaugeMetricFamily("deadline_miss_ratio",
                                "Missed / judged tasks over the sliding window.",
                                value=s.miss_ratio)
        yield GaugeMetricFamily("deadline_window_tasks", "Verdicts in the sliding window.",
                                value=s.window_tasks)
        yield GaugeMetricFamily("deadline_tasks_running", "Tasks started and not ended.",
                                value=s.running)
        cumulative, buckets = 0, []
        bounds = [f"{b:g}" for b in s.lateness_buckets] + ["+Inf"]
        for bound, count in zip(bounds, s.lateness_counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        yield HistogramMetricFamily("deadline_lateness_seconds",
                                    "Seconds past the limit of ended tasks (0 when in time).",
                                    buckets=buckets, sum_value=s.lateness_sum)
        bad = CounterMetricFamily("deadline_bad_events_total", "Rejected task events.",
                                  labels=["reason"])
        for reason, count in sorted(s.bad_events.items()):
            bad.add_metric([reason], count)
        yield bad


def deadline_registry(stats: Callable[[], Stats]) -> CollectorRegistry:
    """A registry holding only the deadline metrics (no process or platform collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeadlineCollector(stats))
    return registry
