"""The emulated estate the monitoring tests query: nodes, the pods placed on them, and the series
the emulator does not serve.

The emulator runs without background pods, so every pod, and hence every pod-, container- and
namespace-level value, is known here. `Extras` serves what the emulator lacks:
- `kube_pod_labels` (kube-state-metrics with a label allowlist) and `container_spec_memory_limit_bytes`
  (cAdvisor), for the pods placed here (limits equal requests, as in the emulator),
- `deadline_miss_ratio{node, worker}` as the Pushgateway exposes the deadline sidecars' pushes,
- an application latency histogram per web pod (`/app/<pod>/metrics`), whose bucket counters grow at
  fixed rates, so quantiles and means are known.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from extender.demo.emulator import GIB, MIB, EmulatedContainer, EmulatedNode, EmulatedPod, Emulator

PARTITION_NAMESPACE = "extract"
BUCKETS = (0.05, 0.1, 0.25, 0.5)
"""Histogram upper bounds (plus +Inf)."""


@dataclass(frozen=True)
class App:
    """A web pod's request rate per bucket (requests/s falling in each bucket, not cumulative)."""

    pod: str
    per_bucket: tuple[float, float, float, float, float]
    mean_s: float

    @property
    def rate(self) -> float:
        return sum(self.per_bucket)


APPS = (App("web-0", (50.0, 40.0, 10.0, 0.0, 0.0), 0.06),
        App("web-1", (10.0, 10.0, 20.0, 8.0, 2.0), 0.2))


@dataclass
class World:
    emulator: Emulator
    nodes: list[EmulatedNode]
    pods: dict[str, tuple[EmulatedPod, str]] = field(default_factory=dict)
    """`namespace/name` -> (pod, node)."""
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    """`namespace/name` -> pod labels (served as kube_pod_labels)."""
    miss_ratio: dict[str, float] = field(default_factory=dict)
    """Worker pod -> deadline_miss_ratio."""

    def place(self, pod: EmulatedPod, node: str, labels: dict[str, str] | None = None) -> None:
        self.emulator.place(pod, node)
        key = f"{pod.namespace}/{pod.name}"
        self.pods[key] = (pod, node)
        self.labels[key] = labels or {}

    def workers(self) -> list[tuple[str, str]]:
        """(worker pod, node) of the partition."""
        return [(pod.name, node) for pod, node in self.pods.values()
                if pod.namespace == PARTITION_NAMESPACE]

    def factor(self, pod: EmulatedPod) -> float:
        return self.emulator.usage_factor if pod.usage_factor is None else pod.usage_factor


def build_world(nodes: list[EmulatedNode]) -> World:
    """Six nodes: pods on two CPU nodes and two GPU nodes, one node cordoned, one under memory
    pressure, one CPU-overcommitted (no pods there, so pod CPU use is never throttled)."""
    emulator = Emulator(nodes, seed=5, background_pods=False)
    world = World(emulator, nodes)
    cpu = [n for n in nodes if not n.gpus]
    gpu = [n for n in nodes if n.gpus]
    a, b, busy = cpu[0].name, cpu[1].name, cpu[2].name
    g1, g2 = gpu[0].name, gpu[1].name
    world.place(EmulatedPod("shop", "web-0", (EmulatedContainer("main", 1.0, 2 * GIB),
                                      EmulatedContainer("proxy", 0.2, 256 * MIB)), usage_factor=0.5),
                a, {"app": "web", "tier": "front"})
    world.place(EmulatedPod.single("shop", "web-1", cpu_cores=2.0, memory_bytes=4 * GIB, usage_factor=0.8),
                b, {"app": "web"})
    world.place(EmulatedPod.single("batch", "train-0", cpu_cores=4.0, memory_bytes=16 * GIB, gpus=1.0,
                           usage_factor=0.9), g1, {"app": "train"})
    world.place(EmulatedPod("batch", "infer-0", (EmulatedContainer("main", 2.0, 8 * GIB, 0.5),),
                    usage_factor=0.6, ready=False), g2, {"app": "infer"})
    for node in (a, g1):
        world.place(EmulatedPod.single(PARTITION_NAMESPACE, f"partition-worker-{node}", cpu_cores=1.0,
                               memory_bytes=GIB, usage_factor=0.5), node,
                    {"extract.io/partition": "default"})
    world.miss_ratio = {f"partition-worker-{a}": 0.25, f"partition-worker-{g1}": 0.5}
    emulator.set_background(busy, cpu=0.95)
    emulator.set_background(a, drop_pps=10.0)
    emulator.set_condition(b, "MemoryPressure", "true")
    emulator.cordon(gpu[-1].name)
    return world


