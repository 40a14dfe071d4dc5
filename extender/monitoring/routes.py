"""Monitoring API v1: the HTTP routes, read-only JSON of what the extender knows and why it decided.

    GET /api/v1/nodes                   every node's snapshot, data ages, the reference pod's score
    GET /api/v1/nodes/<name>            one node, with its pending (recent) placements
    GET /api/v1/decisions               recent decisions with explanations (?pod=ns/name|uid, ?limit=)
    GET /api/v1/selfcheck               catalog entries without series, identities matching no node
    GET /api/v1/config                  the effective configuration, secrets redacted
    GET /api/v1/metrics                 the named-metric catalog: name, unit, description, levels
    GET /api/v1/metrics/<name>          ?level=&selector=            current values
                                        ?level=&selector=&start=[&end=&step=]   history
    GET /api/v1/sd/targets              Prometheus HTTP service discovery (workers, sidecars)
    GET /api/v1/openapi.json            the OpenAPI document of every /api/v1 route

The first five read the current snapshot (`answers.py` computes them); nothing calls Prometheus.
Routes raise; errors are `{"error": "..."}` and map to HTTP here, in one place (`ERRORS`):

    RequestError, BadSelector           400 (bad parameter, bad selector, too many points)
    NotFound, DiscoveryNotConfigured    404
    TooManySeries                       422 (narrow the selector)
    QueryFailed                         502 (Prometheus answered with an error)
    PrometheusUnreachable, DiscoveryUnavailable   503 with Retry-After

The answers' types live in `model.py`, shared with `extender.client`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from flask import Blueprint, Response, request

from extender.errors import PrometheusUnreachable, QueryFailed
from extender.metrics.prometheus import PrometheusSource
from extender.monitoring.answers import cache_view, node_views, selfcheck
from extender.monitoring.catalog import MonitoringCatalog
from extender.monitoring.discovery import (
    DiscoveryNotConfigured,
    DiscoveryUnavailable,
    ResourcesFile,
    WorkerSource,
    target_groups,
)
from extender.monitoring.model import (
    ApiError,
    Decisions,
    NodeDetail,
    NodesView,
    PlacementView,
)
from extender.monitoring.openapi import openapi_document
from extender.monitoring.query import NamedMetrics, NotFound, RangeSource, RequestError
from extender.monitoring.selector import BadSelector
from extender.service import Extender
from extender.settings import Settings, redacted

JSON = "application/json"
RETRY_AFTER_S = "5"
MAX_DECISIONS = 1000
METRIC_PARAMS = frozenset({"level", "selector", "start", "end", "step"})


def _unreachable(exc: Exception) -> str:
    return (f"Prometheus is unreachable ({exc}): history and uncached levels need it; node-level "
            f"current values of cached metrics are still served")


ERRORS: tuple[tuple[type[Exception], int, Callable[[Exception], str]], ...] = (
    (RequestError, 0, str),  # 0: the exception's own `status` (400, 404, 422)
    (BadSelector, 400, str),
    (DiscoveryNotConfigured, 404, str),
    (QueryFailed, 502, lambda exc: f"Prometheus rejected the query: {exc}"),
    (PrometheusUnreachable, 503, _unreachable),
    (DiscoveryUnavailable, 503, str),
)
"""Exception -> HTTP status and message: the Monitoring API's one error mapping. 503s carry
Retry-After."""


def default_source(settings: Settings) -> RangeSource:
    """A Prometheus client with the Monitoring API's timeout and its own connection pool, in
    child processes unless `monitoring.queries_in_child` is false (`offprocess.py`)."""
    prometheus = msgspec.structs.replace(
        settings.prometheus, query_timeout_s=settings.monitoring.query_timeout_s)
    if settings.monitoring.queries_in_child:
        from extender.monitoring.offprocess import ChildRangeSource

        return ChildRangeSource(prometheus)
    return PrometheusSource(prometheus)


def default_workers(catalog: MonitoringCatalog) -> WorkerSource | None:
    """The mounted resources.json named by `discovery.resources_file`, if any."""
    path = catalog.discovery.resources_file
    return ResourcesFile(catalog.resolve(path)) if path else None


def monitoring_api(extender: Extender, catalog: MonitoringCatalog, clock: Callable[[], float], *,
                   source: RangeSource | None = None,
                   workers: WorkerSource | None = None) -> Blueprint:
    """The /api/v1 blueprint over `extender`'s cache, engine and decision log, and the named
    metrics of `catalog` (history from `source`, default: the settings' Prometheus)."""
    api = Blueprint("monitoring_v1", __name__, url_prefix="/api/v1")
    settings = extender.settings
    document = openapi_document(catalog)
    workers = workers if workers is not None else default_workers(catalog)
    named = NamedMetrics(catalog, settings.monitoring, snapshot=extender.cache.current,
                         source=source or default_source(settings), workers=workers, clock=clock)

    @api.get("/nodes")
    def nodes() -> Response:
        now, snapshot = clock(), extender.cache.current()
        ref = settings.monitoring.reference_pod
        return _json(NodesView(
            time=now, cache=cache_view(snapshot, now),
            reference_pod={"cpu_cores": ref.cpu_cores, "memory_bytes": ref.memory_bytes,
                           "gpus": float(ref.gpus)},
            profile=settings.policy.default,
            nodes=node_views(extender, snapshot, now)))

    @api.get("/nodes/<name>")
    def node(name: str) -> Response:
        now, snapshot = clock(), extender.cache.current()
        views = node_views(extender, snapshot, now, only=name)
        if not views:
            raise NotFound(f"node {name!r} is not in the metrics cache")
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
            raise RequestError(f"limit: expected an integer, got {raw_limit!r}") from None
        if not 1 <= limit <= MAX_DECISIONS:
            raise RequestError(f"limit: expected 1..{MAX_DECISIONS}, got {limit}")
        pod = request.args.get("pod") or None
        return _json(Decisions(decisions=extender.decisions.recent(pod=pod, limit=limit)))

    @api.get("/selfcheck")
    def check() -> Response:
        return _json(selfcheck(extender, extender.cache.current()))

    @api.get("/config")
    def config() -> Response:
        return _json(redacted(settings))

    @api.get("/metrics")
    def listing() -> Response:
        return _json(named.listing())

    @api.get("/metrics/<name>")
    def values(name: str) -> Response:
        args = request.args
        unknown = sorted(set(args) - METRIC_PARAMS)
        if unknown:
            raise RequestError(f"unknown parameter {unknown[0]!r} (parameters: "
                               f"{', '.join(sorted(METRIC_PARAMS))})")
        level, selector = args.get("level") or None, args.get("selector")
        start = args.get("start")
        if start is None:
            if args.get("end") or args.get("step"):
                raise RequestError("end and step need start (a history request)")
            return _json(named.current(name, level, selector))
        return _json(named.history(name, level, selector, start, args.get("end"),
                                   args.get("step")))

    @api.get("/sd/targets")
    def sd_targets() -> Response:
        if workers is None:
            raise DiscoveryNotConfigured(
                f"{catalog.source}: discovery.resources_file is not set: mount the partition "
                f"ConfigMap and point it at resources.json")
        return _json(target_groups(workers.workers(), catalog.discovery))

    @api.get("/openapi.json")
    def openapi() -> Response:
        return _json(document)

    for kind, status, message in ERRORS:
        api.register_error_handler(kind, _handler(status, message))
    return api


def _handler(status: int, message: Callable[[Exception], str]) -> Callable[[Exception], Response]:
    def handle(exc: Exception) -> Response:
        code = status or int(getattr(exc, "status", 400))
        response = _json(ApiError(error=message(exc)), code)
        if code == 503:
            response.headers["Retry-After"] = RETRY_AFTER_S
        return response

    return handle


def _json(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, mimetype=JSON)
