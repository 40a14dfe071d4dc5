"""Two replicas with leader election on a Lease: only the holder reconciles; hand-over on stop.

Against the real API server, through the fault proxy (which counts the Lease reads)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator

import pytest
from kubernetes.client import CoordinationV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from extender.leader import run_elected
from extender.partition.reconcile import PartitionMetrics, Reconciler
from tests.controlplane import ControlPlane, wait_for
from tests.faultproxy import FaultProxy
from tests.partition.conftest import Kubelet, api_settings
from tests.partition.test_partition_reconcile import pods, workers

LEASE = "extender-partition"


class Replica:
    """One controller process: its own client, reconciler, metrics and election thread."""

    def __init__(self, proxy: FaultProxy, token: str, namespace: str, identity: str) -> None:
        self.identity = identity
        self.namespace = namespace
        self.settings = api_settings(namespace)
        self.client = proxy.api_client(token)
        self.registry = CollectorRegistry()
        self.reconciler = Reconciler(self.settings, CoreV1Api(self.client),
                                     metrics=PartitionMetrics(self.registry))
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self.work_done = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        self.exit_code = run_elected(self.settings.leader, self.namespace, self.client, self.identity,
                                     self._work, self.stop)

    def _work(self, stop: threading.Event) -> None:
        self.reconciler.run(stop)
        self.work_done.set()

    def start(self) -> Replica:
        self.thread.start()
        return self

    def passes(self) -> float:
        return self.registry.get_sample_value("partition_reconcile_duration_seconds_count") or 0.0

    def api_calls(self) -> float:
        return sum(self.registry.get_sample_value("partition_api_calls_total", {"verb": verb}) or 0.0
                   for verb in ("list", "watch", "create", "delete", "update"))

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), f"{self.identity} did not stop"
        self.client.close()


@pytest.fixture
def replicas(control_plane: ControlPlane, proxy: FaultProxy, k8s_namespace: str, kubelet: Kubelet
             ) -> Iterator[dict[str, Replica]]:
    made = {name: Replica(proxy, control_plane.admin_token, k8s_namespace, name) for name in ("one", "two")}
    yield made
    for replica in made.values():
        if replica.thread.is_alive():
            replica.shutdown()
        else:
            replica.client.close()


def holder(core: CoreV1Api, ns: str) -> str | None:
    try:
        spec = CoordinationV1Api(core.api_client).read_namespaced_lease(LEASE, ns).spec
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return spec.holder_identity if spec else None


def test_only_the_leader_reconciles_and_a_stopped_leader_hands_over_at_once(
        core: CoreV1Api, k8s_namespace: str, cluster: Callable[..., str], proxy: FaultProxy,
        replicas: dict[str, Replica]) -> None:
    ns = k8s_namespace
    one, two = replicas["one"], replicas["two"]
    a = cluster("a")
    one.start()
    wait_for(lambda: holder(core, ns) == "one" and a in workers(core, ns), timeout_s=20,
             what="one leads and acts")
    two.start()
    reads = proxy.count("GET", "leases")
    # Let the follower retry a few times (one GET per replica per retry period).
    wait_for(lambda: proxy.count("GET", "leases") >= reads + 4, timeout_s=20, what="follower retries")
    b = cluster("b")
    wait_for(lambda: set(workers(core, ns)) == {a, b}, timeout_s=20, what="leader adds b")
    assert (two.passes(), two.api_calls()) == (0, 0), "the follower must not touch the cluster"

    one.shutdown()
    assert one.exit_code == 0 and one.work_done.is_set()
    # Released, not expired: the follower takes over on its next retry.
    wait_for(lambda: holder(core, ns) == "two", timeout_s=5, what="two takes over")
    c = cluster("c")
    wait_for(lambda: set(workers(core, ns)) == {a, b, c}, timeout_s=20, what="new leader adds c")
    assert two.registry.get_sample_value("partition_api_calls_total", {"verb": "create"})
    assert len(pods(core, ns)) == 3, "no duplicate workers across the hand-over"


def test_leader_that_loses_its_lease_stops_and_exits_non_zero(
        core: CoreV1Api, k8s_namespace: str, cluster: Callable[..., str],
        replicas: dict[str, Replica]) -> None:
    ns = k8s_namespace
    one = replicas["one"].start()
    a = cluster("a")
    wait_for(lambda: holder(core, ns) == "one" and a in workers(core, ns), timeout_s=20, what="one leads")
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    CoordinationV1Api(core.api_client).patch_namespaced_lease(LEASE, ns, {"spec": {
        "holderIdentity": "intruder", "leaseDurationSeconds": 3600, "renewTime": now}})
    wait_for(lambda: not one.thread.is_alive(), timeout_s=15, what="one gives up")
    assert one.exit_code == 1
    assert one.work_done.is_set(), "the reconcile loop has stopped before the exit"
    assert holder(core, ns) == "intruder"
