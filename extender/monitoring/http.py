"""The named-metric routes, nested under /api/v1 by `extender.api`.

    GET /api/v1/metrics                 the catalog: name, unit, description, levels
    GET /api/v1/metrics/<name>          ?level=&selector=            current values
                                        ?level=&selector=&start=[&end=&step=]   history
    GET /api/v1/sd/targets              Prometheus HTTP service discovery (workers, sidecars)
    GET /api/v1/openapi.json            the OpenAPI document of every /api/v1 route

Errors are `{"error": "..."}` and map here, in one place:

    RequestError, BadSelector           400 (bad parameter, bad selector, too many points)
    NotFound, DiscoveryNotConfigured    404
    TooManySeries                       422 (narrow the selector)
    QueryFailed                         502 (Prometheus answered with an error)
    PrometheusUnreachable, DiscoveryUnavailable   503 with Retry-After
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from flask import Blueprint, Response, request

from extender.errors import PrometheusUnreachable, QueryFailed
from extender.metrics.cache import Snapshot
from extender.metrics.prometheus import PrometheusSource
from extender.monitoring.catalog import MonitoringCatalog
from extender.monitoring.discovery import (
    DiscoveryNotConfigured,
    DiscoveryUnavailable,
    ResourcesFile,
    WorkerSource,
    target_groups,
)
from extender.monitoring.model import ApiError
from extender.monitoring.openapi import openapi_document
from extender.monitoring.query import NamedMetrics, RangeSource, RequestError
from extender.monitoring.selector import BadSelector
from extender.settings import Settings

JSON = "application/json"
RETRY_AFTER_S = "5"
METRIC_PARAMS = frozenset({"level", "selector", "start", "end", "step"})


def default_source(settings: Settings) -> PrometheusSource:
    """A Prometheus client with the Monitoring API's timeout and its own connection pool."""
    return PrometheusSource(msgspec.structs.replace(
        settings.prometheus, query_timeout_s=settings.monitoring.query_timeout_s))


def default_workers(catalog: MonitoringCatalog) -> WorkerSource | None:
    """The mounted resources.json named by `discovery.resources_file`, if any."""
    path = catalog.discovery.resources_file
    return ResourcesFile(catalog.resolve(path)) if path else None


def metrics_blueprint(settings: Settings, catalog: MonitoringCatalog,
                      snapshot: Callable[[], Snapshot], clock: Callable[[], float], *,
                      source: RangeSource | None = None,
                      workers: WorkerSource | None = None) -> Blueprint:
    """The named-metric, service-discovery and OpenAPI routes (no url_prefix: nest it)."""
    bp = Blueprint("named_metrics", __name__)
    document = openapi_document(catalog)
    workers = workers if workers is not None else default_workers(catalog)
    named = NamedMetrics(catalog, settings.monitoring, snapshot=snapshot,
                         source=source or default_source(settings), workers=workers, clock=clock)

    @bp.get("/metrics")
    def listing() -> Response:
        return _json(named.listing())

    @bp.get("/metrics/<name>")
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

    @bp.get("/sd/targets")
    def sd_targets() -> Response:
        if workers is None:
            raise DiscoveryNotConfigured(
                f"{catalog.source}: discovery.resources_file is not set: mount the partition "
                f"ConfigMap and point it at resources.json")
        return _json(target_groups(workers.workers(), catalog.discovery))

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return _json(document)

    @bp.errorhandler(RequestError)
    def request_error(exc: RequestError) -> Response:
        return _error(exc.status, str(exc))

    @bp.errorhandler(BadSelector)
    def bad_selector(exc: BadSelector) -> Response:
        return _error(400, str(exc))

    @bp.errorhandler(DiscoveryNotConfigured)
    def not_configured(exc: DiscoveryNotConfigured) -> Response:
        return _error(404, str(exc))

    @bp.errorhandler(QueryFailed)
    def query_failed(exc: QueryFailed) -> Response:
        return _error(502, f"Prometheus rejected the query: {exc}")

    @bp.errorhandler(PrometheusUnreachable)
    def unreachable(exc: PrometheusUnreachable) -> Response:
        return _error(503, f"Prometheus is unreachable ({exc}): history and uncached levels need "
                           f"it; node-level current values of cached metrics are still served",
                      retry=True)

    @bp.errorhandler(DiscoveryUnavailable)
    def discovery_unavailable(exc: DiscoveryUnavailable) -> Response:
        return _error(503, str(exc), retry=True)

    return bp


def _json(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, mimetype=JSON)


def _error(status: int, message: str, *, retry: bool = False) -> Response:
    response = _json(ApiError(error=message), status)
    if retry:
        response.headers["Retry-After"] = RETRY_AFTER_S
    return response
