"""The load model: placements, background load, overcommit, GPUs and power."""

from __future__ import annotations

import threading

import pytest

from extender.demo.emulator import GIB, GPU_MODELS, EmulatedPod, Emulator, PowerModel, load_fleet


def cpu_node(emulator: Emulator) -> str:
    return next(n.name for n in emulator.nodes if not n.gpus)


def gpu_node(emulator: Emulator, minimum: int = 2) -> str:
    return next(n.name for n in emulator.nodes if n.gpus >= minimum)


def test_placing_a_pod_adds_requests_times_usage_factor(emulator: Emulator) -> None:
    node = cpu_node(emulator)
    cores = emulator.reading(node).cores
    before = emulator.reading(node)
    emulator.place(EmulatedPod.single("demo", "p1", cpu_cores=4, memory_bytes=8 * GIB, usage_factor=0.5),
                   node)
    after = emulator.reading(node)
    assert after.cpu_utilisation == pytest.approx(before.cpu_utilisation + 2 / cores)
    assert before.memory_available_bytes - after.memory_available_bytes == 4 * GIB
    assert "demo/p1" in after.pods
    emulator.remove("demo", "p1")
    assert emulator.reading(node) == before


def test_the_default_usage_factor_applies_when_the_pod_has_none(emulator: Emulator) -> None:
    node = cpu_node(emulator)
    before = emulator.reading(node).cpu_demand_cores
    emulator.place(EmulatedPod.single("demo", "p", cpu_cores=10, memory_bytes=GIB), node)
    assert emulator.reading(node).cpu_demand_cores == pytest.approx(
        before + 10 * emulator.usage_factor)


def test_a_pod_runs_in_one_place_only(emulator: Emulator) -> None:
    pod = EmulatedPod.single("demo", "once", cpu_cores=1, memory_bytes=GIB)
    emulator.place(pod, emulator.nodes[0].name)
    with pytest.raises(ValueError, match="demo/once already runs on"):
        emulator.place(pod, emulator.nodes[1].name)
    with pytest.raises(KeyError, match="unknown emulated node"):
        emulator.place(EmulatedPod.single("demo", "x", cpu_cores=1, memory_bytes=GIB), "nowhere")
    with pytest.raises(KeyError, match="not running"):
        emulator.remove("demo", "never")


def test_overcommit_saturates_the_node_and_shows_cpu_pressure(emulator: Emulator) -> None:
    node = cpu_node(emulator)
    cores = emulator.reading(node).cores
    assert emulator.reading(node).cpu_pressure == 0
    emulator.place(EmulatedPod.single("demo", "hog", cpu_cores=2 * cores, memory_bytes=GIB,
                              usage_factor=1.0), node)
    reading = emulator.reading(node)
    assert reading.cpu_utilisation == 1.0
    assert reading.cpu_demand_cores > cores
    assert reading.cpu_pressure > 0


def test_background_load_is_settable_and_validated(emulator: Emulator) -> None:
    node = cpu_node(emulator)
    emulator.set_background(node, cpu=0.0)
    idle = emulator.reading(node).cpu_utilisation
    emulator.set_background(node, cpu=0.5)
    assert emulator.reading(node).cpu_utilisation == pytest.approx(idle + 0.5)
    with pytest.raises(ValueError, match="background cpu: expected 0..1, got 1.5"):
        emulator.set_background(node, cpu=1.5)
    with pytest.raises(TypeError):
        emulator.set_background(node, colour=1.0)


def test_gpu_pods_raise_the_utilisation_of_their_gpus(emulator: Emulator) -> None:
    node = gpu_node(emulator)
    emulator.set_background(node, gpu=0.0)
    for pod in emulator.reading(node).pods:
        emulator.remove(*pod.split("/"))
    emulator.place(EmulatedPod.single("train", "g1", cpu_cores=1, memory_bytes=GIB, gpus=1,
                              usage_factor=0.8), node)
    emulator.place(EmulatedPod.single("train", "g2", cpu_cores=1, memory_bytes=GIB, gpus=0.5,
                              usage_factor=0.8), node)
    gpus = emulator.reading(node).gpus
    assert sorted(g.utilisation for g in gpus)[-2:] == pytest.approx([0.4, 0.8])
    assert {g.pods for g in gpus if g.pods} == {(("train", "g1", "main"),),
                                                (("train", "g2", "main"),)}
    labelled = [line for line in emulator.render("dcgm").splitlines()
                if line.startswith("DCGM_FI_DEV_GPU_UTIL{") and 'pod="g1"' in line]
    assert len(labelled) == 1 and 'namespace="train"' in labelled[0] and labelled[0].endswith(" 80")


def test_power_grows_with_load_and_includes_gpus(emulator: Emulator) -> None:
    node = gpu_node(emulator)
    emulator.set_background(node, cpu=0.0, gpu=0.0)
    idle = emulator.reading(node)
    emulator.set_background(node, cpu=0.8, gpu=0.8)
    busy = emulator.reading(node)
    assert busy.host_power_w > idle.host_power_w
    assert busy.power_w - busy.host_power_w > idle.power_w - idle.host_power_w
    assert busy.power_w == pytest.approx(busy.host_power_w + sum(g.power_w for g in busy.gpus))
    assert idle.host_power_w >= PowerModel().idle_w


def test_power_model_is_idle_plus_busy_cores_plus_gpu_envelope(openb_csv) -> None:
    (node,) = [n for n in load_fleet(openb_csv) if n.name == "openb-node-0000"]
    model = PowerModel(idle_w=100, per_core_w=2, per_gib_w=0)
    assert model.host_w(node, 0.5) == 100 + 2 * node.cores * 0.5
    t4 = PowerModel.gpu_w
    assert t4(GPU_MODELS["T4"], 0) == 10 and t4(GPU_MODELS["T4"], 1) == 70


def test_placements_from_many_threads_are_all_recorded(emulator: Emulator) -> None:
    nodes = [n.name for n in emulator.nodes]

    def place(worker: int) -> None:
        for i in range(20):
            emulator.place(EmulatedPod.single("load", f"w{worker}-{i}", cpu_cores=0.1, memory_bytes=GIB),
                           nodes[(worker + i) % len(nodes)])
            emulator.render("node-exporter")

    threads = [threading.Thread(target=place, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    placed = [p for r in emulator.readings() for p in r.pods if p.startswith("load/")]
    assert len(placed) == 80


def test_counters_never_go_backwards_across_changes(emulator: Emulator, clock) -> None:
    node = cpu_node(emulator)

    def total_cpu_seconds() -> float:
        return sum(float(line.rsplit(" ", 1)[1])
                   for line in emulator.render("node-exporter").splitlines()
                   if line.startswith("node_cpu_seconds_total{"))

    first = total_cpu_seconds()
    clock.advance(3)
    emulator.set_background(node, cpu=0.9)
    clock.advance(3)
    emulator.remove(*emulator.reading(node).pods[0].split("/"))
    clock.advance(3)
    assert total_cpu_seconds() > first
    # All modes together advance one second per CPU per second, whatever the load.
    cores = sum(n.cores for n in emulator.nodes)
    assert total_cpu_seconds() - first == pytest.approx(9 * cores, rel=1e-3)


def test_constructor_validates_its_arguments(openb_nodes) -> None:
    with pytest.raises(ValueError, match="at least one node"):
        Emulator([])
    with pytest.raises(ValueError, match="usage_factor"):
        Emulator(openb_nodes, usage_factor=0)
    with pytest.raises(ValueError, match="duplicate node name"):
        Emulator([openb_nodes[0], openb_nodes[0]])
