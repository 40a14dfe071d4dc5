"""Fixtures of the partition tests: a fake Kubernetes API on loopback and the real client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from kubernetes.client import ApiClient, Configuration, CoreV1Api
from prometheus_client import CollectorRegistry

from extender.partition.reconcile import PartitionMetrics, Reconciler
from extender.partition.settings import PartitionSettings, load_partition_settings
from tests.partition.agentserver import Agent, serving
from tests.partition.fakeapi import FakeKubernetes

CONFIG = Path(__file__).resolve().parents[2] / "config" / "partition.yaml"
NS = "test"


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


@pytest.fixture
def api() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        yield server


@pytest.fixture
def api_client(api: FakeKubernetes) -> Iterator[ApiClient]:
    configuration = Configuration(host=api.url)
    with ApiClient(configuration) as client:
        yield client


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
def controller(api_client: ApiClient) -> Iterator[Callable[..., Running]]:
    """Start reconcilers (settings from make_settings(**changes), optional clock); all stopped
    at teardown."""
    started: list[Running] = []

    def start(clock: Callable[[], float] = time.time, **changes: Any) -> Running:
        # The fake API serves no Services: COMPSs publishing runs against the real apiserver
        # (test_partition_compss_apiserver.py).
        changes.setdefault("compss", {"enabled": False})
        running = Running(make_settings(**changes), api_client, clock=clock).start()
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
