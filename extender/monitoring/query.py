"""Current and historical values of named metrics.

Design decisions:
- Current node-level values of cached metrics come from the extender's snapshot: no Prometheus
  call, so they are served (with their true, ageing timestamps) while Prometheus is down.
- Everything else asks Prometheus through its own `PrometheusSource` (the Monitoring API's
  timeout, a separate connection pool from the refresher), behind a small TTL cache keyed by the
  rendered PromQL and the time range: dashboards polling the same view cost one query per TTL.
- Limits are checked before asking when they can be (points per series) and on the answer when
  they cannot (series count): asking for too much is a 4xx that says what to change.
- Prometheus' query_range API is called with whole seconds (prometheus-api-client rounds), so
  start and end are rounded here first and the point count is computed on the rounded values.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from cachetools import TTLCache

from extender.errors import ExtenderError
from extender.metrics.cache import Snapshot
from extender.metrics.prometheus import RangeSeries, Sample
from extender.monitoring import selector as sel
from extender.monitoring.catalog import LEVEL_LABELS, LEVELS, Level, MonitoringCatalog, NamedMetric
from extender.monitoring.discovery import DiscoveryNotConfigured, WorkerSource
from extender.monitoring.model import (
    CurrentValues,
    History,
    LevelInfo,
    MetricInfo,
    MetricList,
    Series,
    Source,
    Value,
)
from extender.settings import MonitoringSettings

DEFAULT_STEP_S = 60.0  # one point a minute: the usual scrape interval's order of magnitude
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class RequestError(ExtenderError):
    """A request the API cannot answer as asked; `status` is its HTTP code."""

    status = 400


class NotFound(RequestError):
    status = 404


class TooManySeries(RequestError):
    status = 422


class RangeSource(Protocol):
    """What the Monitoring API needs from Prometheus (PrometheusSource provides it)."""

    def query(self, promql: str, at: float | None = None) -> list[Sample]: ...

    def query_range(self, promql: str, start: float, end: float,
                    step: float) -> list[RangeSeries]: ...


@dataclass(frozen=True)
class TimeRange:
    start: float
    end: float
    step: float

    @property
    def points(self) -> int:
        return int(math.floor((self.end - self.start) / self.step + 1e-9)) + 1


def parse_time(raw: str, now: float, what: str) -> float:
    """Unix seconds, RFC 3339 (`2026-11-23T10:00:00Z`) or `-<duration>` before now."""
    raw = raw.strip()
    if raw.startswith("-") and DURATION.fullmatch(raw[1:]):
        return now - parse_duration(raw[1:], what)
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise RequestError(f"{what}: expected Unix seconds, RFC 3339 or -<duration> (e.g. -15m), "
                           f"got {raw[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def parse_duration(raw: str, what: str) -> float:
    """Seconds from `15`, `1.5`, `30s`, `5m`, `1h`, ... (RequestError otherwise)."""
    raw = raw.strip()
    match = DURATION.fullmatch(raw)
    try:
        seconds = float(match.group(1)) * UNIT_S[match.group(2)] if match else float(raw)
    except ValueError:
        raise RequestError(f"{what}: expected seconds or a duration like 30s, 5m, 1h, "
                           f"got {raw[:40]!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise RequestError(f"{what}: must be > 0, got {raw[:40]!r}")
    return seconds


def time_range(start: str, end: str | None, step: str | None, now: float, max_points: int) -> TimeRange:
    """The validated, whole-second range of a history request."""
    t0 = float(round(parse_time(start, now, "start")))
    t1 = float(round(parse_time(end, now, "end"))) if end else float(round(now))
    width = parse_duration(step, "step") if step else DEFAULT_STEP_S
    if t1 < t0:
        raise RequestError(f"end ({t1:.0f}) is before start ({t0:.0f})")
    span = TimeRange(t0, t1, width)
    if span.points > max_points:
        least = (t1 - t0) / (max_points - 1) if max_points > 1 else t1 - t0
        raise RequestError(f"start..end every {width:g}s is {span.points} points per series, the "
                           f"limit is {max_points}: use step >= {math.ceil(least)}s or a shorter "
                           f"range")
    return span


class NamedMetrics:
    """Answers named-metric questions from the metrics cache and Prometheus."""

    def __init__(self, catalog: MonitoringCatalog, settings: MonitoringSettings, *,
                 snapshot: Callable[[], Snapshot], source: RangeSource,
                 workers: WorkerSource | None, clock: Callable[[], float]) -> None:
        self.catalog = catalog
        self.settings = settings
        self.snapshot = snapshot
        self.source = source
        self.workers = workers
        self.clock = clock
        self._results: TTLCache[tuple[Any, ...], Any] = TTLCache(
            maxsize=settings.result_cache_size, ttl=settings.result_cache_ttl_s)
        self._lock = threading.Lock()  # TTLCache is not thread-safe

    def listing(self) -> MetricList:
        """The catalog: names, units, descriptions, levels with their labels and selectors."""
        return MetricList(metrics=[MetricInfo(
            name=m.name, unit=m.unit, description=m.description.strip(),
            levels=[LevelInfo(name=level, unit=m.unit_at(level),
                              labels=list(LEVEL_LABELS[cast(Level, level)]),
                              selectors=list(sel.allowed_keys(cast(Level, level))),
                              cached=m.level(level).cache is not None)
                    for level in m.levels])
            for m in self.catalog.metrics])

    def current(self, name: str, level: str | None, selector: str | None) -> CurrentValues:
        """Current values of `name` at `level` for the series `selector` picks."""
        metric, lvl = self._metric_level(name, level)
        picked = self._selector(selector, lvl)
        now = self.clock()
        spec = metric.level(lvl)
        promql = sel.apply(spec.query, lvl, picked, self.catalog.selectors)  # validates, too
        source: Source
        if spec.cache is not None:
            values = self._from_cache(spec.cache, picked, now)
            source = "cache"
        else:
            samples = self._cached(("instant", promql), lambda: self.source.query(promql))
            values = [Value(labels=_labels(s.labels, lvl), value=s.value, timestamp=s.timestamp,
                            age_s=round(max(0.0, now - s.timestamp), 3)) for s in samples]
            source = "prometheus"
        self._check_series(metric, lvl, len(values))
        values.sort(key=lambda v: sorted(v.labels.items()))
        return CurrentValues(metric=metric.name, level=lvl, unit=metric.unit_at(lvl),
                             source=source, time=now, series=values)

    def history(self, name: str, level: str | None, selector: str | None, start: str,
                end: str | None, step: str | None) -> History:
        """Values of `name` at `level` from `start` to `end` every `step` (Prometheus only)."""
        metric, lvl = self._metric_level(name, level)
        picked = self._selector(selector, lvl)
        span = time_range(start, end, step, self.clock(), self.settings.max_points_per_series)
        promql = sel.apply(metric.level(lvl).query, lvl, picked, self.catalog.selectors)
        result = self._cached(("range", promql, span.start, span.end, span.step),
                              lambda: self.source.query_range(promql, span.start, span.end,
                                                              span.step))
        self._check_series(metric, lvl, len(result))
        series = sorted((Series(labels=_labels(r.labels, lvl), points=list(r.points))
                         for r in result), key=lambda s: sorted(s.labels.items()))
        return History(metric=metric.name, level=lvl, unit=metric.unit_at(lvl), start=span.start,
                       end=span.end, step=span.step, series=series)

    # -- internals --

    def _metric_level(self, name: str, level: str | None) -> tuple[NamedMetric, Level]:
        try:
            metric = self.catalog.metric(name)
        except KeyError:
            raise NotFound(f"no metric {name!r} in the catalog (GET /api/v1/metrics lists them)") \
                from None
        if level is None:
            level = "node" if "node" in metric.levels else next(iter(metric.levels))
        if level not in metric.levels:
            hint = "" if level in LEVELS else f" (levels are {', '.join(LEVELS)})"
            raise RequestError(f"level: metric {name} has no level {level!r}; it has "
                               f"{', '.join(metric.levels)}{hint}")
        return metric, cast(Level, level)

    def _selector(self, text: str | None, level: Level) -> sel.Selector:
        picked = sel.parse(text)
        return sel.resolve_workers(picked, level, self.catalog.discovery.namespace,
                                   self._worker_node)

    def _worker_node(self, worker: str) -> str:
        if self.workers is None:
            raise DiscoveryNotConfigured("selector worker=: no partition resources file is "
                                         "configured (discovery.resources_file)")
        for w in self.workers.workers():
            if w.pod == worker:
                return w.node
        raise NotFound(f"selector: no partition worker named {worker!r}")

    def _from_cache(self, entry: str, picked: sel.Selector, now: float) -> list[Value]:
        table = self.snapshot().table
        if entry not in table.metrics:
            return []
        j = table.metrics.index(entry)
        node = picked.get("node")
        out = []
        for i, name in enumerate(table.names):
            value, at = float(table.values[i, j]), float(table.sampled_at[i, j])
            if (node is not None and name != node) or math.isnan(value) or math.isnan(at):
                continue
            out.append(Value(labels={"node": name}, value=value, timestamp=at,
                             age_s=round(max(0.0, now - at), 3)))
        return out

    def _check_series(self, metric: NamedMetric, level: Level, count: int) -> None:
        limit = self.settings.max_series
        if count > limit:
            raise TooManySeries(
                f"{metric.name} at level {level} has {count} series, the limit is {limit}: "
                f"narrow the selector (keys at this level: "
                f"{', '.join(sel.allowed_keys(level)) or 'none'})")

    def _cached(self, key: tuple[Any, ...], fetch: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._results.get(key)
        if hit is not None:
            return hit
        result = fetch()  # MetricsError propagates: nothing is cached for failures
        with self._lock:
            self._results[key] = result
        return result


def _labels(labels: Mapping[str, str], level: Level) -> dict[str, str]:
    return {k: labels[k] for k in LEVEL_LABELS[level] if labels.get(k)}

