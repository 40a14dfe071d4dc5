"""A loopback reverse proxy in front of the real kube-apiserver that fails chosen requests.

Not a fake of the API: every request it does not fail is forwarded to the real server (TLS,
verified against its CA) and the answer is streamed back unchanged, watches included. What it adds
is what a real server cannot be asked to do on cue:
- `fail(method, resource, status)`: answer the next matching request(s) with a Kubernetes Status
  of that code (500 from an overloaded server, ...) instead of forwarding it;
- `hold(method, resource)`: keep the next matching request until the test `release()`s it (so a
  test can compact etcd between a list and the watch that follows it: the real server then answers
  410 Gone);
- `requests` / `count(method, resource)`: every request seen, to count a controller's calls.

Clients talk plain HTTP to the proxy (`url`) with their usual bearer token, which is passed on.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes.client

_PATH = re.compile(r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)"
                   r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                "proxy-connection", "te", "trailer", "upgrade"}
WATCH_READ_TIMEOUT_S = 600.0
"""Upstream read timeout of a watch (the server ends watches after their timeoutSeconds)."""
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Request:
    """One request the proxy saw (failed, held or forwarded)."""

    method: str
    resource: str
    """The resource's plural name (`pods`, `nodes`, `leases`, ...); the subresource after a slash
    (`pods/status`, `pods/binding`)."""
    name: str | None
    watch: bool


@dataclass
class _Rule:
    method: str
    resource: str
    watch: bool | None
    times: int
    status: int | None = None
    """Answer with this code; None: hold until released."""
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    first_line: bytes = b""
    """For a held request: the first line of the real server's answer once released."""

    def matches(self, method: str, resource: str, watch: bool) -> bool:
        return (self.times > 0 and self.method == method and self.resource == resource
                and (self.watch is None or self.watch == watch))


class Hold:
    """A held request: wait until it arrives, release it, read what the server answered."""

    def __init__(self, rule: _Rule) -> None:
        self._rule = rule

    def wait_held(self, timeout_s: float) -> bool:
        """True once the request has arrived and is being held."""
        return self._rule.held.wait(timeout_s)

    def release(self) -> None:
        """Forward the held request now."""
        self._rule.released.set()

    @property
    def first_line(self) -> bytes:
        """The first line of the server's answer (a watch's first event), once released."""
        return self._rule.first_line


class FaultProxy:
    """The proxy; `url` is its base URL. Use as a context manager or start()/stop()."""

    def __init__(self, upstream: str, ca_file: Path) -> None:
        split = urlsplit(upstream)
        self.upstream_host = split.hostname or "127.0.0.1"
        self.upstream_port = split.port or 443
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self._rules: list[_Rule] = []
        self._open: set[http.client.HTTPSConnection] = set()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fault-proxy")

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open upstream connection (ends proxied watches)."""
        with self.lock:
            for rule in self._rules:
                rule.released.set()
            connections = list(self._open)
        self._server.shutdown()
        self._server.server_close()
        for connection in connections:
            _cut(connection)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api_client(self, token: str) -> kubernetes.client.ApiClient:
        """An ApiClient that goes through the proxy with `token`."""
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"authorization": token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(configuration)

    # --- what a test asks for ----------------------------------------------------------------

    def fail(self, method: str, resource: str, status: int, times: int = 1, *,
             watch: bool | None = False) -> None:
        """Answer the next `times` `method` requests on `resource` with `status` (a Kubernetes
        Status body). `watch`: only watches (True), only other requests (False, the default), any
        (None)."""
        with self.lock:
            self._rules.append(_Rule(method, resource, watch, times, status))

    def hold(self, method: str, resource: str, *, watch: bool | None = False) -> Hold:
        """Hold the next matching request until `release()`; see `Hold`."""
        rule = _Rule(method, resource, watch, 1)
        with self.lock:
            self._rules.append(rule)
        return Hold(rule)

    def count(self, method: str, resource: str, *, watch: bool = False) -> int:
        """Requests seen so far with this method on this resource (watches or not)."""
        with self.lock:
            return sum(1 for r in self.requests
                       if r.method == method and r.resource == resource and r.watch == watch)

    def methods(self) -> set[str]:
        """The HTTP methods of every request seen so far."""
        with self.lock:
            return {r.method for r in self.requests}

    # --- the handler's side --------------------------------------------------------------------

    def _rule_for(self, request: Request) -> _Rule | None:
        with self.lock:
            self.requests.append(request)
            for rule in self._rules:
                if rule.matches(request.method, request.resource, request.watch):
                    rule.times -= 1
                    return rule
        return None

    def _connect(self, read_timeout_s: float) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(self.upstream_host, self.upstream_port,
                                                 context=self.context, timeout=read_timeout_s)
        with self.lock:
            self._open.add(connection)
        return connection

    def _closed(self, connection: http.client.HTTPSConnection) -> None:
        with self.lock:
            self._open.discard(connection)
        connection.close()


def _cut(connection: http.client.HTTPSConnection) -> None:
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(2)
        except OSError:
            pass
    connection.close()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-watch (a stopped controller) are normal here.
        pass


def _status_body(code: int) -> bytes:
    reasons = {404: "NotFound", 409: "Conflict", 410: "Expired", 429: "TooManyRequests",
               500: "InternalError", 503: "ServiceUnavailable"}
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "injected by the test's fault proxy",
                       "reason": reasons.get(code, "Unknown"), "code": code}).encode()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
            pass

        def _describe(self) -> Request:
            url = urlsplit(self.path)
            match = _PATH.match(url.path)
            query = parse_qs(url.query)
            watch = query.get("watch", [""])[-1] in ("true", "1")
            if not match:
                return Request(self.command, url.path, None, watch)
            resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
            return Request(self.command, resource, match["name"], watch)

        def _route(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            request = self._describe()
            rule = proxy._rule_for(request)
            if rule is not None and rule.status is not None:
                data = _status_body(rule.status)
                self.send_response(rule.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if rule is not None:
                rule.held.set()
                rule.released.wait()
            self._forward(request, body, rule)

        def _forward(self, request: Request, body: bytes | None, rule: _Rule | None) -> None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            connection = proxy._connect(WATCH_READ_TIMEOUT_S if request.watch else REQUEST_TIMEOUT_S)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                streamed = request.watch or answer.getheader("Transfer-Encoding", "") == "chunked"
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_HEADERS:
                        self.send_header(key, value)
                if not streamed:
                    data = answer.read()
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                # The connection ends with the stream: say so, or the client's pool reuses a
                # closed socket for its next request (a POST is then lost, not retried).
                self.send_header("Connection", "close")
                self.end_headers()
                first = b""
                while True:
                    chunk = answer.read1(65536)
                    if rule is not None and b"\n" not in first:
                        first += chunk
                        rule.first_line = first.split(b"\n", 1)[0]
                    if not chunk:
                        break
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self.close_connection = True
            except (OSError, http.client.HTTPException):
                self.close_connection = True
            finally:
                proxy._closed(connection)

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def do_PUT(self) -> None:
            self._route()

        def do_PATCH(self) -> None:
            self._route()

        def do_DELETE(self) -> None:
            self._route()

    return Handler
