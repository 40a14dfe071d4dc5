"""The extender's Kubernetes API edge: bind pods and write decision Events.

Both use the official client, configured in-cluster (or from KUBECONFIG outside a cluster).
Events are written from a background thread through a bounded queue, so the scheduling path never
waits on the API server; when the queue is full, events are dropped and counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from typing import Any

from extender import protocol as wire
from extender.policies.explain import DecisionRecord

log = logging.getLogger(__name__)

EVENT_QUEUE = 1000
API_TIMEOUT_S = 5.0


def core_api() -> Any:
    """A CoreV1Api from in-cluster config, falling back to the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


class ApiBinder:
    """Creates `pods/binding` subresources, as kube-scheduler's DefaultBinder does."""

    def __init__(self, api: Any | None = None) -> None:
        self._api = api

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """POST the Binding; raises the client's ApiException on failure."""
        from kubernetes import client

        api = self._api = self._api or core_api()
        body = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=uid or None),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node))
        # The generated client cannot deserialise the Binding response (a known client bug):
        # skip deserialisation; errors still raise ApiException.
        api.create_namespaced_binding(namespace, body, _preload_content=False,
                                      _request_timeout=API_TIMEOUT_S)

    def read(self, namespace: str, name: str) -> wire.Pod | None:
        """The pod as the API server has it (None when it is gone); raises on other errors.

        bind carries no resources and may reach a replica that never saw the pod's filter or
        prioritize call: its requests and owner come from here, never from a per-process cache.
        """
        from kubernetes.client.exceptions import ApiException

        api = self._api = self._api or core_api()
        try:
            response = api.read_namespaced_pod(name, namespace, _preload_content=False,
                                               _request_timeout=API_TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return wire.decode(response.data, wire.Pod)


class ApiEventSink:
    """Writes one Event per decision on the pod, asynchronously and best effort."""

    def __init__(self, api: Any | None = None, component: str = "extract-extender") -> None:
        self._api = api
        self.component = component
        self.dropped = 0
        self._queue: queue.Queue[DecisionRecord] = queue.Queue(EVENT_QUEUE)
        self._thread = threading.Thread(target=self._run, name="pod-events", daemon=True)
        self._thread.start()

    def decision(self, decision: DecisionRecord) -> None:
        """Queue an Event for `decision` (dropped when the queue is full)."""
        if "/" not in decision.pod or decision.pod.startswith("<"):
            return
        try:
            self._queue.put_nowait(decision)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            decision = self._queue.get()
            try:
                self._write(decision)
            except Exception as exc:  # noqa: BLE001 - events are best effort
                log.debug("event for %s not written: %s", decision.pod, exc)

    def _write(self, decision: DecisionRecord) -> None:
        from kubernetes import client

        api = self._api = self._api or core_api()
        namespace, name = decision.pod.split("/", 1)
        head = decision.head
        message = (f"{head.verb} ({head.profile}): {head.candidates} candidates, "
                   f"{len(head.rejected)} rejected")
        if head.verb == "prioritize":  # its breakdown is of the best-scored nodes, best first
            top = decision.breakdown
            best = ", ".join(f"{n}={s}" for n, s in zip(top.nodes[:3], top.scores[:3], strict=True))
            message += f"; best {best or 'none'}"
        elif head.chosen is not None:
            message += f"; placed on {head.chosen}, the only node left"
        now = dt.datetime.now(dt.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=client.V1ObjectReference(kind="Pod", namespace=namespace, name=name,
                                                     uid=decision.uid or None, api_version="v1"),
            reason="MetricsAwareDecision", message=message[:1024], type="Normal",
            source=client.V1EventSource(component=self.component),
            first_timestamp=now, last_timestamp=now, count=1)
        api.create_namespaced_event(namespace, event, _request_timeout=API_TIMEOUT_S)
