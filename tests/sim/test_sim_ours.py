"""Ours: the extender's engine inside the simulator, and the fragmentation term it calls."""

from __future__ import annotations

import numpy as np
from sim_support import make_nodes

from extender.policies.baselines import Policy, Task
from extender.policies.fragmentation import (
    DERIVED_TERMS,
    TargetWorkload,
    fragmentation_term,
    packing_term,
)
from extender.policies.model import Allocation, NodeTable, PodDemand
from extender.settings import DERIVED_TERMS as DERIVED_TERM_NAMES
from extender.settings import LEARNED_TERM, load_settings
from extender.sim.cluster import Cluster, decide
from extender.sim.policies import OursPolicy, build
from extender.sim.replay import Observation


def table(gpu_free: list[list[float]], cpu_free: list[float]) -> NodeTable:
    n = len(cpu_free)
    return NodeTable(names=tuple(f"n{i}" for i in range(n)), metrics=(),
                     values=np.zeros((n, 0)), sampled_at=np.zeros((n, 0)),
                     allocation=Allocation(cpu_free_milli=np.array(cpu_free, float),
                                           memory_free_mib=np.full(n, 1e6),
                                           gpu_free_milli=np.array(gpu_free, float),
                                           gpu_model=("T4",) * n))


def test_fragmentation_term_scores_the_least_fragmenting_node_one() -> None:
    term = fragmentation_term(TargetWorkload.from_tasks([1000], [1], [500]))
    pod = PodDemand(name="p", cpu_cores=1.0, gpus=1, gpu_milli=500)
    good = term(pod, table([[700, 0], [1000, 1000]], [8000, 8000]), np.array([0, 1, -1]))
    assert good is not None
    assert good[1] == 1.0 and good[0] < 0.01 and np.isnan(good[2])


def test_fragmentation_term_gives_zero_where_the_pod_cannot_go_and_none_without_allocation() -> None:
    term = DERIVED_TERMS["gpu_fragmentation"]
    pod = PodDemand(name="p", cpu_cores=1.0, gpus=2, gpu_milli=2000)
    good = term(pod, table([[1000, 1000], [1000, -1]], [8000, 8000]), np.array([0, 1]))
    assert good is not None and good.tolist() == [1.0, 0.0]
    bare = NodeTable(names=("n0",), metrics=(), values=np.zeros((1, 0)),
                     sampled_at=np.zeros((1, 0)))
    assert term(pod, bare, np.array([0])) is None


def observation(cpu: list[float]) -> Observation:
    n = len(cpu)
    return Observation(100.0, 85.0, np.array(cpu), np.zeros(n), np.full(n, np.nan),
                       np.full(n, 300.0), np.zeros(n))


def test_metrics_aware_profile_avoids_the_busy_node_and_filters_the_overloaded_one() -> None:
    settings = load_settings("config/extender.yaml", environ={})
    nodes = make_nodes([(32000, 131072, 0, "")] * 3)
    wl = TargetWorkload.from_tasks([1000], [0], [0])
    policy = build("metrics-aware", nodes=nodes, workload=wl, settings=settings)
    assert isinstance(policy, OursPolicy)
    policy.observe(observation([0.95, 0.60, 0.10]))
    task = Task(cpu_milli=1000, memory_mib=1024)
    scores = policy(task, Cluster(nodes).view(), np.ones(3, bool), np.random.default_rng(0)).scores
    assert scores[0] == -np.inf  # cpu above the profile's 90% filter
    assert scores[2] > scores[1]
    node, _, _ = decide(task, Cluster(nodes), policy, np.random.default_rng(0))
    assert node == 2


def test_placements_reach_the_engine_ledger() -> None:
    settings = load_settings("config/extender.yaml", environ={})
    nodes = make_nodes([(32000, 131072, 0, "")] * 2)
    policy = OursPolicy(settings, "metrics-aware", nodes, TargetWorkload.from_tasks([1], [0], [0]))
    policy.observe(observation([0.1, 0.1]))
    policy.placed(0, Task(cpu_milli=16000, memory_mib=1024), "big")
    pending = policy.engine.ledger.pending(["node-0", "node-1"], np.array([85.0, 85.0]), 100.0)
    assert pending.cpu_cores.tolist() == [16.0, 0.0]


def gpu_cluster() -> tuple[Cluster, Policy, OursPolicy]:
    """Six 4-GPU nodes in different states (partly used GPUs and CPUs), FGD and ours' `gpu`."""
    nodes = make_nodes([(64000, 262144, 4, "V100")] * 6)
    cluster = Cluster(nodes)
    for node, (cpu, share) in enumerate([(8000, 500), (8000, 300), (4000, 1000), (60000, 200),
                                         (2000, 750), (0, 0)]):
        gpus = (0,) if share else ()
        cluster.place(node, Task(cpu_milli=cpu, memory_mib=1024, num_gpu=int(bool(share)),
                                 gpu_milli=share), gpus)
    wl = TargetWorkload.from_tasks([4000, 8000, 2000, 16000], [1, 1, 1, 0], [500, 1000, 250, 0])
    settings = load_settings("config/extender.yaml", environ={})
    ours = build("gpu", nodes=cluster.nodes, workload=wl, settings=settings)
    assert isinstance(ours, OursPolicy)
    return cluster, build("fgd", nodes=cluster.nodes, workload=wl), ours


