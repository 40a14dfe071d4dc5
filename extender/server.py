"""Flask app factory: HTTP in -> protocol -> service -> HTTP out. Nothing else lives here.

The scheduler's verbs are answered by `VerbRouter` in front of Flask (the hot path); health,
metrics and the Monitoring API are Flask routes. A verb's errors map to HTTP in one place (`verb`):
    BodyTooLarge   -> 413, ProtocolError -> 400   (body `{"Error": "..."}`, the verb's result type)
    anything else  -> 500 (logged with its traceback)
kube-scheduler treats any non-200 as an error of the extender (ignored when `ignorable: true`).

Readiness (`/readyz`) fails only while the extender cannot answer at all: a dead Prometheus makes
answers degrade (reported in the body), but never takes every replica out of the Service at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import msgspec
from flask import Blueprint, Flask, Response
from prometheus_client import (
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.wsgi import get_content_length

from extender import protocol as wire
from extender.errors import BodyTooLarge, ProtocolError
from extender.metrics.cache import MetricsCache, Snapshot, TableCollector
from extender.monitoring.answers import reference_terms, score_reference, selfcheck
from extender.monitoring.catalog import MonitoringCatalog
from extender.monitoring.model import SelfCheck
from extender.monitoring.query import RangeSource
from extender.monitoring.routes import monitoring_api
from extender.policies.engine import Engine
from extender.policies.scoring import DerivedTerm
from extender.service import Binder, BoundPods, EventSink, Extender
from extender.settings import Settings
from extender.telemetry import Telemetry

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from extender.access import Reviewer

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, mimetype=JSON)


def create_app(settings: Settings, catalog: MonitoringCatalog, collector: TableCollector, *,
               binder: Binder | None = None, events: EventSink | None = None,
               bound_pods: BoundPods | None = None,
               history: RangeSource | None = None, clock: Callable[[], float] = time.time,
               start_refresher: bool = True, blueprints: list[Blueprint] | None = None,
               derived_terms: Mapping[str, DerivedTerm] | None = None,
               reviewer: Reviewer | None = None) -> Flask:
    """Build the WSGI app over metrics from `collector`; starts its refresher unless told not to.

    Everything is given, nothing is read here: `settings` and the Monitoring API's `catalog` are
    loaded at the edge (`extender serve`, tests); `collector` is the one way metrics come in
    (`extender.metrics.cache.collector_for(settings)` in production, a `Fetcher` over any
    `MetricsSource` in tests, the simulator's feed). `history` answers the Monitoring API's
    Prometheus queries (default: the settings' Prometheus). `derived_terms` default to the
    engine's (`extender.policies.fragmentation.DERIVED_TERMS`). `binder` defaults to the in-cluster
    Kubernetes API when `server.bind_enabled` is set; `bound_pods` to the pod informer of the
    settings when `informer.enabled` is set (started here, with the refresher). With
    `server.auth.enabled`, every Flask route but health needs a bearer token, checked by
    `reviewer` (default: TokenReview and SubjectAccessReview through `server.auth.kubeconfig`,
    else the in-cluster service account; see `extender.access`).
    """
    disable_created_metrics()  # `_created` series double our /metrics for no dashboard's use
    app = Flask("extender")
    app.config["MAX_CONTENT_LENGTH"] = None  # we check the size ourselves, to answer in wire form
    cache = MetricsCache(settings, collector, clock=clock)
    telemetry = Telemetry(cache, clock)
    if settings.server.bind_enabled and binder is None:
        from extender.kube import ApiBinder

        binder = ApiBinder()
    if settings.server.pod_events and events is None:
        from extender.kube import ApiEventSink

        events = ApiEventSink()
    if settings.informer.enabled and bound_pods is None and start_refresher:
        from extender.informer import PodInformer

        bound_pods = PodInformer.for_settings(settings.informer, clock=clock).start()
    extender = Extender(settings, cache, Engine(settings, derived_terms=derived_terms),
                        binder=binder if settings.server.bind_enabled else None,
                        events=events, observer=telemetry, bound_pods=bound_pods, clock=clock)
    telemetry.watch_informer(bound_pods)
    app.extensions["extender"] = extender

    def on_refresh(snapshot: Snapshot) -> None:
        telemetry.refreshed(snapshot)
        outcome = score_reference(extender, snapshot, clock())
        telemetry.set_node_scores(outcome.names, outcome.scores)
        telemetry.set_node_terms(*reference_terms(settings, outcome, snapshot))
        if snapshot.refreshes == 1:
            log_selfcheck(selfcheck(extender, snapshot))

    cache.on_refresh = on_refresh
    app.extensions["telemetry"] = telemetry
    if settings.server.auth.enabled:
        from extender.access import AccessGate, ApiReviewer, protect

        auth = settings.server.auth
        protect(app, AccessGate(auth, reviewer or ApiReviewer.from_settings(auth),
                                observer=telemetry))
    max_body = settings.server.max_body_bytes

    def verb(name: str, handler: Callable[[bytes], Any]) -> Callable[[WSGIEnvironment],
                                                                     tuple[int, bytes]]:
        latency = telemetry.latency.labels(name)
        succeeded = telemetry.requests.labels(name, "200")

        def serve(environ: WSGIEnvironment) -> tuple[int, bytes]:
            started = time.perf_counter()
            code = 200
            try:
                body = wire.encode(handler(read_body(environ, max_body)))
            except BodyTooLarge as exc:
                code, body = 413, _error_body(exc)
            except ProtocolError as exc:
                code, body = 400, _error_body(exc)
            except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into 500s
                log.exception("%s failed", name)
                code, body = 500, _error_body(exc)
            latency.observe(time.perf_counter() - started)
            (succeeded if code == 200 else telemetry.requests.labels(name, str(code))).inc()
            return code, body

        return serve

    prefix = settings.server.url_prefix
    app.wsgi_app = router = VerbRouter(app.wsgi_app, {  # type: ignore[method-assign]
        f"{prefix}/filter": verb("filter", lambda b: extender.filter(
            wire.decode(b, wire.ExtenderArgs))),
        f"{prefix}/prioritize": verb("prioritize", lambda b: extender.prioritize(
            wire.decode(b, wire.ExtenderArgs))),
        f"{prefix}/bind": verb("bind", lambda b: extender.bind(
            wire.decode(b, wire.ExtenderBindingArgs))),
        f"{prefix}/preempt": verb("preempt", lambda b: extender.preempt(
            wire.decode(b, wire.ExtenderPreemptionArgs))),
    })
    app.extensions["verb_router"] = router

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        snapshot = cache.current()
        age = snapshot.age_s(clock())
        degraded = not snapshot.status.prometheus_up or age is None \
            or age > settings.cache.max_staleness_s
        body: dict[str, Any] = {
            "answering": True,
            "prometheus_up": snapshot.status.prometheus_up,
            "cache_age_s": age,
            "nodes": len(snapshot.table.names),
            "refreshes": snapshot.refreshes,
            "errors": dict(snapshot.status.errors),
        }
        if bound_pods is not None:
            informer = bound_pods.status()
            # Down, the extender still answers from its own placements (prioritize, bind):
            # degraded, never unready.
            degraded = degraded or not (informer.up and informer.synced)
            body["informer"] = {"up": informer.up, "synced": informer.synced,
                                "pods": informer.pods, "last_error": informer.last_error,
                                "note": None if informer.up else
                                "answering from this process's own placements only"}
        return _json({"status": "degraded" if degraded else "ok", **body})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(telemetry.registry), mimetype=CONTENT_TYPE_LATEST)

    app.register_blueprint(monitoring_api(extender, catalog, clock, source=history))
    for blueprint in blueprints or []:
        app.register_blueprint(blueprint)

    if start_refresher:
        cache.start()
    return app


def log_selfcheck(report: SelfCheck) -> None:
    """Log the start-up self-check: one warning per problem, so operators see breakage early."""
    if report.ok:
        log.info("self-check ok: every catalog entry returned series for known nodes")
        return
    if not report.prometheus_up:
        log.warning("self-check: Prometheus unreachable at start-up")
    if report.informer is not None and not (report.informer.up and report.informer.synced):
        log.warning("self-check: the pod informer has not listed pods (%s): counting only this "
                    "process's own placements", report.informer.last_error or "not yet synced")
    for entry in report.empty_entries:
        log.warning("self-check: catalog entry %s returned no series (exporter missing, or "
                    "query/labels wrong?)", entry)
    for entry, error in report.failed_entries.items():
        log.warning("self-check: catalog entry %s failed: %s", entry, error)
    for entry, identities in report.unmatched_identities.items():
        log.warning("self-check: %s series carry node identities matching no Kubernetes node: %s "
                    "(check node_labels / relabelling)", entry, ", ".join(identities[:5]))


HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
"""Answered on both listeners: kubelet probes the monitoring port, and a caller of the verbs can
tell the extender is up on its own port."""
MONITORING_LISTENER = "extender.monitoring"
"""WSGI environ key the monitoring listener sets: the app answers no verb there."""


def listener_apps(app: Flask) -> tuple[WSGIApplication, WSGIApplication]:
    """(verbs, monitoring): the WSGI apps of `create_app`'s two listeners, over one Extender.

    The verbs' app answers the verbs and health, and 404 for anything else: the Monitoring API,
    /metrics and whatever else Flask routes never run on a verb thread. The monitoring app is the
    Flask app itself (so middleware wrapped around `app.wsgi_app` applies) with the verbs turned
    away (404): they are only served where their listener's client certificates are checked.
    `app` itself still routes everything (in-process tests, `--monitoring-bind ""`).
    """
    router: VerbRouter = app.extensions["verb_router"]

    def verbs(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in HEALTH_PATHS:
            return app(environ, start_response)
        return router.verbs_only(environ, start_response)

    def monitoring(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ[MONITORING_LISTENER] = True
        return app(environ, start_response)

    return verbs, monitoring


class VerbRouter:
    """WSGI middleware that answers the scheduler's verbs before Flask sees them.

    kube-scheduler calls filter and prioritize for every pod, inside its scheduling cycle. Flask's
    dispatch (request context, URL routing, response object, signals) costs about 100 us a call,
    as much as deciding for 100 nodes, and buys nothing for a bytes-in, bytes-out endpoint. So a
    POST to a verb's path goes straight to its handler; every other request goes to Flask.
    """

    def __init__(self, flask: WSGIApplication,
                 verbs: Mapping[str, Callable[[WSGIEnvironment], tuple[int, bytes]]]) -> None:
        self.flask = flask
        self.verbs = dict(verbs)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        serve = None if environ.get(MONITORING_LISTENER) else self._verb(environ)
        if serve is None:
            return self.flask(environ, start_response)
        return self._answer(serve, environ, start_response)

    def verbs_only(self, environ: WSGIEnvironment,
                   start_response: StartResponse) -> Iterable[bytes]:
        """Answer a verb; anything else gets 404 without reaching Flask."""
        serve = self._verb(environ)
        if serve is None:
            body = _error_body(ProtocolError(
                f"{environ.get('PATH_INFO', '')}: not found on the verbs' port (the Monitoring "
                "API and /metrics have a listener of their own)"))
            start_response("404 Not Found", [("Content-Type", JSON),
                                             ("Content-Length", str(len(body)))])
            return [body]
        return self._answer(serve, environ, start_response)

    def _verb(self, environ: WSGIEnvironment) -> Callable[[WSGIEnvironment],
                                                          tuple[int, bytes]] | None:
        path = environ.get("PATH_INFO", "")
        if "//" in path:  # kube-scheduler joins urlPrefix and verb with "/": "/filter" gives "//filter"
            path = "/" + "/".join(part for part in path.split("/") if part)
        return self.verbs.get(path)

    def _answer(self, serve: Callable[[WSGIEnvironment], tuple[int, bytes]],
                environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            code, body = 405, _error_body(ProtocolError(
                f"{environ.get('REQUEST_METHOD')} is not allowed here: kube-scheduler POSTs"))
            headers = [("Allow", "POST")]
        else:
            code, body = serve(environ)
            headers = []
        start_response(f"{code} {HTTPStatus(code).phrase}", [
            ("Content-Type", JSON), ("Content-Length", str(len(body))), *headers])
        return [body]


def read_body(environ: WSGIEnvironment, max_body: int) -> bytes:
    """The request body, never more than `max_body` bytes read (BodyTooLarge beyond)."""
    length = get_content_length(environ)
    if length is not None and length > max_body:
        raise BodyTooLarge(f"request body is {length} bytes, the limit is {max_body}")
    stream = environ["wsgi.input"]
    if length is not None:
        return stream.read(length)  # type: ignore[no-any-return]
    if not environ.get("wsgi.input_terminated"):
        # Without a length, only a server that ends the stream itself (gunicorn, for chunked
        # bodies) makes reading safe; elsewhere a read would wait for the client forever.
        return b""
    data = stream.read(max_body + 1)
    if len(data) > max_body:
        raise BodyTooLarge(f"request body exceeds the limit of {max_body} bytes")
    return data  # type: ignore[no-any-return]


def _error_body(exc: Exception) -> bytes:
    # Every verb's result type has an `Error` field except prioritize's list; kube-scheduler only
    # reads it on 200s, operators read it in logs either way.
    message = str(exc) if isinstance(exc, ProtocolError) else f"internal error: {type(exc).__name__}"
    return msgspec.json.encode({"Error": message})
