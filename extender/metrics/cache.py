"""When we ask, and what we know: a background refresher that swaps whole immutable snapshots.

Design (after the Trimaran load-watcher collector):
- One refresher thread per process issues one query per catalog entry per interval, for all
  nodes at once, all evaluated at the same instant. The request path only reads `current()`: it
  never waits on Prometheus, so the Prometheus load does not grow with the request rate.
- Fetch outside the lock, build a new `NodeTable`, swap it in one assignment. In production the
  fetch and build run in a child process (`ChildFetcher`), so they never hold the GIL that the
  request threads need.
- A failed query keeps the previous values of that metric with their old timestamps: they go
  stale after `max_staleness_s` and then count as missing. A dead Prometheus therefore degrades
  the answers step by step and visibly (status, /readyz body, /metrics), and recovery is automatic.
- Each value's time is the evaluation time of the last refresh that returned its series.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from extender.errors import MetricsError, PrometheusUnreachable
from extender.metrics.identity import NodeResolver
from extender.metrics.prometheus import MetricsSource, PrometheusSource, Sample
from extender.metrics.rules import recorded_query
from extender.policies.model import (
    ALLOCATION_METRICS,
    Allocation,
    FloatArray,
    NodeTable,
    OwnerKey,
    OwnerUsage,
)
from extender.settings import CatalogEntry, Settings

log = logging.getLogger(__name__)

FORGET_AFTER_STALENESS = 10  # a node unseen for 10 x max_staleness is taken to be deleted


@dataclass(frozen=True)
class RefreshStatus:
    """What the last refresh found (served by /readyz, /api/v1/selfcheck and /metrics)."""

    started_at: float = 0.0
    duration_s: float = 0.0
    prometheus_up: bool = False
    errors: Mapping[str, str] = field(default_factory=dict)
    """Catalog entry -> error of its query in the last refresh."""
    series: Mapping[str, int] = field(default_factory=dict)
    """Catalog entry -> number of series returned."""
    unmatched: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Catalog entry -> exporter identities that match no Kubernetes node."""
    kubernetes_nodes: int = 0
    """Nodes known from the alias query (kube_node_info); 0 when it returned nothing."""
    recorded: tuple[str, ...] = ()
    """Catalog entries read from their recording rule's series in this refresh."""
    rules_missing: Mapping[str, str] = field(default_factory=dict)
    """Catalog entry -> its recorded series, absent (or older than max_staleness_s) in this
    refresh: with `cache.recording_rules: auto` while its raw query returned series (the entry
    was read raw), with `recorded` whenever it returned nothing."""


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of everything the cache knows."""

    table: NodeTable
    status: RefreshStatus
    last_success: float | None = None
    """Time of the last refresh in which Prometheus answered."""
    refreshes: int = 0

    def age_s(self, now: float) -> float | None:
        """Seconds since the last successful refresh (None before the first)."""
        return None if self.last_success is None else max(0.0, now - self.last_success)


def build_table(settings: Settings, results: Mapping[str, list[Sample]], resolver: NodeResolver,
                at: float, previous: NodeTable | None) -> tuple[NodeTable, dict[str, tuple[str, ...]]]:
    """A new table from this refresh's results; entries absent from `results` keep `previous`.

    Returns the table and, per entry, the identities that matched no node.
    """
    metrics = tuple(entry.name for entry in settings.catalog)
    names: set[str] = set(resolver.known)
    resolved: dict[str, dict[str, float]] = {}
    unmatched: dict[str, tuple[str, ...]] = {}
    for entry in settings.catalog:
        samples = results.get(entry.name)
        if samples is None:
            continue
        per_node: dict[str, float] = {}
        misses: list[str] = []
        for sample in samples:
            node, identity = resolver.resolve(sample.labels, entry.node_labels)
            if node is None:
                misses.append(identity or "<no node label>")
                continue
            # Several series for one node (e.g. old and new dcgm labels): keep the largest, the
            # conservative choice for load signals.
            value = sample.value * entry.scale
            known = per_node.get(node)
            if known is None or value > known:
                per_node[node] = value
        resolved[entry.name] = per_node
        names.update(per_node)
        if misses:
            unmatched[entry.name] = tuple(sorted(set(misses))[:50])
    if previous is not None and len(previous.names):
        # Keep nodes absent from this refresh until their newest sample is long stale, then
        # forget them (deleted nodes must not accumulate).
        horizon = at - FORGET_AFTER_STALENESS * settings.cache.max_staleness_s
        with np.errstate(invalid="ignore"):
            newest = np.nanmax(np.where(np.isnan(previous.sampled_at), -np.inf,
                                        previous.sampled_at), axis=1)
        names.update(n for n, t in zip(previous.names, newest, strict=True) if t >= horizon)
    ordered = tuple(sorted(names))
    values = np.full((len(ordered), len(metrics)), np.nan)
    sampled = np.full_like(values, np.nan)
    if previous is not None and previous.metrics == metrics and len(previous.names):
        rows = previous.rows(ordered)
        keep = rows >= 0
        values[keep] = previous.values[rows[keep]]
        sampled[keep] = previous.sampled_at[rows[keep]]
    index = {name: i for i, name in enumerate(ordered)}
    for j, metric in enumerate(metrics):
        if metric not in resolved:
            continue
        per_node = resolved[metric]
        values[:, j] = np.nan  # this refresh answered: series not returned are gone
        sampled[:, j] = np.nan
        # One fancy assignment per metric: item by item costs ~20 ms of a 5000-node refresh.
        rows = np.fromiter(map(index.__getitem__, per_node), dtype=np.intp, count=len(per_node))
        values[rows, j] = np.fromiter(per_node.values(), dtype=float, count=len(per_node))
        sampled[rows, j] = at
    return NodeTable(names=ordered, metrics=metrics, values=values, sampled_at=sampled,
                     built_at=at, index=index,
                     allocation=allocation_state(metrics, values)), unmatched




def allocation_state(metrics: Sequence[str], values: FloatArray) -> Allocation | None:
    """Request-based allocation per node from the kube-state-metrics columns, or None when the
    catalog lacks them. Whole GPUs only (nvidia.com/gpu): a node's free GPUs are idle (1000
    milli), its requested ones full. Nodes without CPU data get NaN (the terms built on it are
    then dropped for them); nodes without GPU series have no GPUs. GPU models are unknown here,
    so task types of the target workload that require a model count as unable to run."""
    column = {metric: j for j, metric in enumerate(metrics)}
    if any(name not in column for name in ALLOCATION_METRICS):
        return None

    def col(name: str) -> FloatArray:
        return values[:, column[name]]

    gpus = np.nan_to_num(col("gpus_allocatable")).astype(np.int64).clip(0)
    used = np.minimum(np.nan_to_num(col("gpus_requested")).astype(np.int64).clip(0), gpus)
    slot = np.arange(max(int(gpus.max(initial=0)), 1))
    gpu_free = np.where(slot[None, :] < (gpus - used)[:, None], 1000.0,
                        np.where(slot[None, :] < gpus[:, None], 0.0, -1.0))
    return Allocation(
        cpu_free_milli=(col("cpu_allocatable_cores") - col("cpu_requested_cores")) * 1000.0,
        memory_free_mib=(col("memory_allocatable_bytes") - col("memory_requested_bytes")) / 2**20,
        gpu_free_milli=gpu_free, gpu_model=("",) * len(values))


class TableCollector(Protocol):
    """Produces a table per refresh: `Fetcher`, `ChildFetcher`, or the simulator's feed."""

    def collect(self, at: float) -> tuple[NodeTable, RefreshStatus]: ...