def test_gpu_profile_keeps_exactly_fgds_best_nodes() -> None:
    cluster, fgd, ours = gpu_cluster()
    ours.observe(observation([0.1] * 6))
    rng = np.random.default_rng(0)
    for task in (Task(cpu_milli=4000, memory_mib=1024, num_gpu=1, gpu_milli=500),
                 Task(cpu_milli=2000, memory_mib=1024, num_gpu=1, gpu_milli=250),
                 Task(cpu_milli=8000, memory_mib=1024, num_gpu=1, gpu_milli=1000),
                 Task(cpu_milli=16000, memory_mib=1024)):
        view = cluster.view()
        ok = np.ones(6, bool)
        levels = fgd(task, view, ok, rng).scores
        kept = np.isfinite(ours(task, view, ok, rng).scores)
        assert kept.tolist() == (levels == levels.max()).tolist(), task
        assert 0 < kept.sum() < 6, task  # the cluster is uneven enough to split every task


def test_gpu_profile_band_follows_the_best_node_the_pod_does_not_make_hot() -> None:
    cluster, fgd, ours = gpu_cluster()
    task = Task(cpu_milli=4000, memory_mib=1024, num_gpu=1, gpu_milli=500)
    view, ok, rng = cluster.view(), np.ones(6, bool), np.random.default_rng(0)
    levels = fgd(task, view, ok, rng).scores
    best = np.flatnonzero(levels == levels.max())
    # FGD's best nodes run at 88% CPU: 4 more cores of 64 take them over the 90% limit.
    cpu = np.full(6, 0.1)
    cpu[best] = 0.88
    ours.observe(observation(cpu.tolist()))
    kept = np.isfinite(ours(task, view, ok, rng).scores)
    rest = np.setdiff1d(np.arange(6), best)
    assert not kept[best].any()
    assert kept.tolist() == (np.isin(np.arange(6), rest)
                             & (levels == levels[rest].max())).tolist()


def test_fragmentation_term_drops_rows_without_allocation_data() -> None:
    term = fragmentation_term(TargetWorkload.from_tasks([1000], [1], [500]))
    pod = PodDemand(name="p", cpu_cores=1.0, gpus=1, gpu_milli=500)
    # n1 has no allocation data (NaN), and would otherwise be the best node.
    good = term(pod, table([[700, 0], [1000, 1000], [1000, 1000]], [8000, float("nan"), 8000]),
                np.array([0, 1, 2]))
    assert good is not None
    assert np.isnan(good[1]) and good[2] == 1.0 and good[0] < 0.01
    empty = NodeTable.empty(["cpu_utilisation"])
    empty = NodeTable(names=(), metrics=empty.metrics, values=empty.values,
                      sampled_at=empty.sampled_at, allocation=Allocation(
                          cpu_free_milli=np.zeros(0), memory_free_mib=np.zeros(0),
                          gpu_free_milli=np.zeros((0, 1)), gpu_model=()))
    assert np.isnan(term(pod, empty, np.array([-1]))).all()


def test_packing_term_is_the_allocated_share_of_the_gpus_and_one_without_gpus() -> None:
    term = packing_term()
    pod = PodDemand(name="p", cpu_cores=1.0, gpus=1, gpu_milli=500)
    # idle 2-GPU node, half of one GPU plus a full one taken, no GPU, no allocation data
    good = term(pod, table([[1000, 1000], [500, 0], [-1, -1], [1000, 1000]],
                           [8000, 8000, 8000, float("nan")]), np.array([0, 1, 2, 3, -1]))
    assert good is not None
    assert good[:3].tolist() == [0.0, 0.75, 1.0] and np.isnan(good[3:]).all()
    bare = NodeTable(names=("n0",), metrics=(), values=np.zeros((1, 0)),
                     sampled_at=np.zeros((1, 0)))
    assert term(pod, bare, np.array([0])) is None


def test_gpu_profile_prefers_fgds_best_nodes_whose_gpus_are_taken() -> None:
    nodes = make_nodes([(64000, 262144, 4, "V100")] * 4)
    cluster = Cluster(nodes)
    # Nodes 1 and 2 have one and two whole GPUs taken; FGD scores a whole-GPU task the same on
    # all four (no shared GPU anywhere), so the profile's tie-break decides.
    for node, gpus in ((1, (0,)), (2, (0, 1))):
        cluster.place(node, Task(cpu_milli=4000, memory_mib=1024, num_gpu=len(gpus),
                                 gpu_milli=1000), gpus)
    wl = TargetWorkload.from_tasks([4000, 8000], [1, 1], [1000, 500])
    settings = load_settings("config/extender.yaml", environ={})
    ours = build("gpu", nodes=nodes, workload=wl, settings=settings)
    fgd = build("fgd", nodes=nodes, workload=wl)
    assert isinstance(ours, OursPolicy)
    ours.observe(observation([0.1] * 4))
    task = Task(cpu_milli=4000, memory_mib=1024, num_gpu=1, gpu_milli=1000)
    view, ok, rng = cluster.view(), np.ones(4, bool), np.random.default_rng(0)
    levels = fgd(task, view, ok, rng).scores
    assert (levels == levels.max()).all()
    scores = ours(task, view, ok, rng).scores
    assert scores[2] > scores[1] > scores[0] == scores[3]
    node, _, _ = decide(task, cluster, ours, rng)
    assert node == 2


def test_the_configuration_accepts_exactly_the_derived_terms_the_engine_computes() -> None:
    # Two lists by necessity (settings may not import numpy policy code): they must agree.
    # The allocation terms come from fragmentation; the learned one from its model file.
    assert set(DERIVED_TERMS) | {LEARNED_TERM} == DERIVED_TERM_NAMES
