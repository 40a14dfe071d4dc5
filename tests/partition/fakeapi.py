"""A small but real HTTP-level fake of the Kubernetes API, for the partition controller's tests.

Why not kmock: kmock 0.8's KubernetesEmulator answers every list with `resourceVersion: '...'`,
replays all objects on each watch regardless of `resourceVersion`, ignores `labelSelector` and has
no way to expire a watch with 410 Gone, which are exactly the behaviours the controller must
handle. This server keeps a global resourceVersion, an event history that can be compacted
(watches from before it get an ERROR 410 event, as the real server sends), label selectors,
`timeoutSeconds`, chunked watch streams, create/replace/merge-patch/delete with 404/409, optimistic
concurrency on replace, graceful deletion, and fault injection. The real `kubernetes` client
talks to it over loopback HTTP.

Served paths: /api/v1/nodes, /api/v1/namespaces/{ns}/{pods,configmaps,events} and
/apis/coordination.k8s.io/v1/namespaces/{ns}/leases, collections and items.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Key = tuple[str, str | None, str]  # (resource, namespace, name)

_PATH = re.compile(
    r"^/(?:api/v1|apis/coordination\.k8s\.io/v1)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>nodes|pods|configmaps|events|leases)"
    r"(?:/(?P<name>[^/]+))?$"
)
KINDS = {
    "nodes": "Node",
    "pods": "Pod",
    "configmaps": "ConfigMap",
    "events": "Event",
    "leases": "Lease",
}


@dataclass(frozen=True)
class Request:
    method: str
    resource: str
    name: str | None
    watch: bool


@dataclass
class _Fault:
    method: str
    resource: str
    status: int
    times: int


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


class FakeKubernetes:
    """The fake API server; `url` is its base URL. Use as a context manager or start()/stop()."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.objects: dict[Key, dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, resource, type, obj
        self.rv = 0
        self.compacted = 0
        self.requests: list[Request] = []
        self.faults: list[_Fault] = []
        self.kubelet = True
        """Created pods start Running and Ready on the node of their affinity."""
        self.graceful = False
        """Deletes only mark pods terminating; finish_deletions() removes them."""
        self._stopping = False
        self._ips = itertools.count(2)
        self._uids = itertools.count(1)
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeKubernetes:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state changes (called by handlers and by tests) ----------------------------------

    def _record(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, resource, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def create(
        self, resource: str, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """Create `obj` (metadata.name or generateName); Conflict if the name is taken."""
        with self.cond:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._uids):05d}"
            key = (resource, namespace, meta["name"])
            if key in self.objects:
                raise Conflict(f"{resource} {meta['name']} already exists")
            if namespace:
                meta["namespace"] = namespace
            meta["uid"] = f"uid-{next(self._uids)}"
            meta["creationTimestamp"] = now_iso()
            obj.setdefault("kind", KINDS[resource])
            if resource == "pods":
                self._schedule(obj)
            self.objects[key] = obj
            self._record(resource, "ADDED", obj)
            return copy.deepcopy(obj)

    def _schedule(self, pod: dict[str, Any]) -> None:
        terms = (
            pod.get("spec", {})
            .get("affinity", {})
            .get("nodeAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms", [])
        )
        node = next(
            (
                f["values"][0]
                for t in terms
                for f in t.get("matchFields", [])
                if f.get("key") == "metadata.name"
            ),
            None,
        )
        if self.kubelet and node:
            pod["spec"]["nodeName"] = node
            ip = next(self._ips)
            pod["status"] = running_status(f"10.0.{ip // 250}.{ip % 250}")
        else:
            pod["status"] = {"phase": "Pending"}

    def put(
        self, resource: str, obj: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """Create or replace (no concurrency check): a test's way to change the cluster."""
        with self.cond:
            key = (resource, namespace, obj["metadata"]["name"])
            if key not in self.objects:
                return self.create(resource, obj, namespace)
            obj = copy.deepcopy(obj)
            obj["metadata"] = {**self.objects[key]["metadata"], **obj["metadata"]}
            obj.setdefault("kind", KINDS[resource])
            self.objects[key] = obj
            self._record(resource, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def replace(
        self, resource: str, obj: dict[str, Any], namespace: str | None, name: str
    ) -> dict[str, Any]:
        with self.cond:
            key = (resource, namespace, name)
            if key not in self.objects:
                raise NotFound(f"{resource} {name} not found")
            sent = obj.get("metadata", {}).get("resourceVersion")
            if sent and sent != self.objects[key]["metadata"]["resourceVersion"]:
                raise Conflict(f"{resource} {name}: the object has been modified")
            return self.put(resource, obj, namespace)

    def patch(
        self, resource: str, patch: dict[str, Any], namespace: str | None, name: str
    ) -> dict[str, Any]:
        with self.cond:
            key = (resource, namespace, name)
            if key not in self.objects:
                raise NotFound(f"{resource} {name} not found")
            return self.put(resource, _merge(self.objects[key], patch), namespace)

    def delete(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        with self.cond:
            key = (resource, namespace, name)
            if key not in self.objects:
                raise NotFound(f"{resource} {name} not found")
            obj = self.objects[key]
            if resource == "pods" and self.graceful:
                if not obj["metadata"].get("deletionTimestamp"):
                    obj["metadata"]["deletionTimestamp"] = now_iso()
                    self._record(resource, "MODIFIED", obj)
                return copy.deepcopy(obj)
            del self.objects[key]
            self._record(resource, "DELETED", obj)
            return copy.deepcopy(obj)

    def finish_deletions(self) -> None:
        """The kubelet's part of graceful deletion: remove every terminating pod."""
        with self.cond:
            for key, obj in list(self.objects.items()):
                if key[0] == "pods" and obj["metadata"].get("deletionTimestamp"):
                    del self.objects[key]
                    self._record("pods", "DELETED", obj)

    def expire_watches(self) -> None:
        """Compact the history: open watches end with 410 Gone, old resourceVersions too."""
        with self.cond:
            self.rv += 1
            self.compacted = self.rv
            self.history.clear()
            self.cond.notify_all()

    def fail(self, method: str, resource: str, status: int, times: int = 1) -> None:
        """Answer the next `times` `method` requests on `resource` with `status`."""
        with self.cond:
            self.faults.append(_Fault(method, resource, status, times))

    # --- reading ------------------------------------------------------------------------------

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return [
                copy.deepcopy(o)
                for (r, ns, _), o in sorted(self.objects.items(), key=lambda kv: kv[0][2])
                if r == resource and (namespace is None or ns == namespace)
            ]

    def count(self, method: str, resource: str) -> int:
        with self.cond:
            return sum(
                1
                for r in self.requests
                if r.method == method and r.resource == resource and not r.watch
            )

    def _fault(self, method: str, resource: str) -> int | None:
        with self.cond:
            for fault in self.faults:
                if fault.method == method and fault.resource == resource and fault.times > 0:
                    fault.times -= 1
                    return fault.status
            return None

    def _events_after(
        self,
        resource: str,
        namespace: str | None,
        selector: dict[str, str],
        rv: int,
        timeout: float,
    ) -> Iterator[dict[str, Any] | None]:
        """Events after `rv`, then None once on expiry (410); ends at timeout or shutdown."""
        deadline = time.monotonic() + timeout
        while True:
            with self.cond:
                if rv < self.compacted:
                    yield None
                    return
                batch = [
                    {"type": ev_type, "object": obj}
                    for ev_rv, ev_res, ev_type, obj in self.history
                    if ev_rv > rv and ev_res == resource and _matches(obj, namespace, selector)
                ]
                if self.history:
                    rv = max(rv, self.history[-1][0])
                if not batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._stopping:
                        return
                    self.cond.wait(min(remaining, 0.5))
                    continue
            yield from batch


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-watch (shutdown of a stopped reconciler) are normal here.
        pass


class Conflict(Exception):
    status = 409


class NotFound(Exception):
    status = 404


def _matches(obj: dict[str, Any], namespace: str | None, selector: dict[str, str]) -> bool:
    meta = obj.get("metadata", {})
    if namespace and meta.get("namespace") != namespace:
        return False
    labels = meta.get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def running_status(ip: str, phase: str = "Running", ready: bool = True) -> dict[str, Any]:
    return {
        "phase": phase,
        "podIP": ip,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }


def status_body(code: int, message: str) -> dict[str, Any]:
    reasons = {404: "NotFound", 409: "AlreadyExists", 410: "Expired", 500: "InternalError"}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reasons.get(code, "Unknown"),
        "code": code,
    }


def _handler(api: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            data: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
            return data

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            match = _PATH.match(url.path)
            if not match:
                self._send(404, status_body(404, f"no route {url.path}"))
                return
            ns, resource, name = match["ns"], match["resource"], match["name"]
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            watch = query.get("watch") in ("true", "1")
            body = self._body() if method in ("POST", "PUT", "PATCH") else {}
            with api.cond:
                api.requests.append(Request(method, resource, name, watch))
            fault = api._fault(method, resource)
            if fault:
                self._send(fault, status_body(fault, "injected fault"))
                return
            try:
                if method == "GET" and name:
                    obj = api.get(resource, name, ns)
                    if obj is None:
                        raise NotFound(f"{resource} {name} not found")
                    self._send(200, obj)
                elif method == "GET" and watch:
                    self._watch(resource, ns, query)
                elif method == "GET":
                    selector = _selector(query.get("labelSelector", ""))
                    with api.cond:
                        items = [o for o in api.list(resource, ns) if _matches(o, ns, selector)]
                        rv = api.rv
                    self._send(
                        200,
                        {
                            "kind": KINDS[resource] + "List",
                            "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(rv)},
                            "items": items,
                        },
                    )
                elif method == "POST":
                    self._send(201, api.create(resource, body, ns))
                elif method == "PUT" and name:
                    self._send(200, api.replace(resource, body, ns, name))
                elif method == "PATCH" and name:
                    self._send(200, api.patch(resource, body, ns, name))
                elif method == "DELETE" and name:
                    self._send(200, api.delete(resource, ns, name))
                else:
                    self._send(405, status_body(405, f"{method} not supported"))
            except (Conflict, NotFound) as exc:
                self._send(exc.status, status_body(exc.status, str(exc)))

        def _watch(self, resource: str, ns: str | None, query: dict[str, str]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            rv = int(query.get("resourceVersion") or 0)
            timeout = float(query.get("timeoutSeconds") or 30)
            selector = _selector(query.get("labelSelector", ""))
            try:
                for event in api._events_after(resource, ns, selector, rv, timeout):
                    if event is None:
                        event = {
                            "type": "ERROR",
                            "object": status_body(410, "too old resource version"),
                        }
                    self._chunk(json.dumps(event).encode() + b"\n")
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_PATCH(self) -> None:
            self._route("PATCH")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


def _selector(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def node(
    name: str,
    *,
    cpu: str = "4",
    memory: str = "16Gi",
    gpus: int = 0,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    unschedulable: bool = False,
    taints: list[dict[str, str]] | None = None,
    since: str | None = None,
) -> dict[str, Any]:
    """A Node object as the API server would return it."""
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {
            "allocatable": allocatable,
            "capacity": allocatable,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastHeartbeatTime": now_iso(),
                    "lastTransitionTime": since or "2026-01-01T00:00:00Z",
                }
            ],
        },
    }
