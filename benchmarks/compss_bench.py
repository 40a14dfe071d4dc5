"""COMPSs files: generating resources.xml and project.xml for 500 and 5000 workers.

    python -m benchmarks.compss_bench [--sizes 500 5000] [--repeat 7] [--no-write]

Per size, from a partition of heterogeneous ready workers (a third with GPUs), the median of
`--repeat` runs of:
- `compss_workers` + `resources_xml` + `project_xml` (the text), then `validate_files` (the
  runtime's rules, re-parsing both files), and `compss_files` (both, what the reconciler calls);
- the baseline measured in the same run: `partition_document`, which the reconciler already
  builds on every change (resources.json and partition.yaml for the same entries).
Also the bytes per worker and how many workers fit in the partition ConfigMap (1 MiB) beside
resources.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

import msgspec

from benchmarks.results import markdown_table, write_section
from extender.partition.compss import (
    compss_files,
    compss_workers,
    project_xml,
    resources_xml,
    validate_files,
)
from extender.partition.plan import PartitionEntry, partition_document
from extender.partition.reconcile import CONFIGMAP_MAX_BYTES
from extender.partition.settings import PartitionSettings, load_partition_settings

GIB = 2**30


def settings() -> PartitionSettings:
    base = load_partition_settings("config/partition.yaml", environ={})
    return msgspec.structs.replace(base, namespace="extract")


def entries(n: int) -> list[PartitionEntry]:
    """N ready workers on nodes of 8..64 cores, 32..256 GiB, a third with 1..8 GPUs."""
    out = []
    for i in range(n):
        cores = 8 * (1 + i % 8)
        out.append(PartitionEntry(
            node=f"node-{i:05d}", pod=f"partition-worker-node-{i:05d}",
            ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            cpu_millis=cores * 800, memory_bytes=int(cores * 4 * GIB * 0.8),
            gpus=(1 + i % 8) if i % 3 == 0 else 0, ready=True))
    return out


def median_ms(fn: Callable[[], object], repeat: int, *, collector: bool = True) -> float:
    """Median wall time; `collector=False` pauses the cyclic GC as compss_files does inside."""
    times = []
    for _ in range(repeat):
        if not collector:
            gc.disable()
        try:
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
        finally:
            gc.enable()
    return statistics.median(times)


def measure(n: int, repeat: int) -> list[object]:
    cfg = settings()
    rows = entries(n)
    workers, _ = compss_workers(rows, cfg)
    text_ms = median_ms(lambda: (resources_xml(compss_workers(rows, cfg)[0], cfg),
                                 project_xml(workers, cfg)), repeat, collector=False)
    files = compss_files(rows, cfg)
    validate_ms = median_ms(lambda: validate_files(files.resources, files.project), repeat,
                            collector=False)
    with_gc_ms = median_ms(lambda: (resources_xml(workers, cfg), project_xml(workers, cfg),
                                    validate_files(files.resources, files.project)), repeat)
    total_ms = median_ms(lambda: compss_files(rows, cfg), repeat)
    baseline_ms = median_ms(lambda: partition_document(rows, max_bytes=CONFIGMAP_MAX_BYTES), repeat)
    xml_bytes = len(files.resources.encode()) + len(files.project.encode())
    json_bytes = len(partition_document(rows)["resources.json"].encode())
    per_worker = (xml_bytes + json_bytes) / n
    return [n, f"{text_ms:.1f}", f"{validate_ms:.1f}", f"{total_ms:.1f}", f"{with_gc_ms:.1f}",
            f"{baseline_ms:.1f}",
            f"{total_ms / baseline_ms:.1f}x", f"{xml_bytes / n:.0f}",
            f"{xml_bytes / 2**20:.2f}", "yes" if xml_bytes + json_bytes <= CONFIGMAP_MAX_BYTES else "no",
            f"{int(CONFIGMAP_MAX_BYTES // per_worker)}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(measure(n, args.repeat))
        print(f"{n} workers: {rows[-1]}", flush=True)
    headers = ["workers", "XML text (ms)", "rules check (ms)", "compss_files (ms)",
               "same, collector running (ms)", "baseline partition_document (ms)",
               "ratio to baseline", "XML bytes / worker",
               "XML MiB", "fits beside resources.json", "max workers in one ConfigMap"]
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_write:
        body = (
            table + "\n\n"
            "`compss_files` is what the reconciler runs when the published partition changed: "
            "the two texts (ElementTree, compact) plus `validate_files` (both re-parsed, the "
            "runtime's rules). Baseline: `partition_document` for the same entries (resources.json "
            "and partition.yaml, compact JSON lines), which the reconciler builds on every change "
            "anyway. *Collector running*: text and rules with Python's cyclic GC left on, which "
            "`compss_files` pauses (its full passes over the ~30 elements per worker cost more "
            "than the work). Workers: 8..64 cores, a third with GPUs, names `partition-worker-node-NNNNN`. "
            "Generation is linear in the workers and bounded (well under a second at 5000); the "
            "limit is the ConfigMap size: the last column is 1 MiB divided by the bytes per "
            "worker of resources.json and both XML files; past it the reconciler publishes "
            "resources.json alone and logs an error (docs/compss.md). Medians of "
            f"{args.repeat} runs; the 2 cores were shared with other jobs (load average "
            f"{os.getloadavg()[0]:.1f} at the end): times are indicative, sizes exact."
        )
        path = write_section("partition-compss", "Partition controller: COMPSs files",
                             "python -m benchmarks.compss_bench", body)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
