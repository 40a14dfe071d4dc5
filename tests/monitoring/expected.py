"""Ground truth for every (metric, level) of config/monitoring.yaml, from the emulated world.

Keys of the returned dicts are the answer's labels as sorted tuples. The tests are parametrized
over the shipped catalog, so a new metric without an entry here fails with a KeyError.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from statistics import mean
from typing import Any

from extender.demo.emulator import MIB, EmulatedPod, NodeReading
from tests.monitoring.world import APPS, PARTITION_NAMESPACE, World, quantile

Key = tuple[tuple[str, str], ...]
Values = dict[Key, float]


def k(**labels: str) -> Key:
    return tuple(sorted(labels.items()))


def readings(w: World) -> dict[str, NodeReading]:
    return {r.node: r for r in w.emulator.readings()}


def per_node(w: World, f: Callable[[NodeReading], float | None]) -> Values:
    out = {}
    for name, r in readings(w).items():
        value = f(r)
        if value is not None:
            out[k(node=name)] = value
    return out


def cluster(value: float) -> Values:
    return {(): value}


def pods(w: World) -> Iterable[tuple[EmulatedPod, str]]:
    return w.pods.values()


def grouped(w: World, level: str, f: Callable[[EmulatedPod, Any], float], *,
            per_container: bool = False, combine: str = "sum") -> Values:
    """Sum (or mean) of f over pods or containers, grouped by the level's labels."""
    acc: dict[Key, list[float]] = defaultdict(list)
    for pod, node in pods(w):
        items = pod.containers if per_container else [None]
        for c in items:
            labels = {"namespace": pod.namespace, "pod": pod.name, "node": node}
            if c is not None:
                labels["container"] = c.name
            keep = {"cluster": (), "node": ("node",), "namespace": ("namespace",),
                    "pod": ("namespace", "pod"),
                    "container": ("namespace", "pod", "container")}[level]
            acc[tuple(sorted((x, labels[x]) for x in keep))].append(f(pod, c))
    return {key: (sum(v) if combine == "sum" else mean(v)) for key, v in acc.items()}


def usage(w: World, pod: EmulatedPod, c: Any) -> float:
    cores = c.cpu_cores if c is not None else pod.cpu_cores
    return cores * w.factor(pod)


def working_set(w: World, pod: EmulatedPod, c: Any) -> float:
    parts = [c] if c is not None else list(pod.containers)
    return float(sum(int(x.memory_bytes * w.factor(pod)) for x in parts))


def requested_cpu(pod: EmulatedPod, c: Any) -> float:
    return c.cpu_cores if c is not None else pod.cpu_cores


def requested_memory(pod: EmulatedPod, c: Any) -> float:
    return float(c.memory_bytes if c is not None else pod.memory_bytes)


def ratio(a: Values, b: Values) -> Values:
    return {key: a[key] / b[key] for key in a if b.get(key)}


def by_level(w: World, level: str, f: Callable[[EmulatedPod, Any], float]) -> Values:
    return grouped(w, level, f, per_container=level == "container")


def busy_cores(r: NodeReading) -> float:
    return r.cpu_utilisation * r.cores


def gpus_by_pod(w: World) -> dict[Key, list[Any]]:
    out: dict[Key, list[Any]] = defaultdict(list)
    for r in readings(w).values():
        for g in r.gpus:
            if g.pods:
                namespace, pod, _ = g.pods[0]
                out[k(namespace=namespace, pod=pod)].append(g)
    return out


def process_power(w: World) -> dict[Key, float]:
    """Scaphandre's per-pod process power (W), as the emulator shares busy-core power out."""
    out = {}
    power = w.emulator.power
    rs = readings(w)
    for pod, node in pods(w):
        r = rs[node]
        busy_w = power.per_core_w * r.cores * r.cpu_utilisation
        share = pod.cpu_cores * w.factor(pod) / (r.cpu_demand_cores or 1.0)
        out[k(namespace=pod.namespace, pod=pod.name)] = round(busy_w * share * 1e6) / 1e6
    return out


def processes(w: World) -> Values:
    """Scaphandre's process series: pods' processes (pid 4000 + placement order on the node) and
    each node's kubelet (1% of busy-core power)."""
    out = process_power(w)
    result: Values = {}
    order: dict[str, int] = defaultdict(int)
    for pod, node in pods(w):
        pid = 4000 + order[node]
        order[node] += 1
        result[k(node=node, pid=str(pid), exe="python3", namespace=pod.namespace, pod=pod.name)] = \
            out[k(namespace=pod.namespace, pod=pod.name)]
    power = w.emulator.power
    for name, r in readings(w).items():
        busy_w = power.per_core_w * r.cores * r.cpu_utilisation
        result[k(node=name, pid="812", exe="kubelet")] = round(busy_w * 0.01 * 1e6) / 1e6
    return result


