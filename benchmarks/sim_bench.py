"""Simulation benchmark: the OpenB saturation experiment for every policy, and the trace replay.

Writes section `simulation` of benchmarks/RESULTS.md with our GPU allocation at 130% demand next
to the figures published in the FGD paper (Weng et al., ATC'23), and the replay's hot spots,
deadline misses and energy. Plots and summary CSVs go to out/bench-sim/.

    python -m benchmarks.sim_bench [--seeds 10] [--ours-seeds 3] [--replay-seeds 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

from benchmarks.results import markdown_table, write_section
from extender.settings import load_settings
from extender.sim.cli import simulate
from extender.sim.replay import ReplayResult
from extender.sim.report import SummaryRow, mean_spread, plot, print_table, write_summary
from extender.sim.saturation import SaturationResult

TRACE = Path(__file__).resolve().parents[1] / "data" / "openb"
PUBLISHED = {"random": 87.5, "dot-product": 90.9, "gpu-clustering": 91.9, "gpu-packing": 92.0,
             "best-fit": 93.1, "fgd": 95.4}
"""GPU allocation ratio (%) at 130% arrived demand, default list, mean of 10 seeds (FGD paper)."""
BASELINES = ["random", "dot-product", "gpu-clustering", "gpu-packing", "best-fit", "fgd",
             "kube-default", "trimaran-tlp"]
OURS = ["metrics-aware", "gpu", "power"]
GPU_OVERLAY = ("gpu", "none", "gpu (in-tree scoring off)")
"""The `gpu` profile as manifests/overlays/gpu deploys it: resource score plugins disabled."""
OUT = Path("out/bench-sim")


def _pct(values: list[float]) -> str:
    mean, spread = mean_spread([v * 100 for v in values])
    return "-" if math.isnan(mean) else f"{mean:.2f} ± {spread:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="saturation seeds per baseline")
    parser.add_argument("--ours-seeds", type=int, default=3, help="saturation seeds per profile")
    parser.add_argument("--replay-seeds", type=int, default=1)
    parser.add_argument("--config", type=Path, default=Path("config/extender.yaml"))
    args = parser.parse_args()
    gpu_nodes = TRACE / "openb_node_list_gpu_node.csv"
    all_nodes = TRACE / "openb_node_list_all_node.csv"
    pods = TRACE / "openb_pod_list_default.csv"

    runs: list[tuple[str, str, int, str]] = [
        *[(p, "least-allocated", args.seeds, p) for p in BASELINES],
        *[(p, "least-allocated", args.ours_seeds, p) for p in OURS],
        (GPU_OVERLAY[0], GPU_OVERLAY[1], args.seeds, GPU_OVERLAY[2]),
    ]
    settings = load_settings(args.config)
    sat_rows: list[SummaryRow] = []
    curves: list[SaturationResult] = []
    wall: dict[str, float] = {}
    for policy, in_tree, seeds, label in runs:
        start = time.perf_counter()
        outcome = simulate(gpu_nodes, pods, "saturation", [policy], seeds, settings=settings,
                           in_tree=in_tree)
        wall[label] = (time.perf_counter() - start) / seeds
        for row, result in zip(outcome.rows, outcome.saturation, strict=True):
            result.policy = label
            sat_rows.append(dataclasses.replace(row, policy=label))
            curves.append(result)
    write_summary(sat_rows, OUT / "saturation" / "summary.csv")
    plot(sat_rows, OUT / "saturation", curves)
    print_table(sat_rows, "saturation (OpenB default list, GPU nodes, 130%)")

    rep_rows: list[tuple[SummaryRow, ReplayResult]] = []
    rep_wall: dict[str, float] = {}
    for policy, in_tree, label in [*[(p, "least-allocated", p) for p in [*BASELINES, *OURS]],
                                   GPU_OVERLAY]:
        start = time.perf_counter()
        outcome = simulate(all_nodes, pods, "replay", [policy], args.replay_seeds,
                           settings=settings, in_tree=in_tree)
        rep_wall[label] = (time.perf_counter() - start) / args.replay_seeds
        for row, result in zip(outcome.rows, outcome.replay, strict=True):
            result.policy = label
            rep_rows.append((dataclasses.replace(row, policy=label), result))
    write_summary([r for r, _ in rep_rows], OUT / "replay" / "summary.csv")
    plot([r for r, _ in rep_rows], OUT / "replay")
    print_table([r for r, _ in rep_rows], "replay (OpenB default list, all nodes)")

    groups: dict[str, list[float]] = {}
    for row in sat_rows:
        groups.setdefault(row.policy, []).append(row.gpu_alloc_ratio)
    sat_table = []
    for label, values in groups.items():
        published = PUBLISHED.get(label)
        mean = mean_spread([v * 100 for v in values])[0]
        diff = f"{mean - published:+.2f}" if published is not None else ""
        sat_table.append([label, len(values), _pct(values),
                          f"{published:.1f}" if published is not None else "", diff,
                          f"{wall[label]:.1f}"])
    rep_groups: dict[str, list[tuple[SummaryRow, ReplayResult]]] = {}
    for row, result in rep_rows:
        rep_groups.setdefault(row.policy, []).append((row, result))
    rep_table = []
    for policy, items in rep_groups.items():
        rows = [r for r, _ in items]
        results = [res for _, res in items]
        above = [res.energy_kwh - res.idle_energy_kwh for res in results]
        rep_table.append([
            policy, len(rows),
            f"{mean_spread([r.hotspot_node_minutes for r in rows])[0]:.0f}",
            _pct([r.deadline_miss_rate for r in rows]),
            f"{mean_spread([r.energy_kwh for r in rows])[0]:.0f}",
            f"{mean_spread(above)[0]:.0f}",
            f"{mean_spread([r.decision_p99_ms for r in rows])[0]:.2f}",
            f"{rep_wall[policy]:.1f}"])
    body = "\n\n".join([
        "### Saturation: GPU allocation at 130% arrived GPU demand",
        "OpenB default list on the 1213 GPU nodes (6212 GPUs); tasks shuffled and resampled per "
        f"seed (seeds 42..), arrivals only. Baselines {args.seeds} seeds, our profiles "
        f"{args.ours_seeds} seeds. `±` is the sample standard deviation over seeds.",
        markdown_table(["policy", "seeds", "GPU alloc % (ours)", "published %", "diff pp",
                        "s per run"], sat_table),
        _paired(sat_rows, GPU_OVERLAY[2], "fgd"),
        NOTES,
        "### Replay: the trace's own arrivals and lifetimes on all 1523 nodes",
        f"{args.replay_seeds} seed(s); usage, contention, power and metrics-lag models in "
        "`extender/sim/models.py`; measured from the first to the last arrival.",
        markdown_table(["policy", "seeds", "hot-spot node-min", "deadline miss %", "energy kWh",
                        "energy above idle kWh", "decision p99 ms", "s per run"], rep_table),
        REPLAY_NOTES,
        f"Plots and per-seed CSVs: `{OUT}/saturation/`, `{OUT}/replay/`.",
    ])
    path = write_section("simulation", "Trace-driven simulation (OpenB)",
                         "python -m benchmarks.sim_bench", body)
    print(f"wrote {path}")
    return 0


def _paired(rows: list[SummaryRow], ours: str, baseline: str) -> str:
    """`ours` minus `baseline` in GPU allocation, seed by seed (same arrivals on both sides)."""
    by_seed = {r.seed: r.gpu_alloc_ratio for r in rows if r.policy == baseline}
    diffs = [(r.gpu_alloc_ratio - by_seed[r.seed]) * 100 for r in rows
             if r.policy == ours and r.seed in by_seed]
    if not diffs:
        return ""
    mean, spread = mean_spread(diffs)
    at_least = sum(d >= 0 for d in diffs)
    return (f"Paired by seed, `{ours}` minus `{baseline}`: {mean:+.2f} pp (sd {spread:.2f} over "
            f"{len(diffs)} seeds; {at_least} of {len(diffs)} at or above).")


NOTES = """How our figures differ from the paper's, and why:
- FGD's target workload keeps every task type of the list (`POPULARITY = 1.0`). The artifact's
  experiment script keeps the most popular types covering 95%; with that cut our FGD drops to
  about 90% (seed 0, measured during development), because every multi-GPU type falls out of the target
  (0.9% of tasks, 9% of GPU demand) and FGD stops protecting idle 8-GPU nodes. We could not find
  what in the artifact compensates; with all types we land within the 0.5 pp asked.
