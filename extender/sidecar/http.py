"""The sidecar's HTTP endpoint, for applications on the same pod (listens on localhost).

    POST /v1/tasks/start  {"id": str, "type": str, "expected_seconds"?: float, "ts"?: float}
                          200 {"id", "expected_seconds", "source", "limit_seconds"}
    POST /v1/tasks/end    {"id": str, "ts"?: float}
                          200 {"id", "duration_seconds", "missed", "limit_seconds"}
    GET  /metrics         the deadline registry, Prometheus text format
    GET  /healthz         200 {"status": "ok", "running", "tasks_total", "push": {...}}

Errors are JSON `{"error": "<what and why>", "reason": "<bad-event reason>"}`: 400 for a body
that is not a valid event, 409 for an event that contradicts the state (`duplicate_id`,
`end_without_start`, `clock_backwards`), 503 for `too_many_running`. Every rejected event is
counted in `deadline_bad_events_total{reason}`; none stops the sidecar.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from extender.sidecar.events import BadEvent, decode_end, decode_start
from extender.sidecar.push import PushStatus
from extender.sidecar.tracker import Tracker

MAX_BODY_BYTES = 64 * 1024  # an event is well under 1 kB; anything bigger is not an event
STATUS_BY_REASON = {"duplicate_id": 409, "end_without_start": 409, "clock_backwards": 409,
                    "too_many_running": 503}


def create_sidecar_app(tracker: Tracker, registry: CollectorRegistry, *,
               push_status: Callable[[], PushStatus | None] = lambda: None) -> Flask:
    """The Flask app serving events, metrics and health for one tracker."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(BadEvent)
    def bad_event(error: BadEvent) -> tuple[Response, int]:
        return (jsonify(error=str(error), reason=error.reason),
                STATUS_BY_REASON.get(error.reason, 400))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        return jsonify(error=f"{error.name}: {error.description}"), error.code or 500

    @app.post("/v1/tasks/start")
    def start() -> Response:
        event = _decoded(tracker, decode_start)
        expectation = tracker.start(event)
        return jsonify(id=event.id, expected_seconds=expectation.seconds,
                       source=expectation.source, limit_seconds=_finite(expectation.limit_s))

    @app.post("/v1/tasks/end")
    def end() -> Response:
        verdict = tracker.end(_decoded(tracker, decode_end))
        return jsonify(id=verdict.id, duration_seconds=verdict.duration_s, missed=verdict.missed,
                       limit_seconds=_finite(verdict.expectation.limit_s))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=None,
                        headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.get("/healthz")
    def healthz() -> Response:
        stats = tracker.stats()
        push = push_status()
        return jsonify(status="ok", running=stats.running, tasks_total=stats.tasks_total,
                       missed_total=stats.missed_total, miss_ratio=stats.miss_ratio,
                       push=asdict(push) if push else None)

    return app


def _decoded(tracker: Tracker, decode: Callable[[bytes], Any]) -> Any:
    try:
        return decode(request.get_data())
    except BadEvent as error:
        tracker.reject(error)
        raise


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _Handler(WSGIRequestHandler):
    # Keep-alive: an application reports two requests per task, mostly over one connection.
    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log: one line per task event would drown the sidecar's own log."""


class HttpServer:
    """A threaded werkzeug server for `app` on host:port (port 0 picks a free one)."""

    def __init__(self, app: Flask, host: str, port: int) -> None:
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True,
                                                   request_handler=_Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="deadline-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests and wait for the serving loop to end."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
