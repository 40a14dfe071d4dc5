"""Kubernetes API edge of the partition controller: watches in, plan, actions out.

Design decisions:
- Level-triggered: watch events only update an in-memory view of nodes and workers and wake the
  loop; each reconcile plans from the whole view (pure, `plan.plan`) and acts on the difference.
  A lost event, a failed call or a restart mid-reconcile is repaired by the next pass; creates
  are idempotent because a node's worker has one possible name (409 means "already there").
- Nothing is planned before both the node list and the worker list have been read once: planning
  on an empty node list would delete every worker, on an empty pod list would re-create them all.
- Objects are decoded from raw JSON (`_preload_content=False`) into msgspec Structs holding only
  the fields we read (`kubeapi.Node`, `kubeapi.WorkerPod`). The client's model deserializer costs
  about a millisecond per Node, which makes a 5000-node relist take seconds; here it is a few
  milliseconds.
- A watch event wakes the loop only when the node's or worker's *view* changed: node heartbeats
  (a status update every 10 s or so per node) cost a decode and a compare, not a re-plan.
- Every API call goes through `_call(verb, ...)`, which counts it in
  `partition_api_calls_total{verb}`: after one node change a reconcile makes O(changes) calls.
- COMPSs (`compss` settings): the reconciler keeps the headless Service that gives each worker its
  DNS name (checked every resync, created when missing, its selector and port put back when
  changed), publishes `resources.xml` and `project.xml` beside `resources.json` after the
  runtime's rules passed (`compss.validate_files`; on failure the last good files stay), and then
  tells the master (`membership`), retrying on the next passes until that succeeded.
- Watches end after `resync_interval_s` and are followed by a relist (the periodic resync);
  410 Gone relists at once; other errors relist after a capped exponential backoff.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Generic, TypeVar

import msgspec
from kubernetes.client import AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from urllib3.exceptions import HTTPError

from extender.informer import watch_events
from extender.kubeapi import Condition, ConfigMap, Node, NodeList, Service, WorkerPod, WorkerPodList
from extender.partition.compss import (
    CompssDocumentError,
    CompssFiles,
    CompssWorker,
    compss_files,
    metric_safe,
    workers_in,
)
from extender.partition.membership import AgentMembership, Membership, MembershipError, membership_for
from extender.partition.plan import (
    GPU_RESOURCE,
    HASH_ANNOTATION,
    NODE_ANNOTATION,
    PARTITION_LABEL,
    Action,
    ObservedNode,
    ObservedWorker,
    PartitionEntry,
    Plan,
    Resources,
    backoff_delay,
    partition_document,
    partition_entries,
    plan,
    render_worker,
)
from extender.partition.settings import PartitionSettings

log = logging.getLogger(__name__)

WATCH_ERROR_BACKOFF_S = (0.5, 30.0)
"""First and largest delay before relisting after a failed list or watch (not 410)."""
RETRY_AFTER_ERROR_S = 2.0
"""A pass with failed calls is repeated this soon, even without a new event."""
EVENT_SOURCE = "extender-partition"
CONFIGMAP_MAX_BYTES = 1024 * 1024
"""The API server refuses ConfigMaps whose data exceeds 1 MiB (resources.json alone holds about
7500 workers with short node names)."""


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _quantity(value: str) -> Decimal:
    amount: Decimal = parse_quantity(value)
    return amount


def _condition(conditions: list[Condition] | None, kind: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == kind), None)


def observed_node(node: Node) -> ObservedNode:
    """The plan's view of a decoded Node (quantities parsed, Ready condition summarised)."""
    alloc = node.status.allocatable or {}
    ready = _condition(node.status.conditions, "Ready")
    return ObservedNode(
        name=node.metadata.name,
        allocatable=Resources(
            cpu_millis=int(_quantity(alloc.get("cpu", "0")) * 1000),
            memory_bytes=int(_quantity(alloc.get("memory", "0"))),
            gpus=int(_quantity(alloc.get(GPU_RESOURCE, "0"))),
        ),
        labels=node.metadata.labels or {},
        unschedulable=bool(node.spec.unschedulable),
        ready=ready is not None and ready.status == "True",
        ready_since=_timestamp(ready.lastTransitionTime) if ready else None,
        taints=tuple((t.key, t.effect) for t in node.spec.taints or ()),
    )