class Extras:
    """Serves the series the emulator lacks (see the module docstring) on 127.0.0.1."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.started = time.monotonic()
        handler = self._handler()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Extras:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def page(self, path: str) -> str | None:
        if path == "/extras/metrics":
            return "".join(self._extras())
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "app":
            app = next((a for a in APPS if a.pod == parts[1]), None)
            return "".join(self._histogram(app)) if app else None
        return None

    def _extras(self) -> Iterator[str]:
        yield "# TYPE kube_pod_labels gauge\n"
        for key, labels in self.world.labels.items():
            namespace, pod = key.split("/")
            extra = "".join(f',label_{k.replace(".", "_").replace("/", "_").replace("-", "_")}'
                            f'="{v}"' for k, v in labels.items())
            yield f'kube_pod_labels{{namespace="{namespace}",pod="{pod}"{extra}}} 1\n'
        yield "# TYPE container_spec_memory_limit_bytes gauge\n"
        for pod, node in self.world.pods.values():
            for c in pod.containers:
                yield (f'container_spec_memory_limit_bytes{{namespace="{pod.namespace}",'
                       f'pod="{pod.name}",container="{c.name}",node="{node}"}} {c.memory_bytes}\n')
        yield "# TYPE deadline_miss_ratio gauge\n"
        for worker, node in self.world.workers():
            yield (f'deadline_miss_ratio{{job="extract-deadline",node="{node}",worker="{worker}"}} '
                   f'{self.world.miss_ratio[worker]}\n')
        # As the sidecar pushes it: the ratio counts only while the window holds finished tasks.
        yield "# TYPE deadline_window_tasks gauge\n"
        for worker, node in self.world.workers():
            yield (f'deadline_window_tasks{{job="extract-deadline",node="{node}",worker="{worker}"}}'
                   ' 20\n')
        # The Pushgateway's own per-group gauge: the time of the group's last push.
        yield "# TYPE push_time_seconds gauge\n"
        for worker, node in self.world.workers():
            yield (f'push_time_seconds{{job="extract-deadline",node="{node}",worker="{worker}"}} '
                   f'{time.time()}\n')

    def _histogram(self, app: App) -> Iterator[str]:
        elapsed = time.monotonic() - self.started + 100.0
        name = "http_request_duration_seconds"
        yield f"# TYPE {name} histogram\n"
        total = 0.0
        for bound, rate in zip((*BUCKETS, "+Inf"), app.per_bucket, strict=True):
            total += rate
            yield f'{name}_bucket{{le="{bound}"}} {total * elapsed:.3f}\n'
        yield f"{name}_sum {app.rate * app.mean_s * elapsed:.3f}\n"
        yield f"{name}_count {app.rate * elapsed:.3f}\n"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        extras = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = extras.page(self.path.split("?")[0])
                data = (body or "not found\n").encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Scrapes every second would flood stderr."""

        return Handler


def quantile(per_bucket: tuple[float, ...], q: float) -> float:
    """histogram_quantile's linear interpolation over BUCKETS for these per-bucket rates."""
    total = sum(per_bucket)
    rank = q * total
    cumulative, lower = 0.0, 0.0
    for bound, rate in zip(BUCKETS, per_bucket, strict=False):
        if cumulative + rate >= rank and rate > 0:
            return lower + (bound - lower) * (rank - cumulative) / rate
        cumulative += rate
        lower = bound
    return BUCKETS[-1]  # rank in +Inf: Prometheus returns the highest finite bound
