"""The rebalancer's own small HTTP server: /metrics, /api/v1/rebalance, /healthz, /readyz.

A wsgiref server in a daemon thread: four read-only routes polled by Prometheus and humans do
not need gunicorn. /readyz is 200 once this replica has run a cycle or is a follower waiting
for the Lease (both are healthy states); the JSON summary says which.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import msgspec
from prometheus_client import CollectorRegistry, make_wsgi_app

from extender.rebalance.controller import Rebalancer

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # Prometheus scrapes every few seconds: no access log


def application(rebalancer: Rebalancer, registry: CollectorRegistry,
                leading: Callable[[], bool]) -> Callable[[dict[str, Any], StartResponse],
                                                        Iterable[bytes]]:
    """The WSGI app serving `rebalancer`'s state."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _text(start, "200 OK", "ok")
        if path == "/readyz":
            state = "leader" if leading() else "follower"
            return _text(start, "200 OK", state)
        if path == "/api/v1/rebalance":
            body = {"leader": leading(), **rebalancer.summary()}
            data = msgspec.json.encode(body)  # NaN and infinities become null
            start("200 OK", [("Content-Type", "application/json"),
                             ("Content-Length", str(len(data)))])
            return [data]
        return _text(start, "404 Not Found", "not found")

    return app


def _text(start: StartResponse, status: str, text: str) -> list[bytes]:
    data = text.encode()
    start(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def serve(rebalancer: Rebalancer, registry: CollectorRegistry, port: int,
          leading: Callable[[], bool], host: str = "0.0.0.0") -> WSGIServer:  # noqa: S104
    """Start the server in a daemon thread; `.shutdown()` stops it. Port 0 picks a free one."""
    server = make_server(host, port, application(rebalancer, registry, leading),
                         handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="rebalance-http", daemon=True).start()
    return server
