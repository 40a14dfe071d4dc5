"""Partition controller: planning time at 5000 nodes, and API calls after a single node change.

    python -m benchmarks.partition_bench [--sizes 500 5000] [--no-write]

Two measurements per cluster size, both against a baseline measured in the same run:
- Planning: `plan.plan` on a steady cluster (every node has its current worker) and right after one
  node is cordoned, against a naive planner that renders every worker manifest and compares whole
  specs (what a controller without the spec-hash annotation must do).
- API calls: the real `Reconciler`, running with its watches against the fake HTTP Kubernetes API
  of the tests (tests/partition/fakeapi.py) and adopting N existing workers; one node is cordoned
  and the calls of every verb are counted until the partition has settled. The baseline is a
  stateless controller that, on any change, relists nodes and pods and re-applies (PUT) every
  worker: it also ends in the right state, with O(nodes) calls.

Figures are medians of `--repeat` runs for the planning times; call counts are exact.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

import msgspec
from kubernetes.client import ApiClient, Configuration, CoreV1Api
from prometheus_client import CollectorRegistry

from benchmarks.results import markdown_table, write_section
from extender.localserver import wait_until
from extender.partition.plan import (
    HASH_ANNOTATION,
    ObservedNode,
    ObservedWorker,
    Resources,
    plan,
    render_worker,
)
from extender.partition.reconcile import PartitionMetrics, Reconciler
from extender.partition.settings import PartitionSettings, load_partition_settings
from tests.partition.fakeapi import FakeKubernetes, node

NS = "bench"
VERBS = ("list", "watch", "create", "delete", "update")


def settings() -> PartitionSettings:
    base = load_partition_settings("config/partition.yaml", environ={})
    # The fake API serves no Services; the COMPSs files have their own benchmark (compss_bench).
    compss = msgspec.structs.replace(base.compss, enabled=False)
    return msgspec.structs.replace(base, namespace=NS, min_reconcile_interval_s=0.05,
                                   resync_interval_s=600.0, metrics_port=0, compss=compss)


def cluster(n: int, cfg: PartitionSettings) -> tuple[dict[str, ObservedNode], list[ObservedWorker]]:
    """N heterogeneous nodes, each with its current, ready worker."""
    nodes: dict[str, ObservedNode] = {}
    workers: list[ObservedWorker] = []
    for i in range(n):
        view = ObservedNode(name=f"node-{i:05d}",
                        allocatable=Resources(4000 * (1 + i % 4), 2**34 * (1 + i % 3), i % 5 // 4 * 4))
        nodes[view.name] = view
        meta = render_worker(view, cfg)["metadata"]
        workers.append(ObservedWorker(name=meta["name"], node=view.name,
                                  spec_hash=meta["annotations"][HASH_ANNOTATION],
                                  phase="Running", ready=True))
    return nodes, workers


def naive_plan(nodes: dict[str, ObservedNode], applied: dict[str, dict[str, object]],
               cfg: PartitionSettings) -> list[str]:
    """The baseline planner: render every worker and compare it with the applied manifest."""
    return [name for name, view in nodes.items() if render_worker(view, cfg) != applied.get(name)]


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def planning(n: int, repeat: int) -> dict[str, float]:
    cfg = settings()
    nodes, workers = cluster(n, cfg)
    now = time.time()
    steady = median_ms(lambda: plan(nodes, workers, cfg, now=now), repeat)
    changed = dict(nodes)
    first = next(iter(changed))
    changed[first] = ObservedNode(name=first, allocatable=changed[first].allocatable, unschedulable=True)
    one_change = median_ms(lambda: plan(changed, workers, cfg, now=now), repeat)
    actions = plan(changed, workers, cfg, now=now).actions
    assert [(a.kind, a.node) for a in actions] == [("delete", first)], actions
    applied = {name: render_worker(view, cfg) for name, view in nodes.items()}
    naive = median_ms(lambda: naive_plan(changed, applied, cfg), max(1, repeat // 2))
    return {"steady_ms": steady, "one_change_ms": one_change, "naive_ms": naive}


def api_calls(n: int) -> dict[str, float]:
    """Calls of the real reconciler after one node is cordoned, and of the naive baseline."""
    cfg = settings()
    with FakeKubernetes() as api, ApiClient(Configuration(host=api.url)) as client:
        views, _ = cluster(n, cfg)
        for view in views.values():
            alloc = view.allocatable
            api.create("nodes", node(view.name, cpu=f"{alloc.cpu_millis}m",
                                     memory=str(alloc.memory_bytes), gpus=alloc.gpus))
            api.create("pods", render_worker(view, cfg), NS)
        registry = CollectorRegistry()
        reconciler = Reconciler(cfg, CoreV1Api(client), metrics=PartitionMetrics(registry))

        def calls() -> dict[str, float]:
            return {v: registry.get_sample_value("partition_api_calls_total", {"verb": v}) or 0.0
                    for v in VERBS}

        def passes() -> float:
            return registry.get_sample_value("partition_reconcile_duration_seconds_count") or 0.0

        def settled(extra: float = 1) -> None:
            seen = passes()

            def woken() -> bool:
                reconciler.changed.set()
                return passes() >= seen + extra + 1

            wait_until(woken, timeout_s=120, what="reconcile passes")

        stop = threading.Event()
        thread = threading.Thread(target=reconciler.run, args=(stop,), daemon=True)
        started = time.perf_counter()
        thread.start()
        wait_until(lambda: api.get("configmaps", "partition", NS), timeout_s=300,
                   what="first publication")
        startup_s = time.perf_counter() - started
        settled()
        adopted = calls()
        before = calls()
        target = "node-00001"
        cordon_at = time.perf_counter()
        api.put("nodes", node(target, unschedulable=True))
        wait_until(lambda: api.get("pods", f"partition-worker-{target}", NS) is None,
                   timeout_s=60, what="worker deleted")
        wait_until(lambda: target not in api.get("configmaps", "partition", NS)["data"]["resources.json"],
                   timeout_s=60, what="partition republished")
        react_ms = (time.perf_counter() - cordon_at) * 1000
        settled()
        after = calls()
        stop.set()
        thread.join(30)
        ours = {v: after[v] - before[v] for v in VERBS}

        # Baseline: relist everything and PUT every eligible worker.
        core = CoreV1Api(client)
        requests_before = len(api.requests)
        naive_started = time.perf_counter()
        listed_nodes, _listed_pods = (msgspec.json.decode(resp.data) for resp in (
            core.list_node(_preload_content=False),
            core.list_namespaced_pod(NS, _preload_content=False)))
        eligible = {item["metadata"]["name"] for item in listed_nodes["items"]
                    if not item["spec"].get("unschedulable")}
        for view in views.values():
            if view.name not in eligible:
                continue
            manifest = render_worker(view, cfg)
            core.replace_namespaced_pod(manifest["metadata"]["name"], NS, manifest,
                                        _preload_content=False)
        naive_ms = (time.perf_counter() - naive_started) * 1000
        naive_calls = len(api.requests) - requests_before
    return {"ours": sum(ours.values()), **{f"ours_{v}": ours[v] for v in VERBS},
            "startup_calls": sum(adopted.values()), "startup_s": startup_s,
            "react_ms": react_ms, "naive": naive_calls, "naive_ms": naive_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    rows = []
    for n in args.sizes:
        p = planning(n, args.repeat)
        c = api_calls(n)
        rows.append([
            n, f"{p['steady_ms']:.1f}", f"{p['one_change_ms']:.1f}", f"{p['naive_ms']:.0f}",
            f"{p['naive_ms'] / p['one_change_ms']:.0f}x",
            f"{c['ours']:.0f} (delete {c['ours_delete']:.0f}, create {c['ours_create']:.0f}, "
            f"update {c['ours_update']:.0f}, list {c['ours_list']:.0f}, watch {c['ours_watch']:.0f})",
            f"{c['naive']}", f"{c['naive'] / max(c['ours'], 1):.0f}x",
            f"{c['react_ms']:.0f}", f"{c['naive_ms']:.0f}",
            f"{c['startup_calls']:.0f} in {c['startup_s']:.1f}s",
        ])
        print(f"{n} nodes done: {rows[-1]}", flush=True)
    headers = ["nodes", "plan steady (ms)", "plan after 1 change (ms)", "naive plan (ms)",
               "plan speed-up", "API calls after 1 change (ours)", "naive calls", "calls ratio",
               "change -> republished (ms)", "naive reconcile (ms)", "adopt existing workers"]
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_write:
        body = (
            table + "\n\n"
            "One node of N is cordoned in a cluster where every node already has its current "
            "worker. *Ours*: the real reconciler, watching a fake HTTP Kubernetes API on loopback "
            "through the official client; the calls are those of the whole reaction (worker "
            "delete, its Event, the ConfigMap update), counted by `partition_api_calls_total`. "
            "*Naive*: relist nodes and pods and PUT every eligible worker, same server, same run. "
            "*Plan*: `plan.plan` (spec-hash comparison) against rendering and comparing every "
            "manifest. *Adopt*: calls made by a fresh controller that finds N existing workers "
            "(2 lists, 2 watches, a ConfigMap update answered 404 and its create; no pod is "
            "created or deleted). Planning stays O(nodes) in CPU by design (level-triggered, tens "
            "of ms at 5000 nodes, coalesced to at most one pass per `min_reconcile_interval_s`); "
            "API calls are O(changes). The 2 cores were shared with other jobs during the run "
            f"(load average {os.getloadavg()[0]:.1f} at the end): times are indicative, call "
            "counts are exact."
        )
        path = write_section("partition", "Partition controller: planning and API calls",
                             "python -m benchmarks.partition_bench", body)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
