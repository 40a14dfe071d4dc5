"""Fixtures of the partition tests: the controller against the real kube-apiserver (tests/controlplane.py).

Nodes are cluster-wide and one API server serves the whole session: each test's nodes are named
after its namespace and labelled with it (`TEST_LABEL`), the controller selects only those
(`eligibility.node_selector`), and they are deleted afterwards. There is no kubelet: `Kubelet`
plays its part (bind, Running and Ready, finish graceful deletions) through the API.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kubernetes.client import ApiClient, CoreV1Api, V1Binding, V1ObjectMeta, V1ObjectReference
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from extender.partition.plan import NODE_ANNOTATION
from extender.partition.reconcile import PartitionMetrics, Reconciler
from extender.partition.settings import PartitionSettings, load_partition_settings
from tests.controlplane import ControlPlane, create_node, set_pod_running
from tests.faultproxy import FaultProxy
from tests.partition.agentserver import Agent, serving

CONFIG = Path(__file__).resolve().parents[2] / "config" / "partition.yaml"
NS = "test"
"""The namespace of the pure tests' settings (the API tests use their own, `k8s_namespace`)."""
TEST_LABEL = "extract.io/test"
"""Label of a test's nodes (value: its namespace); its controllers select only those."""


def make_settings(**changes: Any) -> PartitionSettings:
    """The documented default config, with test timings; `changes` may name nested sections."""
    base = load_partition_settings(CONFIG, environ={})
    rollout = msgspec.structs.replace(base.rollout, backoff_initial_s=0.3, backoff_max_s=2.0)
    leader = msgspec.structs.replace(base.leader, lease_duration_s=8, renew_deadline_s=5,
                                     retry_period_s=1)
    eligibility = msgspec.structs.replace(base.eligibility, not_ready_grace_s=1.0)
    defaults: dict[str, Any] = dict(
        namespace=NS, resync_interval_s=5.0, min_reconcile_interval_s=0.05, api_timeout_s=5.0,
        rollout=rollout, leader=leader, eligibility=eligibility, metrics_port=0,
    )
    for section in ("rollout", "leader", "eligibility", "sizing", "compss"):
        if section in changes:
            changes[section] = _replace(defaults.get(section, getattr(base, section)), changes[section])
    return msgspec.structs.replace(base, **(defaults | changes))


def _replace(struct: Any, changes: dict[str, Any]) -> Any:
    """`struct` with `changes`; a dict given for a nested section changes only its keys."""
    nested = {k: _replace(getattr(struct, k), v) for k, v in changes.items()
              if isinstance(v, dict) and isinstance(getattr(struct, k), msgspec.Struct)}
    return msgspec.structs.replace(struct, **(changes | nested))


class Running:
    """A reconciler running in a thread, with its own metrics registry."""

    def __init__(self, settings: PartitionSettings, api_client: ApiClient,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.reconciler = Reconciler(settings, CoreV1Api(api_client), clock=clock,
                                     metrics=PartitionMetrics(self.registry))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.reconciler.run, args=(self.stop,), daemon=True)

    def start(self) -> Running:
        self.thread.start()
        return self

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "reconciler did not stop"

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def client(control_plane: ControlPlane) -> Iterator[ApiClient]:
    """An admin ApiClient straight to the API server (the test's own reads and writes)."""
    with control_plane.api_client() as api_client:
        yield api_client


@pytest.fixture
def core(client: ApiClient) -> CoreV1Api:
    return CoreV1Api(client)


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    """The fault-injecting, request-counting proxy in front of the session's API server."""
    with FaultProxy(control_plane.url, control_plane.ca_file) as running:
        yield running


@pytest.fixture
def proxied(control_plane: ControlPlane, proxy: FaultProxy) -> Iterator[ApiClient]:
    """An admin ApiClient through `proxy`: what the controllers under test use."""
    with proxy.api_client(control_plane.admin_token) as api_client:
        yield api_client


@pytest.fixture
def cluster(core: CoreV1Api, k8s_namespace: str) -> Iterator[Callable[..., str]]:
    """make(suffix, cpu=, memory=, gpus=, labels=) -> the name of a new Ready node of this test
    (`<namespace>-<suffix>`, labelled `TEST_LABEL: <namespace>`); all deleted afterwards."""
    made: list[str] = []

    def make(suffix: str, *, labels: dict[str, str] | None = None, **kw: Any) -> str:
        name = f"{k8s_namespace}-{suffix}"
        create_node(core, name, labels={TEST_LABEL: k8s_namespace, **(labels or {})}, **kw)
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            core.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


class Kubelet:
    """Plays the kubelet for one namespace (the control plane has none), through the real API.

    Each new pod is bound to the node its worker annotation names and marked Running and Ready
    (`run_pods`); pods being deleted gracefully are removed (`finish_deletions`), as a kubelet does
    once their containers stopped. Bound pods are what makes a deletion graceful: the API server
    deletes an unbound pod at once.
    """

    POLL_S = 0.05

    def __init__(self, core: CoreV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.run_pods = True
        self.finish_deletions = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"kubelet-{namespace}")

    def start(self) -> Kubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.POLL_S):
            try:
                self.step()
            except ApiException:
                continue  # a pod deleted while we looked at it: the next poll sees the truth

    def step(self) -> None:
        """One look at the namespace's pods."""
        listed = json.loads(self.core.list_namespaced_pod(self.namespace, _preload_content=False).data)
        for pod in listed["items"]:
            meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
            if meta.get("deletionTimestamp"):
                if self.finish_deletions:
                    self.finish(meta["name"])
                continue
            if not self.run_pods or status.get("phase", "Pending") != "Pending":
                continue
            node = (meta.get("annotations") or {}).get(NODE_ANNOTATION)
            if node and not spec.get("nodeName"):
                self.core.create_namespaced_binding(
                    self.namespace, V1Binding(metadata=V1ObjectMeta(name=meta["name"]),
                                              target=V1ObjectReference(kind="Node", name=node)),
                    _preload_content=False)
            set_pod_running(self.core, meta["name"], self.namespace)

    def finish(self, name: str) -> None:
        """Remove a terminating pod (grace period 0), as its kubelet would."""
        try:
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0,
                                            _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def kubelet(core: CoreV1Api, k8s_namespace: str) -> Iterator[Kubelet]:
    running = Kubelet(core, k8s_namespace).start()
    yield running
    running.stop()


def api_settings(namespace: str, **changes: Any) -> PartitionSettings:
    """make_settings for a controller on the real API server: `namespace`, only the test's nodes,
    COMPSs publishing off unless asked for (test_partition_compss_apiserver.py covers it)."""
    changes.setdefault("compss", {"enabled": False})
    eligibility = {"node_selector": {TEST_LABEL: namespace}, **changes.pop("eligibility", {})}
    return make_settings(namespace=namespace, eligibility=eligibility, **changes)


@pytest.fixture
def controller(proxied: ApiClient, k8s_namespace: str, kubelet: Kubelet
               ) -> Iterator[Callable[..., Running]]:
    """Start reconcilers on this test's namespace and nodes, through the proxy (settings from
    api_settings(**changes), optional clock); all stopped at teardown. The kubelet runs."""
    started: list[Running] = []

    def start(clock: Callable[[], float] = time.time, **changes: Any) -> Running:
        running = Running(api_settings(k8s_namespace, **changes), proxied, clock=clock).start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.halt()


@pytest.fixture
def agent() -> Iterator[tuple[Agent, str]]:
    """A COMPSs master agent's REST interface on loopback (tests/partition/agentserver.py)."""
    with serving() as running:
        yield running
