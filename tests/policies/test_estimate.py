"""The expected load of a pod not yet measured: requests, its siblings' use, defaults, limits."""

from __future__ import annotations

import pytest

from extender.kubeapi import (
    Container,
    ObjectMeta,
    OwnerReference,
    Pod,
    PodSpec,
    ResourceRequirements,
)
from extender.policies.engine import Engine
from extender.policies.model import (
    EstimateDefaults,
    OwnerUsage,
    PodDemand,
    estimate_load,
    pod_demand,
)
from tests.support import settings

DEFAULTS = EstimateDefaults(cpu_cores=0.25, memory_bytes=200 * 2**20)
JOB = ("batch", "Job", "sweep")
USAGE = OwnerUsage(cpu_cores={JOB: 1.0}, memory_bytes={JOB: 3 * 2**30})


def job_pod(cpu: float, memory: float = 2**30, **fields: float) -> PodDemand:
    return PodDemand(namespace="batch", name="sweep-x", cpu_cores=cpu, memory_bytes=memory,
                     owner_kind="Job", owner_name="sweep", **fields)


def test_a_pod_whose_siblings_use_more_than_it_requests_is_expected_to_use_as_much() -> None:
    est = estimate_load(job_pod(0.01), USAGE, DEFAULTS)
    assert (est.load_cpu_cores, est.load_memory_bytes) == (1.0, 3 * 2**30)
    assert "from its Job's pods" in est.estimate and "requests 0.01 cores" in est.estimate


def test_requests_above_the_siblings_use_stay_the_estimate() -> None:
    est = estimate_load(job_pod(4.0, 8 * 2**30), USAGE, DEFAULTS)
    assert (est.load_cpu_cores, est.load_memory_bytes) == (4.0, 8 * 2**30)
    assert est.estimate == ""  # nothing to explain


def test_limits_cap_the_estimate() -> None:
    est = estimate_load(job_pod(0.01, cpu_limit_cores=0.5), USAGE, DEFAULTS)
    assert est.load_cpu_cores == 0.5 and "capped at its limit" in est.estimate


def test_a_pod_without_requests_or_siblings_gets_the_defaults() -> None:
    lone = PodDemand(namespace="ns", name="lone")
    est = estimate_load(lone, OwnerUsage(), DEFAULTS)
    assert (est.load_cpu_cores, est.load_memory_bytes) == (0.25, 200 * 2**20)
    assert "default" in est.estimate
    # No usage known at all (the catalog has no owners entries): requests or defaults only.
    assert estimate_load(job_pod(0.01), None, DEFAULTS).load_cpu_cores == 0.01


def test_other_controllers_usage_does_not_apply() -> None:
    other = PodDemand(namespace="batch", name="y", cpu_cores=0.01, owner_kind="Job",
                      owner_name="another")
    assert estimate_load(other, USAGE, DEFAULTS).load_cpu_cores == 0.01


def test_owner_and_limits_come_from_the_wire_pod() -> None:
    wire_pod = Pod(
        metadata=ObjectMeta(name="sweep-x", namespace="batch", ownerReferences=[
            OwnerReference(kind="Job", name="sweep", controller=True)]),
        spec=PodSpec(containers=[
            Container(name="a", resources=ResourceRequirements(
                requests={"cpu": "10m"}, limits={"cpu": "2", "memory": "1Gi"})),
            Container(name="b", resources=ResourceRequirements(limits={"cpu": "500m"}))]))
    pod = pod_demand(wire_pod)
    assert (pod.owner_kind, pod.owner_name) == ("Job", "sweep")
    assert pod.cpu_limit_cores == pytest.approx(2.5)
    assert pod.memory_limit_bytes == 0.0  # container b sets no memory limit: no cap


def test_the_engine_estimates_with_the_tables_usage_and_can_be_switched_off() -> None:
    from extender.policies.model import NodeTable

    table = NodeTable.empty(["cpu_utilisation"])
    table = NodeTable(names=(), metrics=table.metrics, values=table.values,
                      sampled_at=table.sampled_at, owners=USAGE)
    assert Engine(settings()).estimate(job_pod(0.01), table).load_cpu_cores == 1.0
    off = Engine(settings(estimate={"enabled": False}))
    assert off.estimate(job_pod(0.01), table).load_cpu_cores == 0.01