class Fetcher:
    """Runs one refresh: the alias query, one query per catalog entry, a new table.

    Stateful only to reuse work across refreshes (the previous table, the identity memo). Runs in
    the refresher thread, or in a child process (see `ChildFetcher`).
    """

    def __init__(self, settings: Settings, source: MetricsSource) -> None:
        self.settings = settings
        self.source = source
        metrics = [entry.name for entry in settings.catalog]
        self.table = NodeTable.empty(metrics)
        self.kubernetes_nodes = 0
        self.resolver = NodeResolver()

    def collect(self, at: float) -> tuple[NodeTable, RefreshStatus]:
        """Query everything as of `at`; never raises MetricsError (errors go in the status)."""
        errors: dict[str, str] = {}
        results: dict[str, list[Sample]] = {}
        reachable = True
        aliases: dict[str, str] = {}
        known: set[str] = set()
        alias_cfg = self.settings.node_aliases
        try:
            for sample in self.source.query(alias_cfg.query, at):
                node = sample.labels.get(alias_cfg.node_label)
                if not node:
                    continue
                known.add(node)
                for label in alias_cfg.alias_labels:
                    if sample.labels.get(label):
                        aliases[sample.labels[label]] = node
        except PrometheusUnreachable as exc:
            reachable = False
            errors["node_aliases"] = f"Prometheus unreachable: {exc}"
        except MetricsError as exc:
            errors["node_aliases"] = str(exc)
        if not known and self.kubernetes_nodes and "node_aliases" in errors:
            known = set(self.table.names)  # keep mapping stable through a failed alias query
        resolver = NodeResolver(frozenset(known), aliases)
        if resolver != self.resolver:
            self.resolver = resolver  # else keep the old one, and its memo
        recorded: list[str] = []
        missing: dict[str, str] = {}
        for entry in self.settings.catalog:
            if not reachable:
                errors[entry.name] = "skipped: Prometheus unreachable"
                continue
            try:
                results[entry.name] = self._entry(entry, at, recorded, missing)
            except PrometheusUnreachable as exc:
                reachable = False
                errors[entry.name] = f"Prometheus unreachable: {exc}"
            except MetricsError as exc:
                errors[entry.name] = str(exc)
        table, unmatched = build_table(self.settings, results, self.resolver, at, self.table)
        owners = self._owners(at, reachable, errors, results)
        self.table = dataclasses.replace(table, owners=owners) if owners is not None else table
        self.kubernetes_nodes = len(known)
        status = RefreshStatus(
            started_at=at, prometheus_up=reachable, errors=errors,
            series={name: len(samples) for name, samples in results.items()},
            unmatched=unmatched, kubernetes_nodes=len(known), recorded=tuple(recorded),
            rules_missing=missing)
        return self.table, status

    def _entry(self, entry: CatalogEntry, at: float, recorded: list[str],
               missing: dict[str, str]) -> list[Sample]:
        """One entry's series, from its recorded series or its raw query (`recording_rules`).

        In `auto` an absent recorded series costs one selector more (index lookups only), so
        the check runs in every refresh: rules installed later are used from the next one."""
        mode = self.settings.cache.recording_rules
        if entry.recorded is None or mode == "raw":
            return self.source.query(entry.query, at)
        samples = self.source.query(
            recorded_query(entry.recorded, self.settings.cache.max_staleness_s), at)
        if samples:
            recorded.append(entry.name)
            return samples
        if mode == "recorded":
            missing[entry.name] = entry.recorded
            return samples
        raw = self.source.query(entry.query, at)
        if raw:  # the raw query has data, the rule's series none: the rule is missing
            missing[entry.name] = entry.recorded
        return raw


    def _owners(self, at: float, reachable: bool, errors: dict[str, str],
                results: dict[str, list[Sample]]) -> OwnerUsage | None:
        """What each controller's pods use, from the catalog's `owners` entries; a failed query
        keeps the previous values of its resource (None: no such entries)."""
        entries = self.settings.owner_catalog
        if not entries:
            return None
        previous = self.table.owners or OwnerUsage()
        found = {"cpu": dict(previous.cpu_cores), "memory": dict(previous.memory_bytes)}
        for entry in entries:
            if not reachable:
                errors[entry.name] = "skipped: Prometheus unreachable"
                continue
            try:
                samples = self.source.query(entry.query, at)
            except MetricsError as exc:
                errors[entry.name] = str(exc)
                continue
            results[entry.name] = samples
            usage: dict[OwnerKey, float] = {}
            for sample in samples:
                key = tuple(sample.labels.get(label, "") for label in OWNER_LABELS)
                if all(key) and sample.value == sample.value:
                    usage[(key[0], key[1], key[2])] = sample.value
            found[entry.resource] = usage
        return OwnerUsage(cpu_cores=found["cpu"], memory_bytes=found["memory"])


