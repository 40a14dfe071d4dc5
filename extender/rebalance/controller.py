"""The rebalancer's loop: refresh, detect, choose, evict; count and remember every cycle.

Design decisions:
- One cycle per `interval_s`, each self-contained: refresh the extender's metrics cache once
  (no background thread: the cycle is the only reader), list pods and nodes, `detect`, `choose`,
  then act. The only state carried between cycles is the debounce value, the cool-downs, the
  token bucket and the history of reports.
- Nothing is listed or evicted while no node is hot: a quiet cluster costs one metrics refresh
  per interval.
- The global rate is a token bucket (time passed in): tokens bound the cycle's budget before
  `choose`, each eviction takes one, and a refused eviction (PDB, pod gone) gives it back.
- A failed cycle (API or metrics errors) is counted and reported; the loop carries on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from urllib3.exceptions import HTTPError

from extender.metrics.cache import MetricsCache
from extender.policies.engine import Engine
from extender.rebalance.choose import Eviction, EvictionPlan, Skip, choose
from extender.rebalance.detect import Breach, Debounce, Detection, detect
from extender.rebalance.kube import ClusterApi
from extender.rebalance.settings import RebalanceSettings
from extender.settings import Settings

log = logging.getLogger(__name__)


class TokenBucket:
    """`rate_per_s` tokens per second up to `burst`; full at the start."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self.tokens, self.last = float(burst), now

    def available(self, now: float) -> int:
        """Whole tokens available at `now` (refills first)."""
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate_per_s)
        self.last = max(self.last, now)
        return int(self.tokens)

    def take(self, now: float) -> bool:
        if self.available(now) < 1:
            return False
        self.tokens -= 1.0
        return True

    def give_back(self) -> None:
        self.tokens = min(float(self.burst), self.tokens + 1.0)


