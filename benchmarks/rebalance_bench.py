"""Rebalancer benefit against its cost: the OpenB replay with and without `extender rebalance`.

    python -m benchmarks.rebalance_bench [--speedups 20 40] [--policies best-fit,fgd,metrics-aware]
                                         [--pods openb_pod_list_cpu050.csv] [--seeds 1] [--no-write]

Each policy places the trace's tasks on all 1523 nodes with arrivals `--speedup` times denser
(the two highest loads that replay in bounded time); the same run is repeated with the
rebalancer (config/rebalance.yaml: the same detect/choose as the controller, on the replay's
lagged metrics; a move restarts the task elsewhere with its remaining work plus
`simulation.restart_cost_s`). The baseline is the same policy, seed and load without it.
Figures: hot-spot node-minutes (CPU or memory above 90%), deadline misses, evictions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.results import markdown_table, write_section
from extender.rebalance.settings import load_rebalance_settings
from extender.settings import load_settings
from extender.sim.cli import simulate
from extender.sim.replay import ReplayResult

REPO = Path(__file__).resolve().parents[1]
OPENB = REPO / "data" / "openb"
CONFIG = REPO / "config" / "rebalance.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speedups", type=float, nargs="+", default=[20.0, 40.0])
    parser.add_argument("--policies", default="best-fit,fgd,metrics-aware")
    parser.add_argument("--pods", default="openb_pod_list_cpu050.csv")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    nodes, pods = OPENB / "openb_node_list_all_node.csv", OPENB / args.pods
    extender = load_settings(REPO / "config" / "extender.yaml")
    rules, _ = load_rebalance_settings(CONFIG, extender=extender)
    rows: list[list[object]] = []
    for speedup in args.speedups:
        runs: dict[bool, list[ReplayResult]] = {}
        walls: dict[bool, float] = {}
        for on in (False, True):
            started = time.perf_counter()
            outcome = simulate(nodes, pods, "replay", policies, args.seeds, settings=extender,
                               speedup=speedup, rebalance=CONFIG if on else None)
            runs[on] = outcome.replay
            walls[on] = (time.perf_counter() - started) / max(len(outcome.replay), 1)
        for policy in policies:
            off = [r for r in runs[False] if r.policy == policy]
            on = [r for r in runs[True] if r.policy == f"{policy}+rebalance"]
            hot_off = sum(r.hotspot_node_minutes for r in off) / len(off)
            hot_on = sum(r.hotspot_node_minutes for r in on) / len(on)
            miss_off = sum(r.deadline_misses for r in off) / len(off)
            miss_on = sum(r.deadline_misses for r in on) / len(on)
            tasks = off[0].tasks
            evictions = sum(r.evictions for r in on) / len(on)
            above_off = sum(r.energy_kwh - r.idle_energy_kwh for r in off) / len(off)
            above_on = sum(r.energy_kwh - r.idle_energy_kwh for r in on) / len(on)
            rows.append([policy, f"{speedup:g}x", f"{hot_off:.0f}", f"{hot_on:.0f}",
                         f"{hot_on / hot_off:.2f}" if hot_off else "-",
                         f"{miss_off:.0f} ({100 * miss_off / tasks:.2f}%)",
                         f"{miss_on:.0f} ({100 * miss_on / tasks:.2f}%)",
                         f"{evictions:.0f} ({1000 * evictions / tasks:.1f}/1000 tasks)",
                         f"{above_off:.0f} / {above_on:.0f}",
                         f"{walls[False]:.0f} / {walls[True]:.0f}"])
    headers = ["policy", "load", "hot-spot node-min off", "on", "ratio on/off",
               "deadline misses off", "on", "evictions", "energy above idle kWh off / on",
               "s per run off / on"]
    table = markdown_table(headers, rows)
    print(table)
    if args.no_write:
        return 0
    body = (
        f"{args.seeds} seed(s), pod list `{args.pods}` on all 1523 nodes of the OpenB node list, "
        "arrivals compressed by the load factor. "
        f"Rebalancer settings: `config/rebalance.yaml` (CPU hot above "
        f"{rules.thresholds['cpu_utilisation'].hot:g}, cool below "
        f"{rules.thresholds['cpu_utilisation'].cool:g}; debounce {rules.debounce_cycles} cycles of "
        f"{rules.interval_s:g} s; margin {rules.margin}; min pod age {rules.min_pod_age_s:g} s; "
        f"cool-down {rules.cooldown_s:g} s; {rules.limits.per_node} per node, "
        f"{rules.limits.per_cycle} per cycle, {rules.limits.rate_per_minute:g}/min; restart cost "
        f"{rules.simulation.restart_cost_s:g} s per move). \"off\" is the same policy, seed and load "
        "without the rebalancer (the baseline of the ratio).\n\n"
        f"{table}\n\n"
        "A move costs the task its restart time (work lost and a later finish), which is counted "
        "in its deadline; hot-spot time is CPU or memory use above 90% of capacity (the replay's "
        "definition, `extender/sim/models.py`), while the rebalancer sees the lagged, requests-"
        "based view the extender has. Placement policies that pack (best-fit, FGD) leave hot "
        "nodes for the rebalancer to fix; the metrics-aware profile leaves few. Node-minutes are "
        "totals over the replayed span (twice as long at 20x as at 40x). \"s per run\" is the "
        "mean over the policies of one configuration, on a shared machine: indicative only.\n")
    command = "python -m benchmarks.rebalance_bench " + " ".join(
        f"--speedups {' '.join(f'{s:g}' for s in args.speedups)} --policies {args.policies} "
        f"--pods {args.pods} --seeds {args.seeds}".split())
    path = write_section("rebalance", "Rebalancer in the replay (benefit vs cost)", command, body)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