OWNER_LABELS = ("namespace", "owner_kind", "owner_name")
"""The labels an `owners` catalog query must keep: they name the controller."""

_child: Fetcher | None = None  # the collector of a ChildFetcher's process


def _child_init(settings: Settings, source_factory: Callable[[], MetricsSource]) -> None:
    global _child
    _child = Fetcher(settings, source_factory())


def _child_collect(at: float) -> tuple[NodeTable, RefreshStatus]:
    assert _child is not None, "child collector not initialised"
    return _child.collect(at)


class ChildFetcher:
    """A Fetcher in a child process, so that HTTP, JSON parsing and table building never hold
    this process's GIL: with a 5000-node refresh in a thread, request p99 rises from ~3 ms to
    ~200 ms (the refresher takes the GIL back for a full switch interval at every numpy call of
    the request path). Only the finished table (two float arrays and the names) comes back.
    """

    def __init__(self, settings: Settings, source_factory: Callable[[], MetricsSource]) -> None:
        self.settings = settings
        self.source_factory = source_factory
        self._pool = self._start()

    def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: the parent has threads (gunicorn gthread, the refresher).
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init, initargs=(self.settings, self.source_factory))

    def collect(self, at: float) -> tuple[NodeTable, RefreshStatus]:
        """The child's refresh; a dead child is restarted and the refresh reported as failed."""
        try:
            return self._pool.submit(_child_collect, at).result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            raise MetricsError(f"refresh process died: {exc}") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def collector_for(settings: Settings,
                  source_factory: Callable[[], MetricsSource] | None = None) -> TableCollector:
    """The production collector: the settings' Prometheus (or `source_factory()`), refreshed in a
    child process when `cache.refresh_in_child` is set (the factory must then be picklable)."""
    factory = source_factory or functools.partial(PrometheusSource, settings.prometheus)
    if settings.cache.refresh_in_child:
        return ChildFetcher(settings, factory)
    return Fetcher(settings, factory())