class RebalanceMetrics:
    """The rebalancer's Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.evictions = Counter("rebalance_evictions_total",
                                 "Pods evicted (or, in dry run, that would be), by hot metric",
                                 ["reason", "dry_run"], registry=registry)
        self.skips = Counter("rebalance_skips_total",
                             "Pods on hot nodes left alone, by reason (pdb: 429 from the "
                             "Eviction API)", ["reason"], registry=registry)
        self.hot_nodes = Gauge("rebalance_hot_nodes",
                               "Nodes hot for the debounce period in the last cycle",
                               registry=registry)
        self.warming_nodes = Gauge("rebalance_warming_nodes",
                                   "Nodes over a limit, not yet for the debounce period",
                                   registry=registry)
        self.stale_nodes = Gauge("rebalance_stale_nodes",
                                 "Nodes with a configured metric missing or stale (never hot)",
                                 registry=registry)
        self.cycles = Counter("rebalance_cycles_total", "Cycles run", registry=registry)
        self.errors = Counter("rebalance_cycle_errors_total",
                              "Cycles that failed (API or metrics errors)", registry=registry)
        self.duration = Histogram("rebalance_cycle_duration_seconds", "Duration of a cycle",
                                  registry=registry)


@dataclass(frozen=True)
class EvictionRecord:
    """A chosen eviction and what became of it."""

    outcome: str
    """evicted, dry-run, pdb, gone, rate_limited or error."""
    eviction: Eviction


@dataclass(frozen=True)
class CycleReport:
    """One cycle, as /api/v1/rebalance shows it."""

    started_at: float
    duration_s: float = 0.0
    dry_run: bool = False
    hot: dict[str, tuple[Breach, ...]] = field(default_factory=dict)
    warming: dict[str, tuple[Breach, ...]] = field(default_factory=dict)
    stale: dict[str, tuple[str, ...]] = field(default_factory=dict)
    evictions: tuple[EvictionRecord, ...] = ()
    skips: tuple[Skip, ...] = ()
    error: str = ""


class Rebalancer:
    """Runs cycles against the API server and the extender's metrics."""

    def __init__(self, settings: RebalanceSettings, extender: Settings, api: ClusterApi,
                 cache: MetricsCache, *, metrics: RebalanceMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self.extender = settings, extender
        self.api, self.cache, self.clock = api, cache, clock
        self.metrics = metrics or RebalanceMetrics()
        self.engine = Engine(extender)
        self.state = Debounce()
        self.cooldown: dict[str, float] = {}
        limits = settings.limits
        self.bucket = TokenBucket(limits.rate_per_minute / 60.0, limits.burst, clock())
        self.history: deque[CycleReport] = deque(maxlen=settings.history)
        self.last_cycle_at: float | None = None

    def cycle(self) -> CycleReport:
        """One full cycle; never raises for API or metrics errors (they are in the report)."""
        started = self.clock()
        try:
            report = self._cycle(started)
        except (ApiException, HTTPError, OSError) as exc:
            self.metrics.errors.inc()
            log.warning("rebalance cycle failed: %s", exc)
            report = CycleReport(started, dry_run=self.settings.dry_run, error=str(exc)[:500])
        duration = max(0.0, self.clock() - started)
        report = dataclasses.replace(report, duration_s=duration)
        self.metrics.cycles.inc()
        self.metrics.duration.observe(duration)
        self.history.append(report)
        self.last_cycle_at = started
        return report

    def _cycle(self, now: float) -> CycleReport:
        snapshot = self.cache.refresh()
        found = detect(snapshot.table, self.settings.thresholds, self.state, now=now,
                       max_staleness_s=self.extender.cache.max_staleness_s,
                       debounce_cycles=self.settings.debounce_cycles)
        self.state = found.state
        self._gauge(found)
        report = CycleReport(now, dry_run=self.settings.dry_run, hot=dict(found.hot),
                             warming=dict(found.warming), stale=dict(found.stale))
        if not found.hot:
            return report
        view = self.api.observe()
        for problem in view.undecodable:
            log.warning("pod left alone, cannot read its requests: %s", problem)
        self.cooldown = {n: t for n, t in self.cooldown.items() if t > now}
        plan = choose(found, view.pods, view.nodes, snapshot.table, self.engine, self.settings,
                      now=now, budget=self.bucket.available(now), cooldown=self.cooldown)
        records, skips = self._act(plan, view.uids, now)
        for skip in skips:
            self.metrics.skips.labels(skip.reason).inc()
        return CycleReport(now, dry_run=self.settings.dry_run, hot=dict(found.hot),
                           warming=dict(found.warming), stale=dict(found.stale),
                           evictions=tuple(records), skips=tuple(skips))

    def _gauge(self, found: Detection) -> None:
        self.metrics.hot_nodes.set(len(found.hot))
        self.metrics.warming_nodes.set(len(found.warming))
        self.metrics.stale_nodes.set(len(found.stale))

    def _act(self, plan: EvictionPlan, node_uids: Mapping[str, str], now: float,
             ) -> tuple[list[EvictionRecord], list[Skip]]:
        """Evict (or, in dry run, log) the plan's pods; returns what happened to each."""
        records: list[EvictionRecord] = []
        skips = list(plan.skips)
        dry = self.settings.dry_run
        for ev in plan.evictions:
            pod = ev.pod
            if dry:
                outcome = "dry-run"
                log.info("dry run: would %s", ev.explanation)
            elif not self.bucket.take(now):
                outcome = "rate_limited"
            else:
                try:
                    outcome = self.api.evict(pod)
                except (ApiException, HTTPError, OSError) as exc:
                    log.warning("eviction of %s failed: %s", pod.key, exc)
                    outcome = "error"
                if outcome != "evicted":
                    self.bucket.give_back()
            records.append(EvictionRecord(outcome, ev))
            if outcome in ("evicted", "dry-run"):
                self.metrics.evictions.labels(ev.metric, str(dry).lower()).inc()
            else:
                skips.append(Skip(pod.key, pod.node, outcome, ev.explanation))
            if outcome != "evicted":
                continue
            log.info("%s", ev.explanation)
            self.state = self.state.reset(pod.node)
            until = now + self.settings.cooldown_s
            self.cooldown[pod.node] = self.cooldown[ev.destination] = until
            self.api.event("Pod", pod.name, pod.namespace, pod.uid, "Rebalanced", ev.explanation)
            self.api.event("Node", pod.node, "", node_uids.get(pod.node, ""), "RebalancedPod",
                           ev.explanation)
        return records, skips

    def run(self, stop: threading.Event) -> None:
        """Cycle every `interval_s` until `stop` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.cycle()
            except Exception:  # noqa: BLE001 - the loop must outlive a bug in one cycle
                self.metrics.errors.inc()
                log.exception("rebalance cycle failed")
            stop.wait(max(0.0, self.settings.interval_s - (time.monotonic() - started)))

    def summary(self) -> dict[str, object]:
        """The last cycles, newest last (for /api/v1/rebalance)."""
        return {"dry_run": self.settings.dry_run, "interval_s": self.settings.interval_s,
                "debounce_cycles": self.settings.debounce_cycles,
                "cooldown": dict(self.cooldown), "tokens": self.bucket.tokens,
                "cycles": list(self.history)}
