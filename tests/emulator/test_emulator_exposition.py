"""The exporter pages: parseable text format, the real exporters' names, labels and units."""

from __future__ import annotations

from collections import defaultdict

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from extender.demo.emulator import CONTENT_TYPE, GPU_MODELS, Emulator, EmulatorServer

EXPORTERS = ("node-exporter", "kube-state-metrics", "cadvisor", "dcgm")


def samples(text: str, name: str) -> list[Sample]:
    """Every sample called `name` in an exposition page."""
    found = [s for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == name]
    assert found, f"no {name} series"
    return found


def node_of_ip(emulator: Emulator) -> dict[str, str]:
    return {f"{node.ip}:9100": node.name for node in emulator.nodes}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_every_page_parses_as_prometheus_text_format(emulator: Emulator, exporter: str) -> None:
    families = list(text_string_to_metric_families(emulator.render(exporter)))
    assert families and all(family.samples for family in families)


def test_node_exporter_exposes_the_real_families_and_types(emulator: Emulator) -> None:
    families = text_string_to_metric_families(emulator.render("node-exporter"))
    types = {f.name: f.type for f in families}
    assert types == {
        "node_cpu_seconds": "counter", "node_load1": "gauge",
        "node_memory_MemAvailable_bytes": "gauge", "node_memory_MemTotal_bytes": "gauge",
        "node_network_receive_bytes": "counter", "node_network_transmit_bytes": "counter",
        "node_network_receive_drop": "counter", "node_disk_io_now": "gauge",
        "node_disk_read_bytes": "counter", "node_disk_written_bytes": "counter",
        "node_filesystem_avail_bytes": "gauge", "node_filesystem_size_bytes": "gauge",
        "node_pressure_cpu_waiting_seconds": "counter",
        "node_pressure_memory_waiting_seconds": "counter", "node_uname_info": "gauge",
    }


def test_node_exporter_identifies_nodes_only_by_ip_instance(emulator: Emulator) -> None:
    text = emulator.render("node-exporter")
    ips = node_of_ip(emulator)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels["instance"] in ips
            assert "node" not in sample.labels
    cpus = samples(text, "node_cpu_seconds_total")
    per_instance = defaultdict(set)
    for s in cpus:
        per_instance[s.labels["instance"]].add(s.labels["cpu"])
        assert s.labels["mode"] in {"idle", "iowait", "irq", "nice", "softirq", "steal", "system",
                                    "user"}
    assert {ip: len(c) for ip, c in per_instance.items()} == {
        f"{n.ip}:9100": n.cores for n in emulator.nodes}


def test_cpu_counters_advance_at_the_emulated_utilisation(emulator: Emulator,
                                                          clock) -> None:
    def idle_seconds() -> dict[str, float]:
        total: dict[str, float] = defaultdict(float)
        for s in samples(emulator.render("node-exporter"), "node_cpu_seconds_total"):
            if s.labels["mode"] == "idle":
                total[s.labels["instance"]] += s.value
        return total

    before = idle_seconds()
    clock.advance(30)
    after = idle_seconds()
    for node in emulator.nodes:
        instance = f"{node.ip}:9100"
        idle_share = (after[instance] - before[instance]) / 30 / node.cores
        assert 1 - idle_share == pytest.approx(emulator.reading(node.name).cpu_utilisation,
                                               abs=0.002)


def test_byte_counters_advance_at_the_emulated_rates(emulator: Emulator, clock) -> None:
    def by_instance(name: str, device: str) -> dict[str, float]:
        return {s.labels["instance"]: s.value
                for s in samples(emulator.render("node-exporter"), name)
                if s.labels["device"] == device}

    rx0 = by_instance("node_network_receive_bytes_total", "eth0")
    read0 = by_instance("node_disk_read_bytes_total", "nvme0n1")
    clock.advance(10)
    rx1 = by_instance("node_network_receive_bytes_total", "eth0")
    read1 = by_instance("node_disk_read_bytes_total", "nvme0n1")
    for node in emulator.nodes:
        reading, instance = emulator.reading(node.name), f"{node.ip}:9100"
        assert (rx1[instance] - rx0[instance]) / 10 == pytest.approx(reading.receive_bps, rel=1e-3)
        assert (read1[instance] - read0[instance]) / 10 == pytest.approx(reading.disk_read_bps,
                                                                         rel=1e-3)


def test_memory_and_filesystem_gauges_match_the_reading(emulator: Emulator) -> None:
    text = emulator.render("node-exporter")
    names = node_of_ip(emulator)
    available = {names[s.labels["instance"]]: s.value
                 for s in samples(text, "node_memory_MemAvailable_bytes")}
    root_fs = {names[s.labels["instance"]]: s.value
               for s in samples(text, "node_filesystem_avail_bytes")
               if s.labels["mountpoint"] == "/"}
    for node in emulator.nodes:
        reading = emulator.reading(node.name)
        assert available[node.name] == reading.memory_available_bytes
        assert root_fs[node.name] == reading.filesystem_avail_bytes
        assert reading.memory_total_bytes == node.memory_mib * 1024 * 1024