class MetricsCache:
    """Holds the current Snapshot and refreshes it in a background thread."""

    def __init__(self, settings: Settings, fetcher: TableCollector, *,
                 clock: Callable[[], float] = time.time,
                 on_refresh: Callable[[Snapshot], None] | None = None) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.clock = clock
        self.on_refresh = on_refresh
        metrics = [entry.name for entry in settings.catalog]
        self._snapshot = Snapshot(NodeTable.empty(metrics), RefreshStatus())
        self._lock = threading.Lock()  # serialises refreshes; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage_logged = False
        self._rules_missing: frozenset[str] = frozenset()

    def current(self) -> Snapshot:
        """The latest snapshot (an atomic read; never blocks)."""
        return self._snapshot

    def refresh(self) -> Snapshot:
        """Query every catalog entry once and swap in the new snapshot. Never raises MetricsError."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> Snapshot:
        started = self.clock()
        previous = self._snapshot
        try:
            table, status = self.fetcher.collect(started)
        except MetricsError as exc:
            table = previous.table
            status = RefreshStatus(started_at=started, prometheus_up=False,
                                   errors={"refresh": str(exc)})
        status = dataclasses.replace(status, duration_s=max(0.0, self.clock() - started))
        snapshot = Snapshot(table, status, started if status.prometheus_up else
                            previous.last_success, previous.refreshes + 1)
        self._snapshot = snapshot
        self._log_outage(status)
        self._log_rules(status)
        if self.on_refresh is not None:
            self.on_refresh(snapshot)
        return snapshot

    def _log_outage(self, status: RefreshStatus) -> None:
        # Once per outage, not once per refresh.
        if not status.prometheus_up and not self._outage_logged:
            log.warning("Prometheus unreachable, serving cached values until they go stale: %s",
                        next(iter(status.errors.values()), ""))
            self._outage_logged = True
        elif status.prometheus_up and self._outage_logged:
            log.warning("Prometheus reachable again")
            self._outage_logged = False

    def _log_rules(self, status: RefreshStatus) -> None:
        # Once per change of the set of missing recording rules, not once per refresh.
        if not status.prometheus_up:
            return
        missing = frozenset(status.rules_missing.values())
        if missing == self._rules_missing:
            return
        if missing - self._rules_missing:
            fallback = ("reading their raw queries"
                        if self.settings.cache.recording_rules == "auto" else "no values")
            log.warning("recording rules missing in Prometheus: %s (%s; install "
                        "config/recording-rules.yaml or the monitoring component's "
                        "PrometheusRule, see README)", ", ".join(sorted(missing)), fallback)
        if self._rules_missing - missing:
            log.info("recording rules found: %s, reading their series",
                        ", ".join(sorted(self._rules_missing - missing)))
        self._rules_missing = missing

    def start(self) -> None:
        """Start the refresher thread (idempotent). The first refresh runs in the thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="metrics-refresher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the refresher thread (and the refresh process, if any)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if isinstance(self.fetcher, ChildFetcher):
            self.fetcher.close()

    def _run(self) -> None:
        interval = self.settings.cache.refresh_interval_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the refresher must outlive any bug in one refresh
                log.exception("metrics refresh failed")
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))
