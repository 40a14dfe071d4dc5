"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Paths are written out here (a test checks them against the app's routes, both ways); schemas are
generated from the answer Structs in `model.py`, so they cannot drift from what is served. The
metric names and levels of the loaded catalog appear as enums.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extender.monitoring.catalog import LEVELS, MonitoringCatalog
from extender.monitoring.model import (
    ApiError,
    CurrentValues,
    Decisions,
    History,
    MetricList,
    NodeDetail,
    NodesView,
    SelfCheck,
    TargetGroup,
)

REF = "#/components/schemas/{name}"
ERRORS = {
    "400": "Bad parameter or selector, or too many points per series (the message says which)",
    "404": "Unknown metric, node or worker, or discovery not configured",
    "422": "Too many series: narrow the selector",
    "502": "Prometheus answered the query with an error",
    "503": "Prometheus (or the worker list) is unreachable, or (server.auth) the API server "
           "cannot check the bearer token; retry after Retry-After seconds",
    "401": "server.auth: no bearer token, or one the API server does not accept",
    "403": "server.auth: the token's user may not get this path (RBAC nonResourceURL "
           "server.auth.path_prefix + path, or the configured resource)",
}
AUTH_ERRORS = ("401", "403")
"""Any route, when the extender runs with server.auth.enabled."""
BEARER = {"type": "http", "scheme": "bearer",
          "description": "A Kubernetes token (a ServiceAccount's), checked with a TokenReview and "
                         "a SubjectAccessReview, when the extender runs with server.auth.enabled"}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": REF.format(name=model.__name__)}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _ok(ERRORS[code], _ref(ApiError)) for code in codes}


def _param(name: str, where: str, description: str, schema: dict[str, Any],
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "description": description, "schema": schema}


def _get(summary: str, ok: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
         errors: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params or [],
                    "responses": {"200": ok, **_errors(*errors, *AUTH_ERRORS)}}}


def openapi_document(catalog: MonitoringCatalog) -> dict[str, Any]:
    """The document for the extender whose named metrics are `catalog`."""
    _, schemas = msgspec.json.schema_components(
        (NodesView, NodeDetail, Decisions, SelfCheck, MetricList, CurrentValues, History,
         TargetGroup, ApiError), ref_template=REF)
    names = [m.name for m in catalog.metrics]
    metric_params = [
        _param("name", "path", "A metric of GET /api/v1/metrics", {"type": "string", "enum": names}),
        _param("level", "query", "Default: node when the metric has it, else its first level",
               {"type": "string", "enum": list(LEVELS)}),
        _param("selector", "query", "Comma-separated key=value terms: node, namespace, pod, "
               "container, pid, exe, worker (a partition worker pod), label.<pod label key>. "
               "GET /api/v1/metrics lists the keys of each level.", {"type": "string"}),
        _param("start", "query", "History from: Unix seconds, RFC 3339, or -<duration> (-1h). "
               "Without start, current values are returned.", {"type": "string"}),
        _param("end", "query", "History until (default now); same formats as start",
               {"type": "string"}),
        _param("step", "query", "Seconds between points: 15, 30s, 5m (default 60 s)",
               {"type": "string"}),
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "extract-extender Monitoring API", "version": "1",
                 "description": "Read-only JSON: the extender's node snapshot and decisions, "
                                "named metrics at cluster, node, namespace, pod, container and "
                                "process level, and Prometheus service discovery."},
        "paths": {
            "/api/v1/nodes": _get("Every node's cached metrics, data ages and reference score",
                                  _ok("Nodes", _ref(NodesView))),
            "/api/v1/nodes/{name}": _get(
                "One node with its pending placements", _ok("The node", _ref(NodeDetail)),
                params=[_param("name", "path", "Node name", {"type": "string"})],
                errors=("404",)),
            "/api/v1/decisions": _get(
                "Recent scheduling decisions with explanations", _ok("Decisions", _ref(Decisions)),
                params=[_param("pod", "query", "namespace/name, name or UID", {"type": "string"}),
                        _param("limit", "query", "1..1000 (default 50)",
                               {"type": "integer", "minimum": 1, "maximum": 1000})],
                errors=("400",)),
            "/api/v1/selfcheck": _get("Catalog entries without series, unmatched node identities",
                                      _ok("Report", _ref(SelfCheck))),
            "/api/v1/config": _get("The effective configuration, secrets redacted",
                                   _ok("Settings", {"type": "object"})),
            "/api/v1/metrics": _get("The named-metric catalog", _ok("Catalog", _ref(MetricList))),
            "/api/v1/metrics/{name}": _get(
                "Current values (from the cache or Prometheus) or, with start, history",
                _ok("Values", {"oneOf": [_ref(CurrentValues), _ref(History)]}),
                params=metric_params, errors=("400", "404", "422", "502", "503")),
            "/api/v1/sd/targets": _get(
                "Partition workers and deadline sidecars, Prometheus HTTP SD format",
                _ok("Target groups", {"type": "array", "items": _ref(TargetGroup)}),
                errors=("404", "503")),
            "/api/v1/openapi.json": _get("This document", _ok("OpenAPI 3.1", {"type": "object"})),
        },
        # No token needed (server.auth off), or a bearer token (on).
        "security": [{}, {"bearer": []}],
        "components": {"schemas": schemas, "securitySchemes": {"bearer": BEARER}},
    }
