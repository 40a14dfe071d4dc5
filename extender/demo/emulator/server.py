"""Serves an Emulator over HTTP on loopback: one path per exporter.

    /node-exporter/metrics        node-exporter, all nodes, each series with instance="<ip>:9100"
    /kube-state-metrics/metrics   kube-state-metrics (nodes, pods, containers)
    /cadvisor/metrics             kubelet cAdvisor (containers, and pod cgroups as container="")
    /dcgm/metrics                 dcgm-exporter, GPU nodes only
    /scaphandre/<node>/metrics    Scaphandre, one endpoint per node, no host label at all
    /kepler/metrics               Kepler >= 0.10, every node (node_name label, nested RAPL zones)
    /kepler/<node>/metrics        Kepler, one node (as its DaemonSet serves it)
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from extender.demo.emulator.exporters import CONTENT_TYPE
from extender.demo.emulator.model import Emulator
from extender.demo.launcher import ScrapeTarget


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that hangs up mid-answer (Prometheus stopping) is not our error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class EmulatorServer:
    """Serves an Emulator over HTTP on 127.0.0.1 (a thread per request); a context manager."""

    def __init__(self, emulator: Emulator, *, port: int = 0):
        self.emulator = emulator
        handler = _handler(emulator)
        self._httpd = _HTTPServer(("127.0.0.1", port), handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> EmulatorServer:
        # A short poll interval makes stop() prompt (shutdown waits for the loop to notice).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def scrape_targets(self, *, job_prefix: str = "",
                       scaphandre_nodes: Collection[str] | None = None,
                       kepler_nodes: Collection[str] = ()) -> list[ScrapeTarget]:
        """`Emulator.scrape_targets` for this server's URL."""
        return self.emulator.scrape_targets(self.url, job_prefix=job_prefix,
                                            scaphandre_nodes=scaphandre_nodes,
                                            kepler_nodes=kepler_nodes)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_PATHS = {
    "/node-exporter/metrics": "node-exporter",
    "/kube-state-metrics/metrics": "kube-state-metrics",
    "/cadvisor/metrics": "cadvisor",
    "/dcgm/metrics": "dcgm",
    "/kepler/metrics": "kepler",
}


def _handler(emulator: Emulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = urlsplit(self.path).path
            node = None
            exporter = _PATHS.get(path)
            parts = path.strip("/").split("/")
            if exporter is None and len(parts) == 3 and parts[0] in ("scaphandre", "kepler") \
                    and parts[2] == "metrics":
                exporter, node = parts[0], parts[1]
            if exporter is None:
                self._send(404, "text/plain", f"not found: {path}\n")
                return
            try:
                body = emulator.render(exporter, node)
            except KeyError as exc:
                self._send(404, "text/plain", f"{exc.args[0]}\n")
                return
            self._send(200, CONTENT_TYPE, body)

        def _send(self, status: int, content_type: str, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Scrapes every second would flood stderr."""

    return Handler