def test_kube_node_info_maps_every_ip_to_its_node(emulator: Emulator) -> None:
    info = samples(emulator.render("kube-state-metrics"), "kube_node_info")
    assert {s.labels["internal_ip"]: s.labels["node"] for s in info} == {
        n.ip: n.name for n in emulator.nodes}


def test_conditions_have_exactly_one_true_status_like_ksm(emulator: Emulator) -> None:
    node = emulator.nodes[0].name
    emulator.set_condition(node, "Ready", "false")
    emulator.set_condition(node, "MemoryPressure", "true")
    emulator.set_condition(node, "DiskPressure", "unknown")
    current: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in samples(emulator.render("kube-state-metrics"), "kube_node_status_condition"):
        if s.value == 1:
            current[(s.labels["node"], s.labels["condition"])].append(s.labels["status"])
    assert all(len(statuses) == 1 for statuses in current.values())
    assert len(current) == 4 * len(emulator.nodes)
    assert current[(node, "Ready")] == ["false"]
    assert current[(node, "MemoryPressure")] == ["true"]
    assert current[(node, "DiskPressure")] == ["unknown"]
    assert current[(emulator.nodes[1].name, "Ready")] == ["true"]


def test_bad_condition_or_status_is_refused(emulator: Emulator) -> None:
    node = emulator.nodes[0].name
    with pytest.raises(ValueError, match="condition: expected one of Ready"):
        emulator.set_condition(node, "Sleepy", "true")
    with pytest.raises(ValueError, match="status: expected one of true, false, unknown"):
        emulator.set_condition(node, "Ready", "False")  # type: ignore[arg-type]


def test_cordon_sets_unschedulable(emulator: Emulator) -> None:
    node = emulator.nodes[2].name
    emulator.cordon(node)
    text = emulator.render("kube-state-metrics")
    flags = {s.labels["node"]: s.value for s in samples(text, "kube_node_spec_unschedulable")}
    assert flags[node] == 1 and sum(flags.values()) == 1
    emulator.cordon(node, False)
    assert emulator.reading(node).unschedulable is False


def test_allocatable_lists_sanitised_gpu_resource_on_gpu_nodes_only(emulator: Emulator) -> None:
    alloc = samples(emulator.render("kube-state-metrics"), "kube_node_status_allocatable")
    gpus = {s.labels["node"]: s.value for s in alloc if s.labels["resource"] == "nvidia_com_gpu"}
    assert gpus == {n.name: n.gpus for n in emulator.nodes if n.gpus}
    cpu = {s.labels["node"]: (s.value, s.labels["unit"]) for s in alloc
           if s.labels["resource"] == "cpu"}
    assert cpu == {n.name: (n.cpu_milli / 1000, "core") for n in emulator.nodes}


def test_pods_appear_in_ksm_and_cadvisor_with_their_node(emulator: Emulator) -> None:
    ksm = emulator.render("kube-state-metrics")
    placed = {f'{s.labels["namespace"]}/{s.labels["pod"]}': s.labels["node"]
              for s in samples(ksm, "kube_pod_info")}
    expected = {pod: r.node for r in emulator.readings() for pod in r.pods}
    assert placed == expected
    requests_ = samples(ksm, "kube_pod_container_resource_requests")
    assert {s.labels["resource"] for s in requests_} >= {"cpu", "memory", "nvidia_com_gpu"}
    assert all(s.labels["node"] == placed[f'{s.labels["namespace"]}/{s.labels["pod"]}']
               for s in requests_)
    ready = samples(ksm, "kube_pod_status_ready")
    assert sum(s.value for s in ready) == len(placed)
    cadvisor = emulator.render("cadvisor")
    assert {s.labels["node"] for s in samples(cadvisor, "container_memory_working_set_bytes")} \
        <= {n.name for n in emulator.nodes}


def test_pod_readiness_follows_set_pod_ready(emulator: Emulator) -> None:
    namespace, name = emulator.readings()[0].pods[0].split("/")

    def ready_status() -> str:
        (current,) = [s.labels["condition"]
                      for s in samples(emulator.render("kube-state-metrics"),
                                       "kube_pod_status_ready")
                      if s.labels["pod"] == name and s.value == 1]
        return current

    assert ready_status() == "true"
    emulator.set_pod_ready(namespace, name, False)
    assert ready_status() == "false"
    with pytest.raises(KeyError, match="not running"):
        emulator.set_pod_ready(namespace, "ghost", True)


def test_cadvisor_pod_cgroup_series_sums_its_containers(emulator: Emulator,
                                                        clock) -> None:
    clock.advance(20)
    usage = samples(emulator.render("cadvisor"), "container_cpu_usage_seconds_total")
    containers: dict[str, float] = defaultdict(float)
    pod_level: dict[str, float] = {}
    for s in usage:
        key = f'{s.labels["namespace"]}/{s.labels["pod"]}'
        if s.labels["container"]:
            containers[key] += s.value
        else:
            pod_level[key] = s.value
    assert pod_level.keys() == containers.keys()
    for key, total in containers.items():
        assert pod_level[key] == pytest.approx(total, abs=0.01)
        assert total > 0


