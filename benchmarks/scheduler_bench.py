"""A real kube-scheduler's throughput with the extender, pod informer on vs off, at 500 nodes.

A real etcd + kube-apiserver (tests/controlplane.py) holds `--nodes` Nodes; an emulated metrics
estate for the same nodes is scraped by a real Prometheus; `extender serve` (gunicorn) answers
filter and prioritize (`nodeCacheCapable: true`). For each configuration in turn, a fresh
kube-scheduler with its own schedulerName gets `--pods` pods created at once, and the time from
the first creation until every pod is bound gives pods/s:

- `no extender`: the same scheduler profile without `extenders` (the baseline);
- `extender, informer off` and `extender, informer on` (every bound pod counted by the informer).

    python -m benchmarks.scheduler_bench [--nodes 500 --pods 300]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import CoreV1Api

from benchmarks.results import markdown_table, write_section
from extender.demo import launcher
from extender.demo.emulator import EmulatedNode, Emulator, EmulatorServer, node_ip
from tests.controlplane import ControlPlane, create_node, find_binaries, wait_for
from tests.extenders import extender_config, start_extenders

CONFIGS = ("no extender", "extender, informer off", "extender, informer on")


def pod_body(name: str, scheduler: str, label: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {
        "schedulerName": scheduler, "nodeSelector": {"pool": label},
        "containers": [{"name": "c", "image": "busybox", "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"}}}]}}


def one_round(plane: ControlPlane, core: CoreV1Api, config: str, label: str, round_: int,
              pods: int, prometheus_url: str, workdir: Path) -> float:
    """Pods/s of one configuration on the nodes labelled pool=`label`."""
    namespace = f"{label}-{round_}-c{CONFIGS.index(config)}"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "default"}})
    scheduler_name = f"bench-{namespace}"
    extenders = []
    profile: dict[str, Any] = {"profiles": [{"schedulerName": scheduler_name}]}
    if config != "no extender":
        workdir.mkdir(parents=True, exist_ok=True)
        path = extender_config(workdir, plane, prometheus_url, namespace)
        if config.endswith("informer off"):
            data = yaml.safe_load(path.read_text())
            data["informer"]["enabled"] = False
            path.write_text(yaml.safe_dump(data))
        extenders = start_extenders(1, path, workdir)
        url = extenders[0].url
        wait_for(lambda: _ready(url, config.endswith("on")), timeout_s=120, what="the extender")
        profile["extenders"] = [{"urlPrefix": url, "filterVerb": "filter",
                                 "prioritizeVerb": "prioritize", "weight": 5,
                                 "nodeCacheCapable": True, "enableHTTPS": False,
                                 "httpTimeout": "5s"}]
    scheduler = plane.start_scheduler(profile, namespace)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: core.create_namespaced_pod(
                namespace, pod_body(f"p-{i:05d}", scheduler_name, label)), range(pods)))

        def all_bound() -> bool | None:
            items = core.list_namespaced_pod(namespace).items
            return sum(1 for p in items if p.spec.node_name) >= pods or None

        wait_for(all_bound, timeout_s=600, what=f"{pods} pods bound ({config})")
        return pods / (time.monotonic() - started)
    finally:
        scheduler.stop()
        for extender in extenders:
            extender.stop()
        core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        core.delete_namespace(namespace)


def _ready(url: str, informer: bool) -> bool | None:
    import requests

    body = requests.get(f"{url}/readyz", timeout=5).json()
    ok = body.get("nodes", 0) > 0 and body.get("prometheus_up")
    if informer:
        ok = ok and (body.get("informer") or {}).get("synced")
    return bool(ok) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scheduler_bench")
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds of every configuration, in alternating order (default 2)")
    args = parser.parse_args(argv)
    bin_dir, reason = find_binaries()
    if bin_dir is None:
        print(f"scheduler benchmark skipped: {reason}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="scheduler-bench-"))
    plane = ControlPlane.start(bin_dir, workdir / "plane")
    label = f"sb-{secrets.token_hex(3)}"
    try:
        core = CoreV1Api(plane.api_client())
        names = [f"{label}-{i:04d}" for i in range(args.nodes)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: create_node(core, n, cpu="2", memory="8Gi",
                                                labels={"pool": label}), names))
        emulator = Emulator([EmulatedNode(name=n, ip=node_ip(i), cpu_milli=2000, memory_mib=8192)
                             for i, n in enumerate(names)], seed=1, background_pods=False)
        results: dict[str, list[float]] = {config: [] for config in CONFIGS}
        with EmulatorServer(emulator) as server:
            prometheus = launcher.prometheus(server.scrape_targets(), scrape_interval_s=5).start()
            try:
                for k in range(args.repeat):
                    # Alternate the order, so that machine drift hits every configuration.
                    for config in (CONFIGS if k % 2 == 0 else CONFIGS[::-1]):
                        rate = one_round(plane, core, config, label, k, args.pods,
                                         prometheus.url, workdir / f"{k}-{CONFIGS.index(config)}")
                        results[config].append(rate)
                        print(f"  {config}: {rate:.1f} pods/s", flush=True)
            finally:
                prometheus.stop()
    finally:
        plane.stop()
    mean = {config: sum(rates) / len(rates) for config, rates in results.items()}
    base, off = mean["no extender"], mean["extender, informer off"]
    rows = [[config, " / ".join(f"{r:.1f}" for r in results[config]), f"{mean[config]:.1f}",
             f"{mean[config] / base:.2f}", f"{mean[config] / off:.2f}"] for config in CONFIGS]
    table = markdown_table(["configuration", "pods/s per round", "mean", "vs no extender",
                            "vs informer off"], rows)
    print(table)
    write_section("scheduler", "kube-scheduler throughput with the extender (informer on vs off)",
                  command=f"python -m benchmarks.scheduler_bench --nodes {args.nodes} "
                          f"--pods {args.pods} --repeat {args.repeat}",
                  body=f"{args.nodes} nodes (2 cores), {args.pods} pods created at once per "
                       f"configuration (10m requests, nodeSelector on the pool); a real "
                       f"kube-scheduler v1.35, kube-apiserver v1.36, `extender serve` with one "
                       f"gthread worker, Prometheus scraping the emulated estate every 5 s. Time "
                       f"from the first pod's creation until all are bound (polled). The 2-core "
                       f"machine runs every process, the scheduler's and extender's included.\n\n"
                       + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
