"""Two replicas with leader election on a Lease: only the holder reconciles; hand-over on stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient, Configuration, CoreV1Api
from prometheus_client import CollectorRegistry

from extender.leader import run_elected
from extender.localserver import wait_until
from extender.partition.reconcile import PartitionMetrics, Reconciler
from tests.partition.conftest import NS, make_settings
from tests.partition.fakeapi import FakeKubernetes, node, now_iso
from tests.partition.test_partition_reconcile import workers

LEASE = "extender-partition"


class Replica:
    """One controller process: its own client, reconciler, metrics and election thread."""

    def __init__(self, api: FakeKubernetes, identity: str) -> None:
        self.identity = identity
        self.settings = make_settings(compss={"enabled": False})  # the fake API serves no Services
        self.client = ApiClient(Configuration(host=api.url))
        self.registry = CollectorRegistry()
        self.reconciler = Reconciler(self.settings, CoreV1Api(self.client),
                                     metrics=PartitionMetrics(self.registry))
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self.work_done = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        self.exit_code = run_elected(self.settings.leader, NS, self.client, self.identity,
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
def replicas(api: FakeKubernetes) -> Iterator[dict[str, Replica]]:
    made = {name: Replica(api, name) for name in ("one", "two")}
    yield made
    for replica in made.values():
        if replica.thread.is_alive():
            replica.shutdown()
        else:
            replica.client.close()


def holder(api: FakeKubernetes) -> str | None:
    lease = api.get("leases", LEASE, NS)
    return lease["spec"].get("holderIdentity") if lease else None


def test_only_the_leader_reconciles_and_a_stopped_leader_hands_over_at_once(
        api: FakeKubernetes, replicas: dict[str, Replica]) -> None:
    one, two = replicas["one"], replicas["two"]
    api.put("nodes", node("a"))
    one.start()
    wait_until(lambda: holder(api) == "one" and "a" in workers(api), what="one leads and acts")
    two.start()
    reads = api.count("GET", "leases")
    # Let the follower retry a few times (one GET per replica per retry period).
    wait_until(lambda: api.count("GET", "leases") >= reads + 4, what="follower retries")
    api.put("nodes", node("b"))
    wait_until(lambda: set(workers(api)) == {"a", "b"}, what="leader adds b")
    assert (two.passes(), two.api_calls()) == (0, 0), "the follower must not touch the cluster"

    one.shutdown()
    assert one.exit_code == 0 and one.work_done.is_set()
    # Released, not expired: the follower takes over on its next retry.
    wait_until(lambda: holder(api) == "two", timeout_s=5, what="two takes over")
    api.put("nodes", node("c"))
    wait_until(lambda: set(workers(api)) == {"a", "b", "c"}, what="new leader adds c")
    assert two.registry.get_sample_value("partition_api_calls_total", {"verb": "create"})
    assert len(api.list("pods", NS)) == 3, "no duplicate workers across the hand-over"


def test_leader_that_loses_its_lease_stops_and_exits_non_zero(
        api: FakeKubernetes, replicas: dict[str, Replica]) -> None:
    one = replicas["one"].start()
    api.put("nodes", node("a"))
    wait_until(lambda: holder(api) == "one" and "a" in workers(api), what="one leads")
    lease = api.get("leases", LEASE, NS)
    assert lease is not None
    lease["spec"].update(holderIdentity="intruder", leaseDurationSeconds=3600, renewTime=now_iso())
    api.put("leases", lease, NS)
    wait_until(lambda: not one.thread.is_alive(), timeout_s=15, what="one gives up")
    assert one.exit_code == 1
    assert one.work_done.is_set(), "the reconcile loop has stopped before the exit"
    assert holder(api) == "intruder"