def pod_power(w: World) -> Values:
    out = dict(process_power(w))
    for key, gpus in gpus_by_pod(w).items():
        out[key] = out.get(key, 0.0) + sum(g.power_w for g in gpus)
    return out


def host_w(r: NodeReading) -> float:
    return round(r.host_power_w * 1e6) / 1e6


def gpu_util(gs: list[Any]) -> float:
    return mean(round(g.utilisation * 100) for g in gs) / 100


def available(r: NodeReading) -> float:
    return float(r.conditions["Ready"] == "true" and not r.unschedulable)


def app_values(f: Callable[[tuple[float, ...]], float]) -> tuple[Values, Values]:
    pod_level = {k(namespace="shop", pod=a.pod): f(a.per_bucket) for a in APPS}
    total = tuple(sum(x) for x in zip(*(a.per_bucket for a in APPS), strict=True))
    return pod_level, {k(namespace="shop"): f(total)}


def mean_latency(per_bucket: tuple[float, ...]) -> float:
    apps = [a for a in APPS if a.per_bucket == per_bucket]
    if apps:
        return apps[0].mean_s
    return sum(a.rate * a.mean_s for a in APPS) / sum(a.rate for a in APPS)


def pods_running(w: World, level: str) -> Values:
    if level == "node":
        counts = {k(node=n.name): 0.0 for n in w.nodes}
        for _, node in pods(w):
            counts[k(node=node)] += 1
        return counts
    if level == "namespace":
        return grouped(w, "namespace", lambda p, c: 1.0)
    return cluster(float(len(w.pods)))


def ready(w: World, level: str) -> Values:
    return grouped(w, level, lambda p, c: float(p.ready), combine="mean")


def sum_nodes(w: World, f: Callable[[NodeReading], float]) -> Values:
    return cluster(sum(f(r) for r in readings(w).values()))


def target_up(w: World, level: str, targets: list[dict[str, Any]]) -> Values:
    """From Prometheus' own target list: the test checks the aggregation, not the health."""
    up = [(t["labels"], float(t["health"] == "up")) for t in targets]
    if level == "cluster":
        return cluster(mean(v for _, v in up))
    keys = ("node",) if level == "node" else ("namespace", "pod")
    acc: dict[Key, list[float]] = defaultdict(list)
    for labels, v in up:
        if all(labels.get(x) for x in keys):
            acc[tuple(sorted((x, labels[x]) for x in keys))].append(v)
    return {key: min(v) for key, v in acc.items()}