def observed_worker(pod: WorkerPod) -> ObservedWorker:
    """The plan's view of one of the controller's pods."""
    annotations = pod.metadata.annotations or {}
    ready = _condition(pod.status.conditions, "Ready")
    return ObservedWorker(
        name=pod.metadata.name,
        # A labelled pod without the annotation belongs to no node: the plan deletes it.
        node=annotations.get(NODE_ANNOTATION, ""),
        spec_hash=annotations.get(HASH_ANNOTATION, ""),
        phase=pod.status.phase or "Pending",
        ready=ready is not None and ready.status == "True",
        deleting=pod.metadata.deletionTimestamp is not None,
        ip=pod.status.podIP,
    )


# --- metrics --------------------------------------------------------------------------------------


class PartitionMetrics:
    """The controller's Prometheus metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.desired = Gauge(
            "partition_workers_desired", "Eligible nodes (one worker each)", registry=registry
        )
        self.ready = Gauge("partition_workers_ready", "Workers whose pod is Ready", registry=registry)
        self.duration = Histogram(
            "partition_reconcile_duration_seconds",
            "Plan plus API calls of one reconcile",
            registry=registry,
        )
        self.errors = Counter(
            "partition_reconcile_errors", "Failed API calls and watch errors", registry=registry
        )
        self.api_calls = Counter(
            "partition_api_calls", "Kubernetes API calls by verb", ["verb"], registry=registry
        )
        self.compss_workers = Gauge(
            "partition_compss_worker_info",
            "One series per ComputeNode of the published resources.xml: maps COMPSs's worker name "
            "(compss_worker, as in its deadlines_missed_<worker> gauge) to the node",
            ["compss_worker", "compute_node", "node", "pod"],
            registry=registry,
        )

    def publish_workers(self, workers: Iterable[CompssWorker]) -> None:
        """Replace the worker-to-node series with `workers`."""
        self.compss_workers.clear()
        for worker in workers:
            self.compss_workers.labels(metric_safe(worker.name), worker.name, worker.node, worker.pod).set(1)


# --- observed state -------------------------------------------------------------------------------

V = TypeVar("V")


class _Store(Generic[V]):
    """Views of one kind by name, replaced by lists and updated by watch events."""

    def __init__(self, changed: threading.Event) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, V] = {}
        self._changed = changed
        self.synced = threading.Event()

    def replace(self, items: dict[str, V]) -> None:
        with self._lock:
            differs = items != self._items
            self._items = items
        self.synced.set()
        if differs:
            self._changed.set()

    def put(self, name: str, view: V) -> None:
        with self._lock:
            differs = self._items.get(name) != view
            self._items[name] = view
        if differs:
            self._changed.set()

    def remove(self, name: str) -> V | None:
        with self._lock:
            view = self._items.pop(name, None)
        if view is not None:
            self._changed.set()
        return view

    def snapshot(self) -> dict[str, V]:
        with self._lock:
            return dict(self._items)


@dataclass(frozen=True, slots=True)
class _Kind(Generic[V]):
    """How to list, decode and view one watched resource."""

    name: str
    store: _Store[V]
    list_fn: Callable[..., Any]
    list_type: type[Any]
    item_type: type[Any]
    view: Callable[[Any], V]
    kwargs: Mapping[str, Any]


class Reconciler:
    """Keeps one worker pod per eligible node, through the Kubernetes API.

    `core_v1` is a `kubernetes.client.CoreV1Api`; `clock` gives epoch seconds (compared with node
    condition timestamps). `apps_v1` (default: on core_v1's ApiClient) patches the COMPSs master
    Deployment for `membership: roll`; `membership` replaces the one built from the settings.
    """

    def __init__(
        self,
        settings: PartitionSettings,
        core_v1: CoreV1Api,
        *,
        metrics: PartitionMetrics | None = None,
        clock: Callable[[], float] = time.time,
        apps_v1: AppsV1Api | None = None,
        membership: Membership | None = None,
    ) -> None:
        self.settings = settings
        self.api = core_v1
        self.metrics = metrics or PartitionMetrics()
        self.clock = clock
        self.changed = threading.Event()
        self.nodes: _Store[ObservedNode] = _Store(self.changed)
        self.workers: _Store[ObservedWorker] = _Store(self.changed)
        self._backoff_lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._deleted_by_us: set[str] = set()
        self._published: list[PartitionEntry] | None = None
        self._compss: CompssFiles | None = None
        """The last COMPSs files that passed the rules (published or about to be)."""
        self._in_configmap: CompssFiles | None = None
        """The COMPSs files the ConfigMap holds now (what the master may be told about)."""
        self._told: str | None = None
        """Digest of the files the master was last told about (membership)."""
        self._service_checked: float | None = None
        self.membership = membership or membership_for(settings, apps_v1 or AppsV1Api(core_v1.api_client))
        self.failed_calls = 0
        """API calls that failed in the last reconcile pass."""
        self._responses: set[Any] = set()
        self._responses_lock = threading.Lock()
        self._kinds: tuple[_Kind[Any], ...] = (
            _Kind("nodes", self.nodes, self.api.list_node, NodeList, Node, observed_node, {}),
            _Kind(
                "pods",
                self.workers,
                self.api.list_namespaced_pod,
                WorkerPodList,
                WorkerPod,
                observed_worker,
                {
                    "namespace": settings.namespace,
                    "label_selector": f"{PARTITION_LABEL}={settings.partition}",
                },
            ),
        )

    # --- API calls ---------------------------------------------------------------------------

    def _call(self, verb: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.metrics.api_calls.labels(verb).inc()
        kwargs.setdefault("_request_timeout", self.settings.api_timeout_s)
        return fn(*args, **kwargs)

    def observe(self) -> tuple[dict[str, ObservedNode], dict[str, ObservedWorker]]:
        """List nodes and workers once (no watch): what --dry-run plans from."""
        for kind in self._kinds:
            self._relist(kind)
        return self.nodes.snapshot(), self.workers.snapshot()

    def _relist(self, kind: _Kind[Any]) -> str:
        resp = self._call("list", kind.list_fn, _preload_content=False, **kind.kwargs)
        listed = msgspec.json.decode(resp.data, type=kind.list_type)
        kind.store.replace({item.metadata.name: kind.view(item) for item in listed.items or ()})
        rv: str = listed.metadata.resourceVersion
        return rv

    def _stream(self, kind: _Kind[Any], rv: str, stop: threading.Event) -> Iterator[tuple[str, Any]]:
        """Watch events (type, decoded object) from `rv` until the server ends the watch."""
        resp = self._call(
            "watch",
            kind.list_fn,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=max(1, int(self.settings.resync_interval_s)),
            _preload_content=False,
            _request_timeout=(
                self.settings.api_timeout_s,
                self.settings.resync_interval_s + self.settings.api_timeout_s,
            ),
            **kind.kwargs,
        )
        with self._responses_lock:
            self._responses.add(resp)
        try:
            for event in watch_events(resp, stop):
                yield event.type, msgspec.json.decode(event.object, type=kind.item_type)
        finally:
            with self._responses_lock:
                self._responses.discard(resp)
            resp.release_conn()

    def _watch_loop(self, kind: _Kind[Any], stop: threading.Event) -> None:
        store = kind.store
        delay = WATCH_ERROR_BACKOFF_S[0]
        while not stop.is_set():
            try:
                rv = self._relist(kind)
                for event_type, obj in self._stream(kind, rv, stop):
                    delay = WATCH_ERROR_BACKOFF_S[0]
                    if event_type == "BOOKMARK":
                        continue
                    if event_type == "DELETED":
                        gone = store.remove(obj.metadata.name)
                        if store is self.workers and gone is not None:
                            self._worker_gone(gone)
                    else:
                        store.put(obj.metadata.name, kind.view(obj))
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch expired (410 Gone): relisting", kind.name)
                    continue
                self._watch_failed(kind, exc, stop, delay)
                delay = min(delay * 2, WATCH_ERROR_BACKOFF_S[1])
            except (HTTPError, OSError, msgspec.DecodeError) as exc:
                if stop.is_set():
                    return
                self._watch_failed(kind, exc, stop, delay)
                delay = min(delay * 2, WATCH_ERROR_BACKOFF_S[1])

    def _watch_failed(self, kind: _Kind[Any], exc: Exception, stop: threading.Event, delay: float) -> None:
        self.metrics.errors.inc()
        log.warning("%s list/watch failed (%s): relisting in %.1fs", kind.name, exc, delay)
        stop.wait(delay)

    def _worker_gone(self, worker: ObservedWorker) -> None:
        if worker.name in self._deleted_by_us:
            self._deleted_by_us.discard(worker.name)
        else:
            # Deleted by someone else (eviction, kubectl, node loss): recreate with backoff.
            self._record_failure(worker.node)

    def _record_failure(self, node: str) -> None:
        with self._backoff_lock:
            failures = self._failures.get(node, 0) + 1
            self._failures[node] = failures
            self._not_before[node] = self.clock() + backoff_delay(failures, self.settings.rollout)

    # --- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Watch and reconcile until `stop` is set. Returns after stopping the watches."""
        watchers = [
            threading.Thread(
                target=self._watch_loop,
                args=(kind, stop),
                daemon=True,
                name=f"partition-watch-{kind.name}",
            )
            for kind in self._kinds
        ]
        for thread in watchers:
            thread.start()
        # Stopping must also end the wait for changes below.
        threading.Thread(target=self._wake_when_set, args=(stop,), daemon=True).start()
        try:
            while not stop.is_set() and not (self.nodes.synced.is_set() and self.workers.synced.is_set()):
                self.changed.wait(0.1)
            while not stop.is_set():
                self.changed.clear()
                wake_at = self.reconcile_once().wake_at
                timeout = self.settings.resync_interval_s
                if wake_at is not None:
                    timeout = min(timeout, max(wake_at - self.clock(), 0.0))
                if self.failed_calls:
                    timeout = min(timeout, RETRY_AFTER_ERROR_S)
                self.changed.wait(timeout)
                # Coalesce bursts of events (a rolling node update) into one reconcile.
                stop.wait(self.settings.min_reconcile_interval_s)
        finally:
            self._close_watches()

    def _wake_when_set(self, stop: threading.Event) -> None:
        stop.wait()
        self.changed.set()

    def _close_watches(self) -> None:
        with self._responses_lock:
            responses = list(self._responses)
        for resp in responses:
            try:
                resp.shutdown()
            except (OSError, AttributeError):
                pass

    def reconcile_once(self) -> Plan:
        """Plan from the current view and carry the actions out; returns the plan."""
        started = time.perf_counter()
        nodes, workers = self.nodes.snapshot(), self.workers.snapshot()
        with self._backoff_lock:
            for worker in workers.values():
                if worker.ready:
                    # A worker that made it to Ready resets its node's backoff.
                    self._failures.pop(worker.node, None)
                    self._not_before.pop(worker.node, None)
            not_before = dict(self._not_before)
        result = plan(nodes, workers.values(), self.settings, now=self.clock(), not_before=not_before)
        self.failed_calls = 0
        for action in result.actions:
            try:
                self._execute(action, nodes)
            except (ApiException, HTTPError, OSError) as exc:
                self._failed("%s %s on node %s failed: %s", action.kind, action.pod, action.node, exc)
        if self.settings.compss.enabled:
            self._ensure_service()
        self._publish(nodes)
        self._tell_master()
        ready = sum(1 for w in self.workers.snapshot().values() if w.ready and not w.deleting)
        self.metrics.desired.set(len(result.eligible))
        self.metrics.ready.set(ready)
        self.metrics.duration.observe(time.perf_counter() - started)
        return result

    def _execute(self, action: Action, nodes: Mapping[str, ObservedNode]) -> None:
        ns = self.settings.namespace
        if action.kind == "create":
            manifest = render_worker(nodes[action.node], self.settings)
            try:
                resp = self._call(
                    "create", self.api.create_namespaced_pod, ns, manifest, _preload_content=False
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                log.info("worker %s already exists: adopting it", action.pod)
                return
            self._deleted_by_us.discard(action.pod)
            # Seen before the watch reports it: the next pass must not create it again.
            self.workers.put(action.pod, observed_worker(msgspec.json.decode(resp.data, type=WorkerPod)))
            log.info("created %s on %s", action.pod, action.node)
            self._event(action.pod, "Created", f"worker for node {action.node}", "Normal")
            return
        if action.reason.startswith("worker "):
            self._record_failure(action.node)
        self._deleted_by_us.add(action.pod)
        kwargs = {}
        if self.settings.rollout.delete_grace_period_s is not None:
            kwargs["grace_period_seconds"] = self.settings.rollout.delete_grace_period_s
        try:
            self._call(
                "delete",
                self.api.delete_namespaced_pod,
                action.pod,
                ns,
                _preload_content=False,
                **kwargs,
            )
        except ApiException as exc:
            if exc.status != 404:
                self._deleted_by_us.discard(action.pod)
                raise
            self.workers.remove(action.pod)
            self._deleted_by_us.discard(action.pod)
            return
        current = self.workers.snapshot().get(action.pod)
        if current is not None:
            self.workers.put(action.pod, replace(current, deleting=True, ready=False))
        verb = "Replacing" if action.kind == "replace" else "Deleting"
        log.info("%s %s on %s: %s", verb.lower(), action.pod, action.node, action.reason)
        self._event(action.pod, verb, action.reason, "Normal" if action.kind == "replace" else "Warning")

    def _failed(self, message: str, *args: Any) -> None:
        self.failed_calls += 1
        self.metrics.errors.inc()
        log.warning(message + " (retrying)", *args)

    def _event(self, pod: str, reason: str, message: str, kind: str) -> None:
        if not self.settings.events:
            return
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        body = {
            "metadata": {"generateName": f"{pod}.", "namespace": self.settings.namespace},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": pod,
                "namespace": self.settings.namespace,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
        }
        try:
            self._call(
                "create",
                self.api.create_namespaced_event,
                self.settings.namespace,
                body,
                _preload_content=False,
            )
        except (ApiException, HTTPError, OSError) as exc:
            # Events are a courtesy to humans: never a reason to fail a reconcile.
            log.info("event on %s not recorded: %s", pod, exc)

    def _publish(self, nodes: Mapping[str, ObservedNode]) -> None:
        entries = partition_entries(nodes, self.workers.snapshot().values(), self.settings)
        if entries == self._published:
            return
        data = partition_document(entries, max_bytes=CONFIGMAP_MAX_BYTES)
        ns, name = self.settings.namespace, self.settings.configmap
        if self.settings.compss.enabled:
            data |= self._compss_data(entries, sum(len(v.encode()) for v in data.values()))
        size = sum(len(value.encode()) for value in data.values())
        if size > CONFIGMAP_MAX_BYTES:
            # Retrying cannot help until the partition changes: say so once, loudly.
            self.metrics.errors.inc()
            log.error(
                "partition ConfigMap %s not published: %d bytes exceed the 1 MiB limit "
                "(use a node_selector or shorter names)",
                name,
                size,
            )
            self._published = entries
            return
        body = {
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {PARTITION_LABEL: self.settings.partition},
            },
            "data": data,
        }
        try:
            try:
                self._call(
                    "update",
                    self.api.replace_namespaced_config_map,
                    name,
                    ns,
                    body,
                    _preload_content=False,
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self._call(
                    "create",
                    self.api.create_namespaced_config_map,
                    ns,
                    body,
                    _preload_content=False,
                )
        except (ApiException, HTTPError, OSError) as exc:
            self._failed("partition ConfigMap %s not published: %s", name, exc)
            return
        self._published = entries
        self._in_configmap = self._compss if "resources.xml" in data else None

    def _compss_data(self, entries: list[PartitionEntry], used: int) -> dict[str, str]:
        """`resources.xml` and `project.xml` for `entries`, or the last good ones, or nothing."""
        files: CompssFiles | None
        try:
            files = compss_files(entries, self.settings)
        except CompssDocumentError as exc:
            # A bug or a bad config, not a passing state: loud, and the master keeps its files.
            self.metrics.errors.inc()
            log.error("COMPSs files not updated, they break the runtime's rules: %s", exc)
            files = self._compss
        if files is None:
            return {}
        for pod, reason in sorted(files.skipped.items()):
            log.warning("worker %s left out of resources.xml: %s", pod, reason)
        if used + len(files.resources.encode()) + len(files.project.encode()) > CONFIGMAP_MAX_BYTES:
            self.metrics.errors.inc()
            log.error(
                "resources.xml/project.xml for %d workers do not fit in ConfigMap %s beside "
                "resources.json (1 MiB): published resources.json only",
                len(files.workers), self.settings.configmap)
            return {}
        if self._compss is None and isinstance(self.membership, AgentMembership):
            self._learn_announced()
        if files is not self._compss:
            self.metrics.publish_workers(files.workers)
        self._compss = files
        return {"resources.xml": files.resources, "project.xml": files.project}

    def _learn_announced(self) -> None:
        """Before the first publish: what the master agent was told, from the files it has."""
        assert isinstance(self.membership, AgentMembership)
        try:
            resp = self._call("get", self.api.read_namespaced_config_map, self.settings.configmap,
                              self.settings.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("previous COMPSs files unreadable (%s): announcing every worker", exc)
            return
        except (HTTPError, OSError) as exc:
            log.warning("previous COMPSs files unreadable (%s): announcing every worker", exc)
            return
        data = msgspec.json.decode(resp.data, type=ConfigMap).data or {}
        self.membership.announced = workers_in(data.get("resources.xml", ""))

    def _tell_master(self) -> None:
        # Only files the ConfigMap already holds: a rolled master must find them there.
        files = self._in_configmap
        if self.membership is None or files is None or files.digest == self._told:
            return
        try:
            self.membership.sync(files)
        except MembershipError as exc:
            self._failed("%s", exc)
            return
        self._told = files.digest

    def _ensure_service(self) -> None:
        """The headless Service selecting the workers, so that their DNS names exist."""
        now = self.clock()
        checked = self._service_checked
        if checked is not None and now - checked < self.settings.resync_interval_s:
            return
        compss = self.settings.compss
        ns = self.settings.namespace
        spec = {
            "clusterIP": "None",
            "selector": {PARTITION_LABEL: self.settings.partition},
            # Names resolve as soon as the pod has an IP: the master only reads ready workers,
            # and a worker must resolve its own name while it starts.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "nio", "port": compss.min_port, "targetPort": compss.min_port,
                       "protocol": "TCP"}],
        }
        metadata: dict[str, Any] = {"name": compss.service, "namespace": ns,
                                    "labels": {PARTITION_LABEL: self.settings.partition}}
        body = {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}
        try:
            try:
                resp = self._call("get", self.api.read_namespaced_service, compss.service, ns,
                                  _preload_content=False)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                self._call("create", self.api.create_namespaced_service, ns, body, _preload_content=False)
                log.info("created headless Service %s/%s for the workers' names", ns, compss.service)
            else:
                found = msgspec.json.decode(resp.data, type=Service)
                current = found.spec
                if current.clusterIP != "None":
                    # clusterIP is immutable: a human must delete the Service.
                    self.metrics.errors.inc()
                    log.error("Service %s/%s is not headless (clusterIP %s): worker names do not "
                              "resolve; delete it and the controller recreates it",
                              ns, compss.service, current.clusterIP)
                elif current.selector != spec["selector"] or not current.publishNotReadyAddresses or [
                        (p.name, p.port) for p in current.ports or ()] != [("nio", compss.min_port)]:
                    # A replace, not a patch: a strategic merge would add our port to theirs.
                    metadata["resourceVersion"] = found.metadata.resourceVersion
                    self._call("update", self.api.replace_namespaced_service, compss.service, ns, body,
                               _preload_content=False)
                    log.info("put back the selector and port of Service %s/%s", ns, compss.service)
        except (ApiException, HTTPError, OSError) as exc:
            self._failed("headless Service %s not ensured: %s", compss.service, exc)
            return
        self._service_checked = now
