"""Each policy on hand-made clusters where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sim_support import make_nodes

from extender.policies import baselines as A
from extender.policies.baselines import Task
from extender.policies.fragmentation import (
    TargetWorkload,
    fgd_policy,
    node_fragmentation,
    placement_delta,
)
from extender.sim.cluster import Cluster, decide

SHARE = Task(cpu_milli=1000, memory_mib=1024, num_gpu=1, gpu_milli=500)
WHOLE = Task(cpu_milli=1000, memory_mib=1024, num_gpu=1, gpu_milli=1000)


def two_gpu_nodes(frees: list[list[int]], cpu: int = 32000) -> Cluster:
    cluster = Cluster(make_nodes([(cpu, 131072, len(f), "T4") for f in frees]))
    for i, f in enumerate(frees):
        cluster.gpu_free[i, : len(f)] = f
    return cluster


def choose(policy: A.Policy, task: Task, cluster: Cluster, seed: int = 0) -> int:
    return decide(task, cluster, policy, np.random.default_rng(seed))[0]


def test_best_fit_prefers_the_node_left_with_least_free() -> None:
    cluster = two_gpu_nodes([[1000, 1000], [1000, 500]])
    assert choose(A.best_fit, WHOLE, cluster) == 1


def test_dot_product_prefers_the_smallest_alignment_with_free_resources() -> None:
    cluster = two_gpu_nodes([[1000, 1000], [1000, 0]])
    assert choose(A.dot_product, WHOLE, cluster) == 1


def test_gpu_packing_prefers_an_already_shared_gpu_over_idle_ones() -> None:
    cluster = two_gpu_nodes([[1000, 1000], [600, 1000]])
    assert choose(A.gpu_packing, SHARE, cluster) == 1


def test_gpu_packing_prefers_a_used_node_over_an_idle_node_for_whole_gpus() -> None:
    cluster = two_gpu_nodes([[1000, 1000], [0, 1000]])
    assert choose(A.gpu_packing, WHOLE, cluster) == 1


def test_gpu_clustering_prefers_nodes_running_the_same_class_only() -> None:
    cluster = two_gpu_nodes([[1000] * 4, [1000] * 4, [1000] * 4])
    cluster.place(1, SHARE, (0,))  # node 1 runs sharing tasks only
    cluster.place(2, SHARE, (0,))
    cluster.place(2, WHOLE, (1,))  # node 2 mixes classes
    assert choose(A.gpu_clustering, SHARE, cluster) == 1
    assert choose(A.gpu_clustering, WHOLE, cluster) == 2  # its class among others beats idle


def test_kube_default_spreads_to_the_least_requested_node() -> None:
    cluster = two_gpu_nodes([[1000, 1000], [1000, 1000]])
    cluster.place(0, Task(cpu_milli=16000, memory_mib=65536), ())
    assert choose(A.kube_default, Task(cpu_milli=1000, memory_mib=1024), cluster) == 1


def test_trimaran_packs_up_to_its_target_then_avoids_loaded_nodes() -> None:
    cluster = two_gpu_nodes([[1000], [1000]], cpu=100_000)
    task = Task(cpu_milli=1000, memory_mib=1)
    low = np.array([0.05, 0.30])  # both below the 40% target: the busier one wins
    assert decide(task, cluster, A.trimaran_tlp, np.random.default_rng(0), low)[0] == 1
    high = np.array([0.50, 0.95])  # both above: the less loaded one wins
    assert decide(task, cluster, A.trimaran_tlp, np.random.default_rng(0), high)[0] == 0


def test_trimaran_never_prefers_a_node_with_unknown_usage() -> None:
    cluster = two_gpu_nodes([[1000], [1000]], cpu=100_000)
    usage = np.array([np.nan, 0.2])
    assert decide(Task(cpu_milli=1, memory_mib=1), cluster, A.trimaran_tlp,
                  np.random.default_rng(0), usage)[0] == 1


def test_random_spreads_over_feasible_nodes_only() -> None:
    cluster = two_gpu_nodes([[0, 0], [1000, 1000], [1000, 1000]])
    picks = {choose(A.random_policy, WHOLE, cluster, seed) for seed in range(40)}
    assert picks == {1, 2}


def test_select_returns_minus_one_when_every_node_is_rejected() -> None:
    rng = np.random.default_rng(0)
    assert A.select(np.array([-np.inf, -np.inf]), np.array([True, True]), rng) == -1
    assert A.select(np.array([1.0, 2.0]), np.array([False, False]), rng) == -1


# --- FGD ----------------------------------------------------------------------------------------


def half_share_workload() -> TargetWorkload:
    """Only tasks asking for half a GPU."""
    return TargetWorkload.from_tasks([1000], [1], [500])


def test_fragmentation_counts_idle_share_too_small_for_the_target_tasks() -> None:
    wl = half_share_workload()
    gpu = np.array([[300, 1000]])
    access = wl.access(["T4"])
    assert node_fragmentation(np.array([8000]), gpu, access, wl).tolist() == [300.0]


def test_fragmentation_counts_everything_when_cpu_is_exhausted() -> None:
    wl = half_share_workload()
    frag = node_fragmentation(np.array([500]), np.array([[300, 1000]]), wl.access(["T4"]), wl)
    assert frag.tolist() == [1300.0]


def test_fragmentation_counts_everything_for_an_unaccepted_model() -> None:
    wl = TargetWorkload.from_tasks([1000], [1], [500], [("V100M32",)])
    frag = node_fragmentation(np.array([8000]), np.array([[1000, 1000]]), wl.access(["T4"]), wl)
    assert frag.tolist() == [2000.0]


def test_fgd_prefers_the_gpu_whose_remainder_stays_usable() -> None:
    # Workload of half-GPU tasks. On node 0 a 500 task leaves 200 of the 700 GPU: stranded.
    # On node 1 it leaves 500 of an idle GPU: still usable, no new fragment. Best fit would
    # pick node 0; FGD must pick node 1.
    wl = half_share_workload()
    cluster = two_gpu_nodes([[700, 0], [1000, 1000], [0, 0]])
    fgd = fgd_policy(wl, cluster.nodes.models)
    assert decide(SHARE, cluster, fgd, np.random.default_rng(0))[0] == 1
    assert choose(A.best_fit, SHARE, cluster) == 0


def test_fgd_avoids_stranding_a_gpu() -> None:
    # Workload of 600 tasks: a 500 task on the idle node strands 500 there; on node 1 (free 550)
    # the 550 was already useless for 600 tasks, so placing there reduces fragmentation.
    wl = TargetWorkload.from_tasks([1000], [1], [600])
    cluster = two_gpu_nodes([[1000, 0], [550, 0]])
    node, _, _ = decide(SHARE, cluster, fgd_policy(wl, cluster.nodes.models),
                        np.random.default_rng(0))
    assert node == 1


def test_fgd_delta_matches_recomputing_the_fragmentation() -> None:
    rng = np.random.default_rng(3)
    wl = TargetWorkload.from_tasks([1000, 4000, 8000, 2000], [1, 1, 2, 0], [300, 700, 1000, 0])
    n = 40
    gpu = np.where(np.arange(8)[None, :] < rng.choice([2, 4, 8], n)[:, None],
                   rng.choice([0, 200, 500, 800, 1000], (n, 8)), -1)
    cpu = rng.integers(0, 64000, n)
    access = wl.access(["T4"] * n)
    base = node_fragmentation(cpu, gpu, access, wl)
    for task in (SHARE, Task(cpu_milli=8000, memory_mib=1, num_gpu=2, gpu_milli=1000),
                 Task(cpu_milli=3000, memory_mib=1)):
        delta, slot = placement_delta(task, cpu, gpu, access, wl)
        for k in np.flatnonzero(np.isfinite(delta)):
            after_gpu, after_cpu = gpu.copy(), cpu.copy()
            after_cpu[k] -= task.cpu_milli
            slots = A.pick_gpus(task, gpu[k], int(slot[k]))
            after_gpu[k, list(slots)] -= task.gpu_milli
            again = node_fragmentation(after_cpu, after_gpu, access, wl)[k] - base[k]
            assert delta[k] == pytest.approx(again)


def test_target_workload_popularity_keeps_the_most_frequent_types() -> None:
    wl = TargetWorkload.from_tasks([1, 1, 1, 2], [1, 1, 1, 0], [500, 500, 500, 0],
                                   popularity=0.7)
    assert len(wl) == 1 and wl.weight.tolist() == [1.0]
    with pytest.raises(ValueError, match="popularity"):
        TargetWorkload.from_tasks([1], [0], [0], popularity=0)