- Integer scores with random tie-breaking are reproduced for every baseline (the artifact runs
  its plugins inside kube-scheduler's framework); continuous FGD scores do worse (94.7%, seed 0).
- GPU Packing and GPU Clustering follow the artifact's plugin formulas but land about 3 points
  below the published figures, DotProduct about half a point; CPU-only tasks score 0 on every
  node under Packing and Clustering, so they are placed at random, which costs CPU on GPU nodes.
  We did not find the remaining difference in the time we had.
- kube-default (LeastAllocated + BalancedAllocation on CPU and memory, GPUs unscored) and
  Trimaran TargetLoadPacking are not in the paper.
- Ours runs the extender's own engine, called as kube-scheduler calls an extender (`filter` on
  the nodes that fit, `prioritize` on those that passed): scores 0..10, extender weight 5 as
  shipped in `manifests/base/scheduler-config.yaml`, added to the in-tree LeastAllocated and
  BalancedAllocation; the GPU inside a node is the device plugin's best fit. "in-tree scoring off"
  is the `gpu` profile as `manifests/overlays/gpu` deploys it (resource score plugins disabled:
  ties among the extender's choices are random). In the saturation experiment ours sees CPU usage
  from the same usage model as the replay, without lag (there is no clock).
- The `gpu` profile keeps FGD's best integer level (a filter rule on `gpu_fragmentation`) among
  the nodes that pass the health rules and that the pod would not push above 90% CPU or below 10%
  free memory, and among those prefers the nodes whose GPUs are already taken (`gpu_packing`,
  scores 0..10, where FGD picks at random). Without that tie-break it stayed 0.18 points below
  FGD (95.06 over these 10 seeds): the hot-spot rules cost that. With it the gap is gone, but the
  margin above FGD is within the seed-to-seed noise (paired figure above): "as many GPUs as FGD",
  not more. The same tie-break on FGD itself (in-process, continuous) gives 95.30 over these
  seeds, a CPU-packing one 95.26; the reverse (prefer idle GPUs: spreading) 93.96. Continuous FGD
  scores (no integer levels) give 94.70, coarser levels (2 and 4 points) 93.62 and 89.67.
- Measured during development, before the tie-break (seeds 42-43, means of 2): the FGD-level
  rule alone reproduces FGD exactly (95.32 on both sides); the CPU "with this
  pod" rule costs 0.33 points at 90% (0.09 at 95%), the memory one 0.15, both together 0.33;
  choosing among FGD's best nodes by usage instead of at random costs 0.7 (94.59); with the 95%
  CPU rule, in-tree MostAllocated costs 0.06 more and LeastAllocated 0.6 (the shipped base
  scheduler profile: 94.23 over 3 seeds then). Keeping the nodes of FGD's two best levels costs
  5 points (89.9), keeping only exact ties 0.4: FGD's integer levels matter.
- Tried since, none kept: the hot-spot rules checked inside FGD's best level instead of before it
  (waived when they would reject all of it) 95.12 (seeds 42-43, rules before it: 94.99); with
  in-tree MostAllocated without BalancedAllocation 95.15; a CPU-packing tie-break among FGD's best
  nodes without hot-spot rules, 10 seeds: 95.26 vs FGD 95.24, no gain beyond noise.
- The trade-off, measured (seeds 42-46, in-tree scoring off; FGD 95.33): the CPU and memory
  rules on the node's usage before the pod, not "with this pod", cost nothing measurable (95.31)
  but do nothing in the replay either (19035 hot-spot node-minutes vs FGD's 19712, 1.50% deadline
  misses vs 1.47%): the hot spots come from single placements that take a node over 90%. "With
  this pod" at 95% CPU: 95.21 (memory at 10%; 95.19 with memory at 5%), and 7963 hot-spot
  node-minutes with no deadline miss in the replay; at 100% CPU: 95.13. On seed 42 the gap to FGD
  opens while the cluster first fills (90-100% arrived demand) and stays constant after.
- On the other pod lists of the trace (development run, 2 seeds each, FGD vs `gpu` with in-tree
  scoring off): cpu050 95.32 vs 95.44, gpushare40 93.70 vs 93.91, gpuspec33 95.14 vs 94.86,
  multigpu50 97.11 vs 96.50. On multigpu50 the hot-spot rules cost the 0.6 points (97.10 without
  them: multi-GPU tasks ask for many cores, so "with this pod" rejects FGD's best nodes more
  often); on gpuspec33 the packing tie-break costs about 0.2 (FGD's best level alone, through the
  extender, reproduces FGD exactly there). Not solved yet.
- So on the default list the `gpu` profile with in-tree scoring off allocates as many GPUs as
  FGD and, in the replay below, has far fewer hot-spot node-minutes, deadline misses and energy
  above idle."""

REPLAY_NOTES = """Replay caveats: replayed literally the trace keeps at most about 40 tasks alive
at once on 1523 nodes (median task 9 minutes over 149 days), so the cluster is never short of
GPUs; what placement changes is where load piles up (hot spots and CPU contention, hence deadline
misses) and how many nodes and GPUs leave their idle power state (energy). Energy is dominated by
the all-idle floor, so differences show in "energy above idle". `extender simulate --speedup`
compresses arrivals for more load."""


if __name__ == "__main__":
    raise SystemExit(main())
