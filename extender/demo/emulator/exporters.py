"""The exporters' pages, rendered from the load model in the Prometheus text format (0.0.4).

Series are shaped like the real exporters', including their traps, on purpose: node-exporter
identifies a node only by `instance="<internal IP>:9100"` (the IP is a fake 10.20.x.y that is never
contacted, so consumers must map it through `kube_node_info{internal_ip}`); dcgm-exporter names the
node `Hostname` on half the GPU nodes and `hostname` on the other half (its 2026 rename);
Scaphandre's host power carries no node label (the node comes from target labels); cAdvisor has a
pod-level series with `container=""` that double-counts a naive `sum by (pod)`; Kepler (>= 0.10)
names the node in `node_name` only and reports nested RAPL zones (`package` contains `core` and
`uncore`, `psys` contains `package` and `dram`), so a sum over zones double-counts.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Collection, Iterable
from urllib.parse import urlsplit

from extender.demo.emulator.fleet import MIB
from extender.demo.emulator.model import (
    CPU_MODES,
    NODE_EXPORTER_PORT,
    STATUSES,
    Emulator,
    NodeState,
    container_counter,
)
from extender.demo.emulator.workload import EmulatedPod
from extender.demo.launcher import ScrapeTarget

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DISK_DEVICE = "nvme0n1"
NET_DEVICES = ("eth0", "lo")
DCGM_DRIVER = "550.90.07"
DCGM_JOB_LABELS = {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-emulated",
                   "container": "nvidia-dcgm-exporter"}
"""Target labels of the dcgm job, as its Helm chart's ServiceMonitor sets them: scraped without
honor_labels, a GPU's workload labels therefore arrive as `exported_pod`, `exported_namespace`."""

KEPLER_DRAM_SHARE = 0.1
"""Kepler's `dram` zone as a share of its `package` zone. The package zone is the emulated host
power (Scaphandre's, whose emulated host has no DRAM domain), so both exporters rank alike."""
KEPLER_PACKAGE_SPLIT = {"core": 0.8, "uncore": 0.12}
"""Shares of the package zone in its sub-zones (the remainder is the package's own logic)."""
KEPLER_ZONE_PATHS = {"package": "/sys/class/powercap/intel-rapl:0",
                     "core": "/sys/class/powercap/intel-rapl:0:0",
                     "uncore": "/sys/class/powercap/intel-rapl:0:1",
                     "dram": "/sys/class/powercap/intel-rapl:0:2",
                     "psys": "/sys/class/powercap/intel-rapl:1"}

_Sample = tuple[dict[str, str], float]
_Family = tuple[str, str, str, list[_Sample] | str]
"""Name, type, help and the samples (or their lines, already rendered)."""

_NODE_GAUGES = {
    "node_load1": "1m load average.",
    "node_memory_MemAvailable_bytes": "Memory information field MemAvailable_bytes.",
    "node_memory_MemTotal_bytes": "Memory information field MemTotal_bytes.",
    "node_disk_io_now": "The number of I/Os currently in progress.",
    "node_filesystem_avail_bytes": "Filesystem space available to non-root users in bytes.",
    "node_filesystem_size_bytes": "Filesystem size in bytes.",
    "node_uname_info": "Labeled system information as provided by the uname system call.",
}
_NODE_COUNTERS = {
    "node_network_receive_bytes_total": "Network device statistic receive_bytes.",
    "node_network_transmit_bytes_total": "Network device statistic transmit_bytes.",
    "node_network_receive_drop_total": "Network device statistic receive_drop.",
    "node_disk_read_bytes_total": "The total number of bytes read successfully.",
    "node_disk_written_bytes_total": "The total number of bytes written successfully.",
    "node_pressure_cpu_waiting_seconds_total": "Total time in seconds that processes have "
    "waited for CPU time",
    "node_pressure_memory_waiting_seconds_total": "Total time in seconds that processes have "
    "waited for memory",
}
_DCGM = {
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
}


