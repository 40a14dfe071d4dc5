"""A real Prometheus scraping the emulator every second returns the emulated per-node values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from extender import localserver
from extender.demo import launcher
from extender.demo.emulator import GIB, EmulatedPod, Emulator, EmulatorServer

pytestmark = pytest.mark.prometheus

WINDOW = "5s"  # 1 s scrapes: five samples per rate window keep the tests short


@pytest.fixture(scope="module")
def stack(openb_nodes) -> Iterator[tuple[Emulator, str]]:
    """An emulator (real clock) served on loopback and a Prometheus scraping it every second."""
    emulator = Emulator(openb_nodes, seed=2)
    with EmulatorServer(emulator) as server:
        with launcher.prometheus(server.scrape_targets(), scrape_interval_s=1).start() as prom:
            yield emulator, prom.url


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def by_label(url: str, promql: str, label: str) -> dict[str, float]:
    return {s["metric"][label]: float(s["value"][1]) for s in query(url, promql)}


def settles(url: str, promql: str, label: str, expected: dict[str, float], *,
            rel: float = 0.0, abs_: float = 0.0, timeout_s: float = 30) -> dict[str, float]:
    """Wait until `promql` returns `expected` per `label` (within tolerance); return the values."""
    last: dict[str, dict[str, float]] = {}

    def matches() -> bool:
        last["got"] = got = by_label(url, promql, label)
        return got.keys() == expected.keys() and all(
            got[k] == pytest.approx(v, rel=rel, abs=abs_) for k, v in expected.items())

    try:
        localserver.wait_until(matches, timeout_s=timeout_s, what=promql)
    except TimeoutError:
        pytest.fail(f"{promql}: expected {expected}, last got {last.get('got')}")
    return last["got"]


CPU_BY_NODE = (
    f'(1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{WINDOW}])))'
    ' * on (instance) group_left (node)'
    ' label_replace(kube_node_info, "instance", "$1:9100", "internal_ip", "(.*)")'
)


def test_cpu_utilisation_via_rate_matches_each_instance(stack) -> None:
    emulator, url = stack
    expected = {f"{r.ip}:9100": r.cpu_utilisation for r in emulator.readings()}
    settles(url, f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{WINDOW}]))',
            "instance", expected, abs_=0.02)


def test_node_exporter_instances_map_to_node_names_through_kube_node_info(stack) -> None:
    emulator, url = stack
    expected = {r.node: r.cpu_utilisation for r in emulator.readings()}
    settles(url, CPU_BY_NODE, "node", expected, abs_=0.02)


def test_a_placed_pod_shows_up_in_the_cpu_rate(stack) -> None:
    emulator, url = stack
    node = next(n for n in emulator.nodes if not n.gpus)
    emulator.place(EmulatedPod.single("it", "burst", cpu_cores=node.cores * 0.4, memory_bytes=GIB,
                              usage_factor=1.0), node.name)
    try:
        expected = {r.node: r.cpu_utilisation for r in emulator.readings()}
        got = settles(url, CPU_BY_NODE, "node", expected, abs_=0.02)
        assert got[node.name] > 0.4
    finally:
        emulator.remove("it", "burst")


def test_memory_available_ratio_matches(stack) -> None:
    emulator, url = stack
    expected = {f"{r.ip}:9100": r.memory_available_bytes / r.memory_total_bytes
                for r in emulator.readings()}
    settles(url, "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "instance",
            expected, rel=1e-6)


def test_network_rate_excluding_loopback_matches(stack) -> None:
    emulator, url = stack
    expected = {f"{r.ip}:9100": r.receive_bps for r in emulator.readings()}
    settles(url, f'sum by (instance) (rate(node_network_receive_bytes_total{{device!="lo"}}'
            f'[{WINDOW}]))', "instance", expected, rel=0.02)


def test_scaphandre_power_is_identified_by_target_node_label(stack) -> None:
    emulator, url = stack
    expected = {r.node: r.host_power_w * 1e6 for r in emulator.readings()}
    settles(url, "max by (node) (scaph_host_power_microwatts)", "node", expected, rel=0.01)


def test_dcgm_utilisation_arrives_under_both_node_label_spellings(stack) -> None:
    emulator, url = stack
    expected = {r.node: max(g.utilisation for g in r.gpus) * 100
                for r in emulator.readings() if r.gpus}
    promql = ('max by (node) (label_replace(label_replace(DCGM_FI_DEV_GPU_UTIL, "node", "$1",'
              ' "Hostname", "(.+)"), "node", "$1", "hostname", "(.+)"))')
    settles(url, promql, "node", expected, abs_=1)
    old = by_label(url, 'count by (Hostname) (DCGM_FI_DEV_GPU_UTIL{Hostname!=""})', "Hostname")
    new = by_label(url, 'count by (hostname) (DCGM_FI_DEV_GPU_UTIL{hostname!=""})', "hostname")
    assert old and new and old.keys() | new.keys() == expected.keys()


def test_gpu_workload_labels_arrive_as_exported_labels_like_the_helm_chart(stack) -> None:
    emulator, url = stack
    pods = {pod for r in emulator.readings() for g in r.gpus for (_, pod, _) in g.pods}
    assert pods, "the seeded background has GPU pods"

    def exported() -> set[str]:
        return set(by_label(url, 'count by (exported_pod) (DCGM_FI_DEV_GPU_UTIL{exported_pod!=""})',
                            "exported_pod"))

    localserver.wait_until(lambda: exported() == pods, timeout_s=30, what="exported_pod labels")


def test_node_conditions_reach_prometheus(stack) -> None:
    emulator, url = stack
    node = emulator.nodes[-1].name
    emulator.set_condition(node, "Ready", "false")
    try:
        expected = {r.node: 1.0 for r in emulator.readings() if r.conditions["Ready"] == "false"}
        settles(url, 'kube_node_status_condition{condition="Ready",status="false"} == 1', "node",
                expected)
    finally:
        emulator.set_condition(node, "Ready", "true")