def expected(w: World, metric: str, level: str, targets: list[dict[str, Any]]) -> Values:
    """The values the API must answer for `metric` at `level`, without a selector."""
    rs = readings(w)
    cpu_pods = lambda lvl: by_level(w, lvl, lambda p, c: usage(w, p, c))  # noqa: E731
    req_cpu = lambda lvl: by_level(w, lvl, requested_cpu)  # noqa: E731
    mem_pods = lambda lvl: by_level(w, lvl, lambda p, c: working_set(w, p, c))  # noqa: E731
    req_mem = lambda lvl: by_level(w, lvl, requested_memory)  # noqa: E731
    all_gpus = [g for r in rs.values() for g in r.gpus]
    table: dict[tuple[str, str], Callable[[], Values]] = {
        ("nodes_available", "cluster"): lambda: cluster(sum(available(r) for r in rs.values())),
        ("nodes_available", "node"): lambda: per_node(w, available),
        ("node_ready", "node"): lambda: per_node(w, lambda r: float(r.conditions["Ready"] == "true")),
        ("node_pressure", "node"): lambda: per_node(w, lambda r: float(any(
            r.conditions[c] == "true" for c in ("MemoryPressure", "DiskPressure", "PIDPressure")))),
        ("node_unschedulable", "node"): lambda: per_node(w, lambda r: float(r.unschedulable)),
        ("cpu_pressure", "node"): lambda: per_node(w, lambda r: r.cpu_pressure),
        ("memory_pressure", "node"): lambda: per_node(w, lambda r: r.memory_pressure),
        ("target_up", "cluster"): lambda: target_up(w, "cluster", targets),
        ("target_up", "node"): lambda: target_up(w, "node", targets),
        ("target_up", "pod"): lambda: target_up(w, "pod", targets),
        ("cpu_utilisation", "cluster"): lambda: cluster(
            sum(busy_cores(r) for r in rs.values()) / sum(r.cores for r in rs.values())),
        ("cpu_utilisation", "node"): lambda: per_node(w, lambda r: r.cpu_utilisation),
        ("cpu_usage_cores", "cluster"): lambda: sum_nodes(w, busy_cores),
        ("cpu_usage_cores", "node"): lambda: per_node(w, busy_cores),
        ("cpu_usage_cores", "namespace"): lambda: cpu_pods("namespace"),
        ("cpu_usage_cores", "pod"): lambda: cpu_pods("pod"),
        ("cpu_usage_cores", "container"): lambda: cpu_pods("container"),
        ("cpu_requested_cores", "cluster"): lambda: req_cpu("cluster"),
        ("cpu_requested_cores", "node"): lambda: req_cpu("node"),
        ("cpu_requested_cores", "namespace"): lambda: req_cpu("namespace"),
        ("cpu_requested_cores", "pod"): lambda: req_cpu("pod"),
        ("cpu_requested_cores", "container"): lambda: req_cpu("container"),
        ("cpu_limit_cores", "pod"): lambda: req_cpu("pod"),
        ("cpu_limit_cores", "container"): lambda: req_cpu("container"),
        ("memory_usage_bytes", "cluster"): lambda: sum_nodes(
            w, lambda r: r.memory_total_bytes - r.memory_available_bytes),
        ("memory_usage_bytes", "node"): lambda: per_node(
            w, lambda r: r.memory_total_bytes - r.memory_available_bytes),
        ("memory_usage_bytes", "namespace"): lambda: mem_pods("namespace"),
        ("memory_usage_bytes", "pod"): lambda: mem_pods("pod"),
        ("memory_usage_bytes", "container"): lambda: mem_pods("container"),
        ("memory_available_ratio", "cluster"): lambda: cluster(
            sum(r.memory_available_bytes for r in rs.values())
            / sum(r.memory_total_bytes for r in rs.values())),
        ("memory_available_ratio", "node"): lambda: per_node(
            w, lambda r: r.memory_available_bytes / r.memory_total_bytes),
        ("memory_available_bytes", "cluster"): lambda: sum_nodes(w, lambda r: r.memory_available_bytes),
        ("memory_available_bytes", "node"): lambda: per_node(w, lambda r: r.memory_available_bytes),
        ("memory_requested_bytes", "cluster"): lambda: req_mem("cluster"),
        ("memory_requested_bytes", "node"): lambda: req_mem("node"),
        ("memory_requested_bytes", "namespace"): lambda: req_mem("namespace"),
        ("memory_requested_bytes", "pod"): lambda: req_mem("pod"),
        ("memory_requested_bytes", "container"): lambda: req_mem("container"),
        ("memory_limit_bytes", "pod"): lambda: req_mem("pod"),
        ("memory_limit_bytes", "container"): lambda: req_mem("container"),
        ("network_receive_bytes", "cluster"): lambda: sum_nodes(w, lambda r: r.receive_bps),
        ("network_receive_bytes", "node"): lambda: per_node(w, lambda r: r.receive_bps),
        ("network_transmit_bytes", "cluster"): lambda: sum_nodes(w, lambda r: r.transmit_bps),
        ("network_transmit_bytes", "node"): lambda: per_node(w, lambda r: r.transmit_bps),
        ("network_receive_dropped", "cluster"): lambda: sum_nodes(w, lambda r: r.drop_pps),
        ("network_receive_dropped", "node"): lambda: per_node(w, lambda r: r.drop_pps),
        ("disk_throughput", "cluster"): lambda: sum_nodes(
            w, lambda r: r.disk_read_bps + r.disk_write_bps),
        ("disk_throughput", "node"): lambda: per_node(w, lambda r: r.disk_read_bps + r.disk_write_bps),
        ("disk_io_now", "node"): lambda: per_node(w, lambda r: r.disk_io_now),
        ("filesystem_utilisation", "cluster"): lambda: cluster(
            1 - sum(r.filesystem_avail_bytes for r in rs.values())
            / sum(r.filesystem_size_bytes for r in rs.values())),
        ("filesystem_utilisation", "node"): lambda: per_node(
            w, lambda r: 1 - r.filesystem_avail_bytes / r.filesystem_size_bytes),
        ("filesystem_available_bytes", "cluster"): lambda: sum_nodes(w, lambda r: r.filesystem_avail_bytes),
        ("filesystem_available_bytes", "node"): lambda: per_node(w, lambda r: r.filesystem_avail_bytes),
        ("pods_running", "cluster"): lambda: pods_running(w, "cluster"),
        ("pods_running", "node"): lambda: pods_running(w, "node"),
        ("pods_running", "namespace"): lambda: pods_running(w, "namespace"),
        ("pod_ready", "cluster"): lambda: ready(w, "cluster"),
        ("pod_ready", "namespace"): lambda: ready(w, "namespace"),
        ("pod_ready", "pod"): lambda: ready(w, "pod"),
        ("response_time_seconds", "pod"): lambda: app_values(lambda b: quantile(b, 0.99))[0],
        ("response_time_seconds", "namespace"): lambda: app_values(lambda b: quantile(b, 0.99))[1],
        ("response_time_mean_seconds", "pod"): lambda: app_values(mean_latency)[0],
        ("response_time_mean_seconds", "namespace"): lambda: app_values(mean_latency)[1],
        ("deadline_miss_ratio", "node"): lambda: {
            k(node=node): w.miss_ratio[pod] for pod, node in w.workers()},
        ("deadline_miss_ratio", "pod"): lambda: {
            k(namespace=PARTITION_NAMESPACE, pod=pod): w.miss_ratio[pod] for pod, _ in w.workers()},
        ("gpu_utilisation", "cluster"): lambda: cluster(gpu_util(all_gpus)),
        ("gpu_utilisation", "node"): lambda: per_node(
            w, lambda r: gpu_util(list(r.gpus)) if r.gpus else None),
        ("gpu_utilisation", "pod"): lambda: {key: gpu_util(gs) for key, gs in gpus_by_pod(w).items()},
        ("gpu_memory_used_bytes", "cluster"): lambda: cluster(sum(g.fb_used_mib for g in all_gpus) * MIB),
        ("gpu_memory_used_bytes", "node"): lambda: per_node(
            w, lambda r: sum(g.fb_used_mib for g in r.gpus) * MIB if r.gpus else None),
        ("gpu_memory_used_bytes", "pod"): lambda: {
            key: sum(g.fb_used_mib for g in gs) * MIB for key, gs in gpus_by_pod(w).items()},
        ("gpu_power_watts", "cluster"): lambda: cluster(sum(g.power_w for g in all_gpus)),
        ("gpu_power_watts", "node"): lambda: per_node(
            w, lambda r: sum(g.power_w for g in r.gpus) if r.gpus else None),
        ("gpu_power_watts", "pod"): lambda: {
            key: sum(g.power_w for g in gs) for key, gs in gpus_by_pod(w).items()},
        ("power_watts", "cluster"): lambda: sum_nodes(
            w, lambda r: host_w(r) + sum(g.power_w for g in r.gpus)),
        ("power_watts", "node"): lambda: per_node(w, lambda r: host_w(r) + sum(g.power_w for g in r.gpus)),
        ("power_watts", "pod"): lambda: pod_power(w),
        ("power_watts", "process"): lambda: processes(w),
        ("host_power_watts", "cluster"): lambda: sum_nodes(w, host_w),
        ("host_power_watts", "node"): lambda: per_node(w, host_w),
        ("energy_per_cpu_second", "cluster"): lambda: cluster(
            sum(host_w(r) for r in rs.values()) / sum(busy_cores(r) for r in rs.values())),
        ("energy_per_cpu_second", "node"): lambda: per_node(w, lambda r: host_w(r) / busy_cores(r)),
        ("energy_per_cpu_second", "pod"): lambda: ratio(process_power(w), cpu_pods("pod")),
        ("cpu_request_utilisation", "cluster"): lambda: ratio(cpu_pods("cluster"), req_cpu("cluster")),
        ("cpu_request_utilisation", "node"): lambda: ratio(cpu_pods("node"), req_cpu("node")),
        ("cpu_request_utilisation", "namespace"): lambda: ratio(cpu_pods("namespace"), req_cpu("namespace")),
        ("cpu_request_utilisation", "pod"): lambda: ratio(cpu_pods("pod"), req_cpu("pod")),
        ("cpu_request_utilisation", "container"): lambda: ratio(cpu_pods("container"), req_cpu("container")),
        ("memory_request_utilisation", "cluster"): lambda: ratio(mem_pods("cluster"), req_mem("cluster")),
        ("memory_request_utilisation", "node"): lambda: ratio(mem_pods("node"), req_mem("node")),
        ("memory_request_utilisation", "namespace"): lambda: ratio(
            mem_pods("namespace"), req_mem("namespace")),
        ("memory_request_utilisation", "pod"): lambda: ratio(mem_pods("pod"), req_mem("pod")),
        ("memory_request_utilisation", "container"): lambda: ratio(
            mem_pods("container"), req_mem("container")),
    }
    return table[(metric, level)]()
