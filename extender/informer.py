"""Every pod bound to a node, from the API server: a pod informer (list + watch).

Each extender process runs one, so every replica and every gunicorn worker sees the same recent
placements, whoever bound the pods. The engine asks `bound_since(t)` for the pods bound within its
metrics window; `status()` says whether the view is live (for /readyz, /metrics, the self-check).

Design decisions:
- Not `kubernetes.informer.SharedInformer` (client 37.x): after a failed watch it reconnects at
  once, with no backoff, so an unreachable API server is hammered in a tight loop; its list is one
  unpaginated request; it keeps whole `V1Pod` models (the client's deserializer costs about a
  millisecond per pod, and far more memory than the few fields we read); it reports neither
  "synced" nor "up"; and `stop()` can wait for the next event. `Watch(deserialize=False)` does
  not help: it then tracks no resourceVersion and fails on ERROR events with a KeyError.
- So: raw JSON (`_preload_content=False`) decoded by msgspec into Structs holding only the fields
  we read (`kubeapi.WatchedPod`); paginated lists (`limit`/`continue`); watches that resume from the last
  resourceVersion (bookmarks on) when the server ends them; 410 Gone relists at once; any other
  error waits a bounded exponential backoff with jitter, then resumes (a stale resourceVersion
  then gets 410 and a relist). `watch_events` decodes a raw watch stream for the partition
  controller too.
- The default field selector lets the API server send only bound, unfinished pods: a pod that
  finishes or is deleted arrives as DELETED. The same rules are applied here as well, so a wider
  selector from the settings gives the same map.
- Pods being deleted (deletionTimestamp set) leave the map: without a kubelet they would stay
  forever, and with one their load is on its way out, not arriving.
- `bound_since` is a bisection on a list kept sorted by bound time: the request path pays
  O(log n + answer), not a scan of 50 000 pods.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

from extender.kubeapi import Bookmark, Status, WatchedMeta, WatchedPod, WatchedPodList, WatchEvent
from extender.policies.model import GPU_RESOURCE, pod_requests
from extender.settings import InformerSettings

log = logging.getLogger(__name__)

FINISHED = frozenset({"Succeeded", "Failed"})
STOP_JOIN_S = 5.0


class BoundPod(msgspec.Struct, frozen=True, gc=False):
    """A pod bound to a node, with what it asked for.

    Untracked by the cyclic collector (`gc=False`: its fields are strings and numbers): at
    50 000 pods a full collection that walked them paused every request thread for ~17 ms.
    """

    uid: str
    namespace: str
    name: str
    node: str
    cpu_cores: float
    """Effective requests as kube-scheduler counts them (containers, init containers, overhead)."""
    memory_bytes: float
    gpus: int
    owner_kind: str | None
    """The controlling owner (ReplicaSet, Job, StatefulSet, ...), else the first owner, else None."""
    owner_name: str | None
    bound_at: float
    """Epoch seconds: the PodScheduled=True condition's lastTransitionTime (whole seconds); for a
    pod created already bound (spec.nodeName set at creation: no condition) its creationTimestamp;
    else when this informer first saw it bound."""


PodListener = Callable[["BoundPod", bool], None]
"""`(pod, bound)`: the pod is bound (True) or gone (False); see `PodInformer.subscribe`."""


@dataclass(frozen=True, slots=True)
class InformerStatus:
    """How live the informer's view is."""

    up: bool
    """The last list or watch request succeeded (a watch is open or about to reopen)."""
    synced: bool
    """A full list has completed since start: the map holds every bound pod in scope."""
    last_error: str | None
    """The most recent failure, kept after recovery for diagnosis (see `up`)."""
    pods: int
    relists: int
    """Full lists after the first (410 Gone, resync)."""
    errors: int
    """Failed list or watch requests (not counting 410 Gone)."""
    events: int
    """Watch events applied (bookmarks included)."""
    last_event_age_s: float | None
    """Seconds since the last list or watch event (None before the first)."""


# --- pure parts -------------------------------------------------------------------------------------


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _owner(meta: WatchedMeta) -> tuple[str | None, str | None]:
    owners = meta.ownerReferences or []
    chosen = next((o for o in owners if o.controller), owners[0] if owners else None)
    return (chosen.kind, chosen.name) if chosen else (None, None)


def _is_bound(pod: WatchedPod) -> bool:
    return bool(pod.spec.nodeName) and pod.status.phase not in FINISHED and not pod.metadata.deletionTimestamp


