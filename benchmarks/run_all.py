"""`make bench`: every benchmark in turn; each refreshes its own section of RESULTS.md."""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = (
    ("benchmarks.http_bench", "HTTP: extender under gunicorn vs a parse-only floor"),
    ("benchmarks.sim_bench", "Simulation: OpenB saturation and replay, all policies"),
    ("benchmarks.partition_bench", "Partition controller: planning and API calls"),
    ("benchmarks.compss_bench", "Partition controller: COMPSs files"),
    ("benchmarks.informer_bench", "Pod informer: CPU and memory at 5000 nodes / 50 000 pods"),
    ("benchmarks.informer_path_bench", "Request path (500 names) with the pod informer on vs off"),
    ("benchmarks.scheduler_bench", "kube-scheduler throughput with the extender, informer on/off"),
    ("benchmarks.rebalance_bench", "Rebalancer in the replay: benefit vs cost"),
    ("benchmarks.learn_bench", "Learned policy: training, inference cost, replay comparison"),
    ("benchmarks.rules_bench", "Recording rules: Prometheus CPU and refresh time, raw vs recorded"),
)


def main() -> int:
    """Run all benchmarks; the exit code is non-zero if any failed."""
    failed = []
    for module_name, title in BENCHMARKS:
        print(f"\n=== {title} ({module_name})", flush=True)
        started = time.monotonic()
        try:
            code = importlib.import_module(module_name).main()
        except Exception as exc:  # noqa: BLE001 - report and go on with the next benchmark
            print(f"{module_name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
        print(f"=== {module_name}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(module_name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