def render(emulator: Emulator, exporter: str, node: str | None = None) -> str:
    """One exporter's current page in the Prometheus text format (0.0.4).

    `exporter` is node-exporter, kube-state-metrics, cadvisor, dcgm, scaphandre (which needs
    `node`) or kepler (one node's page with `node`, else every node's). ValueError for an
    unknown exporter, KeyError for an unknown node.
    """
    with emulator.lock:
        if exporter == "kepler":  # a DaemonSet: one node's page, or every node's (`node` None)
            states = [emulator._state(node)] if node is not None else list(
                emulator.states.values())
            emulator.advance(states)
            return _render(kepler(emulator, states))
        if exporter == "scaphandre":
            if node is None:
                raise ValueError("scaphandre is rendered per node")
            state = emulator._state(node)
            emulator.advance([state])
            return _render(scaphandre(emulator, state))
        if exporter in ("node-exporter", "cadvisor"):  # the pages with counters
            emulator.advance(emulator.states.values())
        families = {
            "node-exporter": node_exporter,
            "kube-state-metrics": kube_state_metrics,
            "cadvisor": cadvisor,
            "dcgm": dcgm,
        }
        if exporter not in families:
            raise ValueError(f"unknown exporter {exporter!r}")
        return _render(families[exporter](emulator))

