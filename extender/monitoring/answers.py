"""What the Monitoring API answers, computed from the extender's state without HTTP.

The routes (`routes.py`), the telemetry refresh hook and `extender nodes` all call these, so a
node's view, the reference pod's score and the self-check are computed one way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from extender.metrics.cache import Snapshot
from extender.monitoring.model import (
    CacheView,
    InformerView,
    NodeView,
    Reading,
    SelfCheck,
)
from extender.policies.engine import Outcome
from extender.policies.model import FloatArray, PodDemand
from extender.policies.scoring import term_points
from extender.service import Extender
from extender.settings import Settings


def reference_pod(extender: Extender) -> PodDemand:
    """The pod whose score /api/v1/nodes and extender_node_score show."""
    ref = extender.settings.monitoring.reference_pod
    return PodDemand(namespace="<reference>", name="pod", cpu_cores=ref.cpu_cores,
                     memory_bytes=ref.memory_bytes, gpus=ref.gpus, gpu_milli=1000 * ref.gpus)


def score_reference(extender: Extender, snapshot: Snapshot, now: float) -> Outcome:
    """Evaluate the reference pod on every node of the snapshot."""
    return extender.engine.decide(reference_pod(extender), snapshot.table,
                                  snapshot.table.names, now)


def reference_terms(settings: Settings, outcome: Outcome, snapshot: Snapshot
                    ) -> tuple[Sequence[str], Sequence[str], FloatArray | None]:
    """(nodes, terms, points) of the reference pod's `outcome` for `extender_node_score_term`:
    what each term gave each node, from the same evaluation as its score; points None when
    `monitoring.term_telemetry` is off or the table has more than `term_telemetry_max_nodes`
    nodes (the series would be nodes x terms)."""
    names = outcome.names
    monitoring = settings.monitoring
    if not monitoring.term_telemetry or len(names) > monitoring.term_telemetry_max_nodes:
        return names, (), None
    terms, points = term_points(outcome.detail(range(len(names))), snapshot.table.metrics)
    return names, terms, points


def cache_view(snapshot: Snapshot, now: float) -> CacheView:
    """The cache's health, as served by /api/v1/nodes."""
    status = snapshot.status
    return CacheView(prometheus_up=status.prometheus_up, age_s=snapshot.age_s(now),
                     refreshes=snapshot.refreshes, last_refresh_duration_s=status.duration_s,
                     errors=dict(status.errors))


def node_views(extender: Extender, snapshot: Snapshot, now: float,
               only: str | None = None) -> list[NodeView]:
    """One NodeView per node (or only `only`)."""
    table = snapshot.table
    outcome = score_reference(extender, snapshot, now)
    scores = outcome.scores
    units = {entry.name: entry.unit for entry in extender.settings.catalog}
    staleness = extender.settings.cache.max_staleness_s
    pending = extender.engine.ledger.snapshot(now)
    views = []
    for i, name in enumerate(table.names):
        if only is not None and name != only:
            continue
        readings = {}
        for j, metric in enumerate(table.metrics):
            value, at = table.values[i, j], table.sampled_at[i, j]
            if value != value and at != at:  # NaN: no sample ever
                continue
            age = None if at != at else round(float(now - at), 1)
            readings[metric] = Reading(
                value=None if value != value else float(value), unit=units.get(metric, ""),
                sampled_at=None if at != at else float(at), age_s=age,
                fresh=bool(age is not None and age <= staleness and value == value))
        fresh_ages = [r.age_s for r in readings.values() if r.fresh and r.age_s is not None]
        rejection = outcome.rejected.get(name)
        views.append(NodeView(
            name=name, reference_score=scores[i], passed=rejection is None,
            reason=rejection.message if rejection else None,
            data_age_s=max(fresh_ages) if fresh_ages else None, metrics=readings,
            pending_placements=len(pending.get(name, []))))
    return views


def selfcheck(extender: Extender, snapshot: Snapshot) -> SelfCheck:
    """The start-up (and any-time) self-check report."""
    status, table = snapshot.status, snapshot.table
    empty = sorted(name for name, count in status.series.items() if count == 0)
    without: dict[str, list[str]] = {}
    if status.kubernetes_nodes:
        for j, metric in enumerate(table.metrics):
            if metric not in status.series or status.series[metric] == 0:
                continue
            missing = [table.names[i] for i in range(len(table.names))
                       if table.sampled_at[i, j] != table.sampled_at[i, j]]
            if missing:
                without[metric] = missing[:50]
    failed = dict(status.errors)
    ok = status.prometheus_up and not empty and not failed and not status.unmatched
    informer = None
    if extender.bound_pods is not None:
        seen = extender.bound_pods.status()
        informer = InformerView(up=seen.up, synced=seen.synced, pods=seen.pods,
                                relists=seen.relists, errors=seen.errors,
                                last_error=seen.last_error)
        ok = ok and seen.up and seen.synced
    return SelfCheck(ok=ok, prometheus_up=status.prometheus_up,
                     kubernetes_nodes=status.kubernetes_nodes, empty_entries=empty,
                     failed_entries=failed,
                     unmatched_identities={k: list(v) for k, v in status.unmatched.items()},
                     nodes_without_data=without, informer=informer,
                     recorded_entries=list(status.recorded),
                     missing_recording_rules=dict(status.rules_missing))
