from __future__ import annotations

import numpy as np
import pytest
from sim_support import make_nodes, make_pods

from extender.policies.baselines import Task, feasible, pick_gpus
from extender.sim.cluster import Cluster, task_of


def cluster_with_free(free: list[int], cpu: int = 32000) -> Cluster:
    cluster = Cluster(make_nodes([(cpu, 65536, len(free), "T4")]))
    cluster.gpu_free[0, : len(free)] = free
    return cluster


def test_sharing_task_fits_on_one_gpu_with_enough_free_share() -> None:
    cluster = cluster_with_free([300, 600])
    assert feasible(Task(cpu_milli=1, memory_mib=1, num_gpu=1, gpu_milli=500), cluster.view())[0]


def test_sharing_task_does_not_add_up_shares_of_several_gpus() -> None:
    cluster = cluster_with_free([400, 400])  # 800 free in total, but no single GPU has 500
    assert not feasible(Task(cpu_milli=1, memory_mib=1, num_gpu=1, gpu_milli=500),
                        cluster.view())[0]


def test_whole_gpu_tasks_need_that_many_idle_gpus() -> None:
    cluster = cluster_with_free([1000, 1000, 999, 1000])
    view = cluster.view()
    assert feasible(Task(cpu_milli=1, memory_mib=1, num_gpu=3, gpu_milli=1000), view)[0]
    assert not feasible(Task(cpu_milli=1, memory_mib=1, num_gpu=4, gpu_milli=1000), view)[0]


def test_cpu_and_memory_requests_are_checked() -> None:
    cluster = cluster_with_free([1000], cpu=4000)
    assert not feasible(Task(cpu_milli=4001, memory_mib=1), cluster.view())[0]
    assert not feasible(Task(cpu_milli=1, memory_mib=65537), cluster.view())[0]
    assert feasible(Task(cpu_milli=4000, memory_mib=65536), cluster.view())[0]


def test_gpu_model_constraint_excludes_other_models() -> None:
    nodes = make_nodes([(32000, 65536, 2, "T4"), (32000, 65536, 2, "V100M32")])
    pods = make_pods([(1000, 1, 1, 1000)])
    pods = type(pods)(pods.names, pods.cpu_milli, pods.memory_mib, pods.num_gpu, pods.gpu_milli,
                      (("V100M32",),), pods.qos, pods.creation, pods.deletion)
    task = task_of(pods, 0, nodes.models)
    assert feasible(task, Cluster(nodes).view()).tolist() == [False, True]


def test_model_constraint_naming_only_absent_models_fits_nowhere() -> None:
    nodes = make_nodes([(32000, 65536, 2, "T4")])
    pods = make_pods([(1000, 1, 1, 1000)])
    pods = type(pods)(pods.names, pods.cpu_milli, pods.memory_mib, pods.num_gpu, pods.gpu_milli,
                      (("A100",),), pods.qos, pods.creation, pods.deletion)
    assert not feasible(task_of(pods, 0, nodes.models), Cluster(nodes).view()).any()


def test_cpu_only_task_ignores_gpus_and_models() -> None:
    cluster = cluster_with_free([0, 0])
    assert feasible(Task(cpu_milli=1000, memory_mib=1), cluster.view())[0]


def test_device_plugin_best_fit_picks_the_fullest_gpu_that_fits() -> None:
    task = Task(cpu_milli=1, memory_mib=1, num_gpu=1, gpu_milli=300)
    assert pick_gpus(task, np.array([1000, 350, 200, 500])) == (1,)


def test_place_refuses_over_allocation() -> None:
    cluster = cluster_with_free([200, 1000])
    task = Task(cpu_milli=1, memory_mib=1, num_gpu=1, gpu_milli=500)
    with pytest.raises(ValueError, match="lack"):
        cluster.place(0, task, (0,))
    cluster.place(0, task, (1,))
    cluster.place(0, task, (1,))
    with pytest.raises(ValueError):
        cluster.place(0, task, (1,))
    assert cluster.gpu_free[0].tolist() == [200, 0]


def test_release_restores_the_state() -> None:
    cluster = cluster_with_free([1000, 1000])
    task = Task(cpu_milli=3000, memory_mib=100, num_gpu=2, gpu_milli=1000)
    cluster.place(0, task, (0, 1))
    cluster.release(0, task, (0, 1))
    assert cluster.gpu_free[0].tolist() == [1000, 1000]
    assert cluster.cpu_free[0] == 32000 and cluster.memory_free[0] == 65536 and cluster.pods == 0