def test_container_quota_is_the_cpu_request_in_microseconds_per_period(emulator: Emulator) -> None:
    quota = samples(emulator.render("cadvisor"), "container_spec_cpu_quota")
    requests_ = {(s.labels["pod"], s.labels["container"]): s.value
                 for s in samples(emulator.render("kube-state-metrics"),
                                  "kube_pod_container_resource_requests")
                 if s.labels["resource"] == "cpu"}
    for s in quota:
        assert s.value == round(requests_[(s.labels["pod"], s.labels["container"])] * 100_000)


def test_dcgm_uses_old_and_new_node_label_on_half_the_gpu_nodes_each(emulator: Emulator) -> None:
    util = samples(emulator.render("dcgm"), "DCGM_FI_DEV_GPU_UTIL")
    old = {s.labels["Hostname"] for s in util if "Hostname" in s.labels}
    new = {s.labels["hostname"] for s in util if "hostname" in s.labels}
    gpu_nodes = {n.name for n in emulator.nodes if n.gpus}
    assert old | new == gpu_nodes and not old & new
    assert abs(len(old) - len(new)) <= 1
    assert all({"gpu", "UUID", "device", "modelName"} <= s.labels.keys() for s in util)


def test_dcgm_framebuffer_is_in_mib_and_adds_up_to_the_model(emulator: Emulator) -> None:
    text = emulator.render("dcgm")
    used = {s.labels["UUID"]: s.value for s in samples(text, "DCGM_FI_DEV_FB_USED")}
    free = {s.labels["UUID"]: s.value for s in samples(text, "DCGM_FI_DEV_FB_FREE")}
    model_memory = {m.model_name: m.memory_mib for m in GPU_MODELS.values()}
    for s in samples(text, "DCGM_FI_DEV_FB_USED"):
        uuid = s.labels["UUID"]
        assert used[uuid] + free[uuid] == model_memory[s.labels["modelName"]]
    counts = defaultdict(int)
    for s in samples(text, "DCGM_FI_DEV_GPU_UTIL"):
        counts[s.labels.get("Hostname") or s.labels["hostname"]] += 1
    assert dict(counts) == {n.name: n.gpus for n in emulator.nodes if n.gpus}


def test_scaphandre_host_power_has_no_host_label_and_is_in_microwatts(emulator: Emulator) -> None:
    node = emulator.nodes[0].name
    (power,) = samples(emulator.render("scaphandre", node), "scaph_host_power_microwatts")
    assert power.labels == {}
    assert power.value == pytest.approx(emulator.reading(node).host_power_w * 1e6, abs=1)
    assert 50 < power.value / 1e6 < 1000  # watts of a server, not of a phone or a building


def test_render_refuses_unknown_exporters_and_nodes(emulator: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown exporter"):
        emulator.render("snmp")
    with pytest.raises(ValueError, match="per node"):
        emulator.render("scaphandre")
    with pytest.raises(KeyError, match="unknown emulated node"):
        emulator.render("scaphandre", "nowhere")


def test_same_seed_and_clock_render_identical_pages(openb_nodes, clock) -> None:
    first, second = Emulator(openb_nodes, seed=4, clock=clock), Emulator(openb_nodes, seed=4,
                                                                           clock=clock)
    clock.advance(5)
    assert all(first.render(e) == second.render(e) for e in EXPORTERS)
    assert Emulator(openb_nodes, seed=5, clock=clock).render("node-exporter") != \
        first.render("node-exporter")


# --- HTTP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/node-exporter/metrics", "/kube-state-metrics/metrics",
                                  "/cadvisor/metrics", "/dcgm/metrics"])
def test_server_serves_each_exporter_as_text_format(served: EmulatorServer, path: str) -> None:
    answer = requests.get(served.url + path, timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == CONTENT_TYPE
    assert list(text_string_to_metric_families(answer.text))


def test_server_serves_scaphandre_per_node_and_404_for_unknown(served: EmulatorServer) -> None:
    node = served.emulator.nodes[0].name
    ok = requests.get(f"{served.url}/scaphandre/{node}/metrics", timeout=5)
    assert ok.status_code == 200 and "scaph_host_power_microwatts " in ok.text
    assert requests.get(f"{served.url}/scaphandre/nowhere/metrics", timeout=5).status_code == 404
    assert requests.get(f"{served.url}/metrics", timeout=5).status_code == 404


def test_scrape_targets_use_honor_labels_and_per_node_scaphandre_paths(
        served: EmulatorServer) -> None:
    targets = {t.job: t for t in served.scrape_targets()}
    host = served.url.removeprefix("http://")
    assert targets["node-exporter"].honor_labels and targets["kube-state-metrics"].honor_labels
    assert targets["node-exporter"].targets == (host,)
    configs = targets["scaphandre"].extra["static_configs"]
    assert [c["labels"]["node"] for c in configs] == [n.name for n in served.emulator.nodes]
    assert all(c["labels"]["__metrics_path__"] == f"/scaphandre/{c['labels']['node']}/metrics"
               for c in configs)
    with pytest.raises(ValueError, match="expected http://host:port"):
        served.emulator.scrape_targets("127.0.0.1:9")