def scrape_targets(emulator: Emulator, url: str, *, job_prefix: str = "",
                   scaphandre_nodes: Collection[str] | None = None,
                   kepler_nodes: Collection[str] = ()) -> list[ScrapeTarget]:
    """Scrape jobs for a local Prometheus reading this emulator served at `url`.

    node-exporter, kube-state-metrics and cadvisor are scraped with honor_labels (their node
    labels must survive); dcgm as its Helm chart does (target labels namespace/pod/container,
    so workload labels become exported_*); Scaphandre with one target per node whose target
    labels carry `node` and the per-node `__metrics_path__` (its series have no host label),
    on `scaphandre_nodes` (default: every node); Kepler, one target per node of `kepler_nodes`
    (default: none), as its DaemonSet is scraped (its series name the node in `node_name`).
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.netloc:
        raise ValueError(f"emulator url: expected http://host:port, got {url!r}")
    host = parts.netloc
    base = parts.path.rstrip("/")
    scaph = [{"targets": [host],
              "labels": {"node": name, "__metrics_path__": f"{base}/scaphandre/{name}/metrics"}}
             for name in emulator.states
             if scaphandre_nodes is None or name in scaphandre_nodes]
    kepler_pages = [{"targets": [host],
                     "labels": {"__metrics_path__": f"{base}/kepler/{name}/metrics"}}
                    for name in emulator.states if name in kepler_nodes]
    return [
        ScrapeTarget(f"{job_prefix}node-exporter", (host,), honor_labels=True,
                     metrics_path=f"{base}/node-exporter/metrics"),
        ScrapeTarget(f"{job_prefix}kube-state-metrics", (host,), honor_labels=True,
                     metrics_path=f"{base}/kube-state-metrics/metrics"),
        ScrapeTarget(f"{job_prefix}cadvisor", (host,), honor_labels=True,
                     metrics_path=f"{base}/cadvisor/metrics"),
        ScrapeTarget(f"{job_prefix}dcgm-exporter", (host,), labels=dict(DCGM_JOB_LABELS),
                     metrics_path=f"{base}/dcgm/metrics"),
        ScrapeTarget(f"{job_prefix}scaphandre", (), extra={"static_configs": scaph}),
        ScrapeTarget(f"{job_prefix}kepler", (), extra={"static_configs": kepler_pages}),
    ]


def node_exporter(emulator: Emulator) -> list[_Family]:
    cpu: list[str] = []
    gauges: dict[str, list[_Sample]] = {name: [] for name in _NODE_GAUGES}
    counters: dict[str, list[_Sample]] = {name: [] for name in _NODE_COUNTERS}
    for state in emulator.states.values():
        r = emulator.state_reading(state)
        c = state.counters
        inst = {"instance": f"{r.ip}:{NODE_EXPORTER_PORT}"}
        per_cpu = [c[f"cpu_{mode}"] / r.cores for mode in CPU_MODES]
        values = [round(seconds + offset, 2)
                  for offset in state.cpu_offsets for seconds in per_cpu]
        cpu.append("".join(map("{}{}\n".format, state.cpu_prefixes, values)))
        gauges["node_load1"].append((inst, r.load1))
        gauges["node_memory_MemAvailable_bytes"].append((inst, r.memory_available_bytes))
        gauges["node_memory_MemTotal_bytes"].append((inst, r.memory_total_bytes))
        gauges["node_disk_io_now"].append(({**inst, "device": DISK_DEVICE}, r.disk_io_now))
        for mount, device, fstype, size, avail in (
            ("/", f"/dev/{DISK_DEVICE}p1", "ext4", r.filesystem_size_bytes,
             r.filesystem_avail_bytes),
            ("/run", "tmpfs", "tmpfs", r.memory_total_bytes // 10,
             r.memory_total_bytes // 10 - 4 * MIB),
        ):
            labels = {**inst, "device": device, "fstype": fstype, "mountpoint": mount}
            gauges["node_filesystem_avail_bytes"].append((labels, avail))
            gauges["node_filesystem_size_bytes"].append((labels, size))
        for dev in NET_DEVICES:
            labels = {**inst, "device": dev}
            for metric in ("node_network_receive_bytes_total",
                           "node_network_transmit_bytes_total",
                           "node_network_receive_drop_total"):
                counters[metric].append((labels, round(c[f"{metric}:{dev}"])))
        for metric in ("node_disk_read_bytes_total", "node_disk_written_bytes_total"):
            counters[metric].append(({**inst, "device": DISK_DEVICE}, round(c[metric])))
        for metric in ("node_pressure_cpu_waiting_seconds_total",
                       "node_pressure_memory_waiting_seconds_total"):
            counters[metric].append((inst, round(c[metric], 3)))
        gauges["node_uname_info"].append(({**inst, "nodename": r.node, "machine": "x86_64",
                                           "release": "6.8.0-49-generic", "sysname": "Linux"},
                                          1))
    families: list[_Family] = [("node_cpu_seconds_total", "counter",
                                "Seconds the CPUs spent in each mode.", "".join(cpu))]
    families += [(n, "gauge", h, gauges[n]) for n, h in _NODE_GAUGES.items()]
    families += [(n, "counter", h, counters[n]) for n, h in _NODE_COUNTERS.items()]
    return families

def kube_state_metrics(emulator: Emulator) -> list[_Family]:
    info: list[_Sample] = []
    cond: list[_Sample] = []
    unsched: list[_Sample] = []
    alloc: list[_Sample] = []
    cap: list[_Sample] = []
    pod_info: list[_Sample] = []
    owners: list[_Sample] = []
    requests: list[_Sample] = []
    ready: list[_Sample] = []
    phase: list[_Sample] = []
    for state in emulator.states.values():
        n = state.node
        info.append(({"node": n.name, "internal_ip": n.ip, "kernel_version": "6.8.0-49-generic",
                      "os_image": "Ubuntu 24.04.1 LTS", "container_runtime_version":
                      "containerd://1.7.22", "kubelet_version": "v1.35.0",
                      "kubeproxy_version": "v1.35.0", "provider_id": f"emulated://{n.name}",
                      "pod_cidr": "",
                      "system_uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, n.name))},
                     1))
        for condition, current in state.conditions.items():
            for status in STATUSES:
                cond.append(({"node": n.name, "condition": condition, "status": status},
                             int(status == current)))
        unsched.append(({"node": n.name}, int(state.unschedulable)))
        resources = [("cpu", "core", n.cpu_milli / 1000), ("memory", "byte", n.memory_bytes),
                     ("pods", "integer", 110),
                     ("ephemeral_storage", "byte", state.fs_size_bytes)]
        if n.gpus:
            resources.append(("nvidia_com_gpu", "integer", n.gpus))
        for resource, unit, value in resources:
            labels = {"node": n.name, "resource": resource, "unit": unit}
            alloc.append((labels, value))
            cap.append((labels, value))
        for pod in state.pods.values():
            base = {"namespace": pod.namespace, "pod": pod.name, "uid": _pod_uid(pod)}
            kind, owner = pod.owner
            pod_info.append(({**base, "host_ip": n.ip, "pod_ip": _pod_ip(pod), "node": n.name,
                              "created_by_kind": kind, "created_by_name": owner,
                              "priority_class": "", "host_network": "false"}, 1))
            owners.append(({**base, "owner_kind": kind, "owner_name": owner,
                            "owner_is_controller": "true"}, 1))
            for container in pod.containers:
                labels = {**base, "container": container.name, "node": n.name}
                requests.append(({**labels, "resource": "cpu", "unit": "core"},
                                 container.cpu_cores))
                requests.append(({**labels, "resource": "memory", "unit": "byte"},
                                 container.memory_bytes))
                if container.gpus:
                    requests.append(({**labels, "resource": "nvidia_com_gpu",
                                      "unit": "integer"}, math.ceil(container.gpus)))
            current = "true" if pod.ready else "false"
            for status in STATUSES:
                ready.append(({**base, "condition": status}, int(status == current)))
            for name in ("Pending", "Succeeded", "Failed", "Unknown", "Running"):
                phase.append(({**base, "phase": name}, int(name == "Running")))
    return [
        ("kube_node_info", "gauge", "Information about a cluster node.", info),
        ("kube_node_status_condition", "gauge", "The condition of a cluster node.", cond),
        ("kube_node_spec_unschedulable", "gauge",
         "Whether a node can schedule new pods.", unsched),
        ("kube_node_status_allocatable", "gauge",
         "The allocatable for different resources of a node that are available for "
         "scheduling.", alloc),
        ("kube_node_status_capacity", "gauge",
         "The capacity for different resources of a node.", cap),
        ("kube_pod_info", "gauge", "Information about pod.", pod_info),
        ("kube_pod_owner", "gauge", "Information about the Pod's owner.", owners),
        ("kube_pod_container_resource_requests", "gauge",
         "The number of requested request resource by a container.", requests),
        ("kube_pod_status_ready", "gauge", "Describes whether the pod is ready to serve "
         "requests.", ready),
        ("kube_pod_status_phase", "gauge", "The pods current phase.", phase),
    ]

def cadvisor(emulator: Emulator) -> list[_Family]:
    usage: list[_Sample] = []
    working_set: list[_Sample] = []
    quota: list[_Sample] = []
    period: list[_Sample] = []
    for state in emulator.states.values():
        r = emulator.state_reading(state)
        for pod in state.pods.values():
            base = {"namespace": pod.namespace, "pod": pod.name, "node": r.node}
            pod_cpu = 0.0
            pod_memory = 0
            for c in pod.containers:
                labels = {**base, "container": c.name,
                          "image": "registry.invalid/emulated:1",
                          "id": f"/kubepods/pod{_pod_uid(pod)}/{c.name}",
                          "name": f"{c.name}-{pod.name}"}
                key = container_counter((pod.namespace, pod.name, c.name))
                cpu_s = state.counters.get(key, 0.0)
                memory = int(c.memory_bytes * emulator.usage_of(pod))
                pod_cpu += cpu_s
                pod_memory += memory
                usage.append((labels, round(cpu_s, 3)))
                working_set.append((labels, memory))
                quota.append((labels, round(c.cpu_cores * 100_000)))
                period.append((labels, 100_000))
            # The pod cgroup itself: container="" (a naive sum by (pod) counts it twice).
            pod_labels = {**base, "container": "", "image": "", "name": "",
                          "id": f"/kubepods/pod{_pod_uid(pod)}"}
            usage.append((pod_labels, round(pod_cpu, 3)))
            working_set.append((pod_labels, pod_memory))
    return [
        ("container_cpu_usage_seconds_total", "counter",
         "Cumulative cpu time consumed in seconds.", usage),
        ("container_memory_working_set_bytes", "gauge",
         "Current working set in bytes.", working_set),
        ("container_spec_cpu_quota", "gauge", "CPU quota of the container.", quota),
        ("container_spec_cpu_period", "gauge", "CPU period of the container.", period),
    ]

def dcgm(emulator: Emulator) -> list[_Family]:
    series: dict[str, list[_Sample]] = {name: [] for name in _DCGM}
    for state in emulator.states.values():
        if not state.node.gpus:
            continue
        r = emulator.state_reading(state)
        for g in r.gpus:
            labels = {"gpu": str(g.index), "UUID": g.uuid, "pci_bus_id":
                      f"00000000:{0x17 + g.index:02X}:00.0", "device": f"nvidia{g.index}",
                      "modelName": state.node.gpu.model_name,
                      state.dcgm_node_label: r.node, "DCGM_FI_DRIVER_VERSION": DCGM_DRIVER}
            if g.pods:
                namespace, pod, container = g.pods[0]
                labels.update(namespace=namespace, pod=pod, container=container)
            series["DCGM_FI_DEV_GPU_UTIL"].append((labels, round(g.utilisation * 100)))
            series["DCGM_FI_DEV_FB_USED"].append((labels, g.fb_used_mib))
            series["DCGM_FI_DEV_FB_FREE"].append((labels, g.fb_free_mib))
            series["DCGM_FI_DEV_POWER_USAGE"].append((labels, g.power_w))
            series["DCGM_FI_DEV_GPU_TEMP"].append((labels, round(g.temperature_c)))
    return [(name, "gauge", help_text, series[name]) for name, help_text in _DCGM.items()]


def scaphandre(emulator: Emulator, state: NodeState) -> list[_Family]:
    r = emulator.state_reading(state)
    power_uw = round(r.host_power_w * 1e6)
    # Processes share the busy-core power by their CPU use; idle power belongs to nobody.
    busy_w = emulator.power.per_core_w * r.cores * r.cpu_utilisation
    demand = r.cpu_demand_cores or 1.0
    processes: list[_Sample] = []
    for pid, pod in enumerate(state.pods.values(), start=4000):
        share = pod.cpu_cores * emulator.usage_of(pod) / demand
        processes.append(({"exe": "python3", "pid": str(pid),
                           "cmdline": f"python3 /app/{pod.name}.py",
                           "container_scheduler": "kubernetes",
                           "kubernetes_pod_name": pod.name,
                           "kubernetes_pod_namespace": pod.namespace},
                          round(busy_w * share * 1e6)))
    processes.append(({"exe": "kubelet", "pid": "812", "cmdline": "/usr/bin/kubelet"},
                      round(busy_w * 0.01 * 1e6)))
    return [
        ("scaph_host_power_microwatts", "gauge",
         "Power measurement on the whole host, in microwatts", [({}, power_uw)]),
        ("scaph_host_energy_microjoules", "counter",
         "Energy measurement for the whole host, as extracted from the sensor, in "
         "microjoules.", [({}, round(state.counters["energy_uj"]))]),
        ("scaph_process_power_consumption_microwatts", "gauge",
         "Power consumption due to the process, measured on at the topology level, in "
         "microwatts", processes),
    ]


def kepler_zones(host_power_w: float) -> dict[str, float]:
    """Kepler's `kepler_node_cpu_watts` per zone for a host whose CPU packages draw
    `host_power_w` (the emulated Scaphandre host power). Nested, as RAPL's: package = core +
    uncore + the rest, dram beside it, psys = package + dram."""
    dram = host_power_w * KEPLER_DRAM_SHARE
    zones = {"package": host_power_w, "dram": dram, "psys": host_power_w + dram}
    zones.update({zone: host_power_w * share for zone, share in KEPLER_PACKAGE_SPLIT.items()})
    return zones


def kepler(emulator: Emulator, states: Iterable[NodeState]) -> list[_Family]:
    cpu: list[_Sample] = []
    gpu: list[_Sample] = []
    for state in states:
        r = emulator.state_reading(state)
        for zone, watts in kepler_zones(r.host_power_w).items():
            cpu.append(({"zone": zone, "path": KEPLER_ZONE_PATHS[zone], "node_name": r.node},
                        round(watts, 3)))
        for g in r.gpus:
            gpu.append(({"gpu": str(g.index), "gpu_uuid": g.uuid,
                         "gpu_name": state.node.gpu.model_name, "node_name": r.node},
                        g.power_w))
    return [
        ("kepler_node_cpu_watts", "gauge", "Power consumption of cpu at node level in watts",
         cpu),
        ("kepler_node_gpu_watts", "gauge", "Power consumption of gpu at node level in watts",
         gpu),
    ]


def _pod_uid(pod: EmulatedPod) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{pod.namespace}.{pod.name}"))


def _pod_ip(pod: EmulatedPod) -> str:
    digest = uuid.uuid5(uuid.NAMESPACE_DNS, f"{pod.namespace}.{pod.name}").int
    return f"10.244.{digest % 250}.{digest // 250 % 250 + 1}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _render(families: Iterable[_Family]) -> str:
    out: list[str] = []
    for name, kind, help_text, samples in families:
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        if isinstance(samples, str):
            out.append(samples)
            continue
        for labels, value in samples:
            if labels:
                body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{body}}} {value}\n")
            else:
                out.append(f"{name} {value}\n")
    return "".join(out)