def bound_pod(pod: WatchedPod, first_seen: float) -> BoundPod:
    """The BoundPod of a bound pod; `first_seen` is its bound time when the pod says none."""
    try:
        requests = pod_requests(pod.spec)
    except ValueError as exc:  # the API server validates quantities: never seen in practice
        log.warning("pod %s/%s: unreadable requests (%s): counted as 0", pod.metadata.namespace,
                    pod.metadata.name, exc)
        requests = {}
    scheduled = next((c for c in pod.status.conditions or () if c.type == "PodScheduled"
                      and c.status == "True"), None)
    kind, name = _owner(pod.metadata)
    # spec.nodeName is set either at creation or by a Binding, and a Binding always sets the
    # PodScheduled condition: without one the pod was bound when it was created. (Using "first
    # seen" instead would make every such pod look just placed after each restart.)
    bound_at = _timestamp(scheduled.lastTransitionTime if scheduled else pod.metadata.creationTimestamp)
    # Namespaces, nodes and owners repeat across thousands of pods: one string object each.
    return BoundPod(
        uid=pod.metadata.uid, namespace=sys.intern(pod.metadata.namespace), name=pod.metadata.name,
        node=sys.intern(pod.spec.nodeName or ""), cpu_cores=requests.get("cpu", 0.0),
        memory_bytes=requests.get("memory", 0.0), gpus=int(requests.get(GPU_RESOURCE, 0.0)),
        owner_kind=None if kind is None else sys.intern(kind),
        owner_name=None if name is None else sys.intern(name),
        bound_at=first_seen if bound_at is None else bound_at)


def backoff(failures: int, settings: InformerSettings, rng: random.Random) -> float:
    """Seconds to wait after `failures` consecutive failures (>= 1): doubling from backoff_min_s,
    capped at backoff_max_s, then a random 50-100% of that so replicas do not retry in step."""
    ceiling = min(settings.backoff_min_s * 2.0 ** max(failures - 1, 0), settings.backoff_max_s)
    return ceiling * rng.uniform(0.5, 1.0)


def watch_events(resp: Any, stop: threading.Event) -> Iterator[WatchEvent]:
    """The events of a raw watch response (`_preload_content=False`) until the server ends the
    watch or `stop` is set. An ERROR event raises ApiException with its status code (410 Gone:
    the resourceVersion is too old, relist)."""
    for line in iter_resp_lines(resp):
        if stop.is_set():
            return
        if not line:
            continue
        event = msgspec.json.decode(line, type=WatchEvent)
        if event.type == "ERROR":
            status = msgspec.json.decode(event.object, type=Status)
            raise ApiException(status=status.code, reason=f"{status.reason}: {status.message}")
        yield event


def api_client_factory(settings: InformerSettings) -> Callable[[], ApiClient]:
    """A factory of ApiClients for `settings.kubeconfig`: in-cluster, else the default kubeconfig."""
    from kubernetes import client, config

    def make() -> ApiClient:
        if settings.kubeconfig:
            try:
                made: ApiClient = config.new_client_from_config(config_file=settings.kubeconfig)
            except (ConfigException, OSError) as exc:  # the message does not name the file
                raise ConfigException(f"informer.kubeconfig {settings.kubeconfig}: {exc}") from exc
            return made
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            return config.new_client_from_config()  # type: ignore[no-any-return]
        return ApiClient(configuration)

    return make


# --- the informer -----------------------------------------------------------------------------------


