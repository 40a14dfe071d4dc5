"""Monitoring API v1: read-only JSON of what the extender knows and why it decided.

    GET /api/v1/nodes              every node's snapshot, data ages, and the reference pod's score
    GET /api/v1/nodes/<name>       one node, with its pending (recent) placements
    GET /api/v1/decisions          recent decisions with explanations (?pod=ns/name|uid, ?limit=)
    GET /api/v1/selfcheck          catalog entries without series, identities matching no node
    GET /api/v1/config             the effective configuration, secrets redacted

These read the current snapshot; nothing calls Prometheus. The named metrics, service discovery
and the OpenAPI document (`extender.monitoring.http`) are nested into the same blueprint:

    GET /api/v1/metrics, /api/v1/metrics/<name>, /api/v1/sd/targets, /api/v1/openapi.json

The answers' types live in `extender.monitoring.model`, shared with `extender.client`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from flask import Blueprint, Response, request

from extender.metrics.cache import Snapshot
from extender.monitoring.catalog import load_for
from extender.monitoring.http import metrics_blueprint
from extender.monitoring.model import (
    CacheView,
    Decisions,
    NodeDetail,
    NodesView,
    NodeView,
    PlacementView,
    Reading,
    SelfCheck,
)
from extender.policies.engine import Outcome
from extender.policies.model import PodDemand
from extender.service import Extender
from extender.settings import redacted

MAX_DECISIONS = 1000


def reference_pod(extender: Extender) -> PodDemand:
    """The pod whose score /api/v1/nodes and extender_node_score show."""
    ref = extender.settings.monitoring.reference_pod
    return PodDemand(namespace="<reference>", name="pod", cpu_cores=ref.cpu_cores,
                     memory_bytes=ref.memory_bytes, gpus=ref.gpus, gpu_milli=1000 * ref.gpus)


def score_reference(extender: Extender, snapshot: Snapshot, now: float) -> Outcome:
    """Evaluate the reference pod on every node of the snapshot."""
    return extender.engine.decide(reference_pod(extender), snapshot.table,
                                  snapshot.table.names, now)


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
    return SelfCheck(ok=ok, prometheus_up=status.prometheus_up,
                     kubernetes_nodes=status.kubernetes_nodes, empty_entries=empty,
                     failed_entries=failed,
                     unmatched_identities={k: list(v) for k, v in status.unmatched.items()},
                     nodes_without_data=without)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def monitoring_api(extender: Extender, clock: Callable[[], float]) -> Blueprint:
    """The /api/v1 blueprint over `extender`'s cache, engine and decision log."""
    api = Blueprint("monitoring_v1", __name__, url_prefix="/api/v1")

    @api.get("/nodes")
    def nodes() -> Response:
        now, snapshot = clock(), extender.cache.current()
        ref = extender.settings.monitoring.reference_pod
        return _json(NodesView(
            time=now, cache=cache_view(snapshot, now),
            reference_pod={"cpu_cores": ref.cpu_cores, "memory_bytes": ref.memory_bytes,
                           "gpus": float(ref.gpus)},
            profile=extender.settings.policy.default,
            nodes=node_views(extender, snapshot, now)))

    @api.get("/nodes/<name>")
    def node(name: str) -> Response:
        now, snapshot = clock(), extender.cache.current()
        views = node_views(extender, snapshot, now, only=name)
        if not views:
            return _error(404, f"node {name!r} is not in the metrics cache")
        placements = extender.engine.ledger.snapshot(now).get(name, [])
        return _json(NodeDetail(node=views[0], cache=cache_view(snapshot, now), placements=[
            PlacementView(pod=p.pod, at=p.at, cpu_cores=p.cpu_cores, memory_bytes=p.memory_bytes)
            for p in placements]))

    @api.get("/decisions")
    def decisions() -> Response:
        raw_limit = request.args.get("limit", "50")
        try:
            limit = int(raw_limit)
        except ValueError:
            return _error(400, f"limit: expected an integer, got {raw_limit!r}")
        if not 1 <= limit <= MAX_DECISIONS:
            return _error(400, f"limit: expected 1..{MAX_DECISIONS}, got {limit}")
        pod = request.args.get("pod") or None
        return _json(Decisions(decisions=extender.decisions.recent(pod=pod, limit=limit)))

    @api.get("/selfcheck")
    def check() -> Response:
        return _json(selfcheck(extender, extender.cache.current()))

    @api.get("/config")
    def config() -> Response:
        return _json(redacted(extender.settings))

    api.register_blueprint(metrics_blueprint(
        extender.settings, load_for(extender.settings), extender.cache.current, clock))
    return api