class PodInformer:
    """Keeps, thread-safe, the pods bound to nodes (in the settings' scope) by UID.

    `api_client_factory()` gives a fresh `kubernetes.client.ApiClient`; it is called at start and
    after each failure (so rotated credentials are picked up). `clock` gives epoch seconds.
    """

    def __init__(self, settings: InformerSettings, api_client_factory: Callable[[], ApiClient],
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._factory = api_client_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._pods: dict[str, BoundPod] = {}
        self._by_time: list[tuple[float, str]] = []  # (bound_at, uid), sorted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        self._synced = threading.Event()
        self._up = False
        self._last_error: str | None = None
        self._lists = 0
        self._errors = 0
        self._events = 0
        self._last_event: float | None = None
        self._rng = random.Random()
        self._listeners: list[PodListener] = []

    @classmethod
    def for_settings(cls, settings: InformerSettings,
                     clock: Callable[[], float] = time.time) -> PodInformer:
        """An informer (not started) on the API server `settings.kubeconfig` names
        (`api_client_factory`): what `extender serve` runs."""
        return cls(settings, api_client_factory(settings), clock=clock)

    # --- public API ------------------------------------------------------------------------------

    def start(self) -> PodInformer:
        """Start the list/watch thread (no-op when running). Returns self."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pod-informer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> bool:
        """Stop the thread: closes the open watch at once and waits (a few seconds at most) for
        the thread to end. True when it has ended (it is a daemon thread either way)."""
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except (OSError, ValueError, RuntimeError):
                pass  # already closed or released: the thread is leaving anyway
        ended = True
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)
            ended = not self._thread.is_alive()
            if not ended:
                log.warning("pod informer: thread still running %.0f s after stop()", STOP_JOIN_S)
            self._thread = None
        self._up = False
        return ended

    def subscribe(self, listener: PodListener) -> None:
        """Call `listener(pod, bound)` from the informer's thread for every change: `bound`
        True when the pod is (newly, or again) bound, False when it is gone. The pods known
        already are replayed to it first. Listeners must be quick and must not raise."""
        with self._lock:
            known = sorted(self._pods.values(), key=lambda p: p.bound_at)
            self._listeners.append(listener)
        for pod in known:
            listener(pod, True)

    def _notify(self, changes: list[tuple[BoundPod, bool]]) -> None:
        for listener in self._listeners:
            for pod, bound in changes:
                try:
                    listener(pod, bound)
                except Exception:  # noqa: BLE001 - a listener's bug must not stop the watch
                    log.exception("pod informer: listener failed on %s/%s", pod.namespace,
                                  pod.name)

    def wait_synced(self, timeout_s: float) -> bool:
        """Wait until the first full list has been applied; False on timeout."""
        return self._synced.wait(timeout_s)

    def bound_since(self, t: float) -> tuple[BoundPod, ...]:
        """The pods bound at or after `t` (epoch seconds), oldest first."""
        with self._lock:
            start = bisect.bisect_left(self._by_time, (t, ""))
            return tuple(self._pods[uid] for _, uid in self._by_time[start:])

    def get(self, uid: str) -> BoundPod | None:
        """The bound pod with this UID, if the informer knows it."""
        with self._lock:
            return self._pods.get(uid)

    def status(self) -> InformerStatus:
        """A snapshot of the informer's health and counters."""
        with self._lock:
            last = self._last_event
            return InformerStatus(
                up=self._up, synced=self._synced.is_set(), last_error=self._last_error,
                pods=len(self._pods), relists=max(self._lists - 1, 0), errors=self._errors,
                events=self._events,
                last_event_age_s=None if last is None else max(self._clock() - last, 0.0))

    # --- the map ---------------------------------------------------------------------------------

    def _replace(self, fresh: dict[str, BoundPod]) -> None:
        with self._lock:
            old = self._pods
            self._pods = fresh
            self._by_time = sorted((p.bound_at, p.uid) for p in fresh.values())
            self._lists += 1
            self._last_event = self._clock()
        self._synced.set()
        if self._listeners:
            changes = [(pod, False) for uid, pod in old.items() if uid not in fresh]
            changes += sorted(((pod, True) for uid, pod in fresh.items() if old.get(uid) != pod),
                              key=lambda change: change[0].bound_at)
            self._notify(changes)

    def _apply(self, event_type: str, pod: WatchedPod) -> None:
        now = self._clock()
        uid = pod.metadata.uid
        with self._lock:
            self._events += 1
            self._last_event = now
            known = self._pods.get(uid)
            if event_type == "DELETED" or not _is_bound(pod):
                if known is not None:
                    self._forget(known)
                    changes = [(known, False)]
                else:
                    changes = []
            else:
                record = bound_pod(pod, known.bound_at if known else now)
                changed = known != record
                if known is not None and known.bound_at != record.bound_at:
                    self._forget(known)
                    known = None
                self._pods[uid] = record
                if known is None:
                    bisect.insort(self._by_time, (record.bound_at, uid))
                changes = [(record, True)] if changed else []
        if changes and self._listeners:
            self._notify(changes)

    def _forget(self, pod: BoundPod) -> None:
        del self._pods[pod.uid]
        i = bisect.bisect_left(self._by_time, (pod.bound_at, pod.uid))
        if i < len(self._by_time) and self._by_time[i][1] == pod.uid:
            del self._by_time[i]

    # --- API calls -------------------------------------------------------------------------------

    def _list_fn(self, api: CoreV1Api) -> tuple[Callable[..., Any], dict[str, Any]]:
        s = self.settings
        kwargs: dict[str, Any] = {}
        if s.field_selector:
            kwargs["field_selector"] = s.field_selector
        if s.label_selector:
            kwargs["label_selector"] = s.label_selector
        if s.namespace:
            return api.list_namespaced_pod, {"namespace": s.namespace, **kwargs}
        return api.list_pod_for_all_namespaces, kwargs

    def _list(self, api: CoreV1Api) -> str:
        """List every pod in scope, page by page; replace the map; return the resourceVersion."""
        fn, kwargs = self._list_fn(api)
        with self._lock:
            old = dict(self._pods)
        now = self._clock()
        # Each page becomes BoundPods at once: only one page of decoded pods is alive at a time.
        fresh: dict[str, BoundPod] = {}
        token: str | None = None
        while True:
            page_kwargs = dict(kwargs, limit=self.settings.page_size)
            if token:
                page_kwargs["_continue"] = token
            resp = self._call(fn, page_kwargs, self.settings.request_timeout_s)
            page = msgspec.json.decode(resp.data, type=WatchedPodList)
            for pod in page.items or ():
                if _is_bound(pod):
                    known = old.get(pod.metadata.uid)
                    fresh[pod.metadata.uid] = bound_pod(pod, known.bound_at if known else now)
            token = page.metadata.continue_
            if not token:
                self._replace(fresh)
                self._up = True
                return page.metadata.resourceVersion

    def _call(self, fn: Callable[..., Any], kwargs: dict[str, Any], read_timeout_s: float) -> Any:
        return fn(_preload_content=False,
                  _request_timeout=(self.settings.request_timeout_s, read_timeout_s), **kwargs)

    def _watch(self, api: CoreV1Api, rv: str, timeout_s: float) -> Iterator[str]:
        """Apply watch events from `rv` until the server ends the watch; yields each new rv."""
        fn, kwargs = self._list_fn(api)
        kwargs.update(watch=True, resource_version=rv, allow_watch_bookmarks=True,
                      timeout_seconds=max(1, int(timeout_s)))
        # The server ends the watch after timeout_s; the read timeout only catches a dead peer.
        resp = self._call(fn, kwargs, timeout_s + self.settings.request_timeout_s)
        # Publish the response, then look at the stop flag: stop() sets the flag, then shuts the
        # published response down, so one of the two always sees the other.
        self._response = resp
        self._up = True
        try:
            if self._stop.is_set():
                return
            for event in watch_events(resp, self._stop):
                if event.type == "BOOKMARK":
                    with self._lock:
                        self._events += 1
                        self._last_event = self._clock()
                    yield msgspec.json.decode(event.object, type=Bookmark).metadata.resourceVersion
                    continue
                pod = msgspec.json.decode(event.object, type=WatchedPod)
                self._apply(event.type, pod)
                yield pod.metadata.resourceVersion
        finally:
            self._response = None
            resp.release_conn()

    # --- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        s = self.settings
        rv: str | None = None
        listed_at = 0.0
        failures = 0
        client: ApiClient | None = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = self._factory()
                api = CoreV1Api(client)
                resync_due = s.resync_interval_s and time.monotonic() - listed_at >= s.resync_interval_s
                if rv is None or resync_due:
                    rv = self._list(api)
                    listed_at = time.monotonic()
                    failures = 0
                timeout = s.watch_timeout_s
                if s.resync_interval_s:
                    timeout = min(timeout, max(s.resync_interval_s - (time.monotonic() - listed_at), 1.0))
                for seen in self._watch(api, rv, timeout):
                    rv, failures = seen, 0
            except (ApiException, HTTPError, OSError, ConfigException, msgspec.DecodeError) as exc:
                if isinstance(exc, ApiException) and exc.status == 410:
                    # A watch from a compacted resourceVersion, or an expired list continue token.
                    log.info("pod informer: %s (410 Gone): relisting", exc.reason)
                    rv = None
                    continue
                if self._stop.is_set():
                    break
                failures += 1
                delay = backoff(failures, s, self._rng)
                message = _describe(exc)
                with self._lock:
                    self._up = False
                    self._errors += 1
                    self._last_error = message
                log.warning("pod informer: %s; retrying in %.1f s", message, delay)
                if client is not None:
                    client.close()
                    client = None
                self._stop.wait(delay)
        if client is not None:
            client.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"API server answered {exc.status} {exc.reason}: {str(exc.body or '')[:300]}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"
