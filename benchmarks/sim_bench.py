"""Simulation benchmark: the OpenB saturation experiment for every policy, and the trace replay.

Writes section `simulation` of benchmarks/RESULTS.md with our GPU allocation at 130% demand next
to the figures published in the FGD paper (Weng et al., ATC'23), and the replay's hot spots,
deadline misses and energy. Plots and summary CSVs go to out/bench-sim/.

    python -m benchmarks.sim_bench [--seeds 10] [--ours-seeds 3] [--replay-seeds 1]
    python -m benchmarks.sim_bench --sweep-only [--lists default,cpu050,gpushare40]

Also writes section `simulation-sweep`: the replay at several loads (arrival speed-ups) for
kube-default, FGD and every policy name the simulator knows beyond the old heuristic baselines
(the profiles of the configuration, and any policy added since, e.g. a learned one), with the
comparison table (mean ± sd over seeds, paired difference to kube-default by seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.results import markdown_table, write_section
from extender.settings import Settings, load_settings
from extender.sim import policies as registry
from extender.sim.cli import simulate
from extender.sim.replay import ReplayResult
from extender.sim.report import (
    SummaryRow,
    comparison,
    loads_of,
    mean_spread,
    plot,
    plot_sweep,
    print_table,
    read_summary,
    write_summary,
)
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
LOADS = (1.0, 5.0, 10.0, 20.0, 40.0)
SWEEP_LISTS = ("default", "cpu050", "gpushare40")
"""Pod lists with arrival times (multigpu50 has none); cpu050 is the CPU-heavy one."""
NOT_SWEPT = ("random", "best-fit", "dot-product", "gpu-packing", "gpu-clustering", "trimaran-tlp")
"""Heuristic baselines left out of the sweep (the saturation section has them)."""


def sweep_policies(settings: Settings) -> list[str]:
    """kube-default, the default profile, then every other name the simulator knows (FGD, the
    other profiles, any policy added since): picks up new policies without code changes."""
    names = [n for n in registry.names(settings) if n not in NOT_SWEPT]
    first = ["kube-default", settings.policy.default]
    return [*first, *[n for n in names if n not in first]]


def kind(name: str, settings: Settings) -> str:
    """The family of a policy in the comparison: the default profile is the deterministic
    weighted algorithm; a policy or profile using a learned model is learned; the rest are
    heuristics."""
    profile = settings.policy.profiles.get(name)
    terms = set(profile.weights) if profile is not None else set()
    if "learn" in name or any("learn" in term for term in terms):
        return "learned"
    if name == settings.policy.default:
        return "deterministic"
    return "heuristic"


def _pct(values: list[float]) -> str:
    mean, spread = mean_spread([v * 100 for v in values])
    return "-" if math.isnan(mean) else f"{mean:.2f} ± {spread:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="saturation seeds per baseline")
    parser.add_argument("--ours-seeds", type=int, default=3, help="saturation seeds per profile")
    parser.add_argument("--replay-seeds", type=int, default=1)
    parser.add_argument("--config", type=Path, default=Path("config/extender.yaml"))
    parser.add_argument("--sweep-only", action="store_true",
                        help="only the load sweep (section simulation-sweep)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the load sweep")
    parser.add_argument("--loads", default=",".join(f"{x:g}" for x in LOADS))
    parser.add_argument("--sweep-seeds", type=int, default=3)
    parser.add_argument("--lists", default=",".join(SWEEP_LISTS),
                        help="pod lists of the sweep (openb_pod_list_NAME.csv)")
    parser.add_argument("--policies", default="",
                        help="sweep only these policies (default: see sweep_policies)")
    parser.add_argument("--rewrite", action="store_true",
                        help="rewrite the sweep section from the summary CSVs of the last run "
                             "(out/bench-sim/sweep-LIST/summary.csv) without running anything")
    parser.add_argument("--first", type=int, default=0,
                        help="sweep only the first N pods of each list by arrival (a time "
                             "window from the first arrival; 0: the whole list)")
    args = parser.parse_args()
    if args.rewrite:
        lists = [x for x in args.lists.split(",") if x]
        rewrite(load_settings(args.config), lists, args.first)
        return 0
    if not args.no_sweep:
        settings = load_settings(args.config)
        policies = ([p for p in args.policies.split(",") if p] if args.policies
                    else sweep_policies(settings))
        sweep(settings, policies, [float(x) for x in args.loads.split(",")], args.sweep_seeds,
              [x for x in args.lists.split(",") if x], args.first)
    if args.sweep_only:
        return 0
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


def first_pods(source: Path, count: int, out: Path) -> Path:
    """The first `count` pods of `source` by creation time, as a pod list CSV in `out`."""
    import csv

    with source.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = sorted(reader, key=lambda r: float(r["creation_time"]))[:count]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"first{count}-{source.name}"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def sweep(settings: Settings, policies: Sequence[str], loads: Sequence[float], seeds: int,
          lists: Sequence[str], first: int = 0) -> None:
    """Run the load sweep on each pod list (its `first` pods only, when > 0) and write section
    `simulation-sweep`."""
    all_nodes = TRACE / "openb_node_list_all_node.csv"
    parts = [
        f"Replay on all 1523 nodes, every policy at every load (arrival speed-up; durations "
        f"kept), seeds 42..{41 + seeds}; same usage draws for every policy of a seed. Each "
        "cell: mean ± sd over seeds, then (Δ mean ± sd) the paired difference to kube-default "
        "by seed. Kinds: deterministic = the default profile (weighted metrics), heuristic = "
        "the other profiles, FGD and kube-default, learned = any policy using a trained model.",
    ]
    if first:
        parts.append(f"**A slice of the trace**: only the first {first} pods of each list by "
                     "arrival (a time window from the first arrival), not the whole list; "
                     "figures are for that window.")
    kinds = {p: kind(p, settings) for p in policies}
    done: list[str] = []
    for name in lists:
        pods = TRACE / f"openb_pod_list_{name}.csv"
        if first:
            pods = first_pods(pods, first, OUT / "slices")
        rows: list[SummaryRow] = []
        timing = []
        out = OUT / f"sweep-{name}"
        for policy in policies:
            start = time.perf_counter()
            outcome = simulate(all_nodes, pods, "replay", [policy], seeds, settings=settings,
                               loads=loads, progress=print)
            timing.append([policy, f"{time.perf_counter() - start:.0f}"])
            rows.extend(outcome.rows)
            write_summary(rows, out / "summary.csv")
            headers, table = comparison(rows, "kube-default", kinds)
            # Written after every policy: a sweep cut short still leaves what it measured.
            (out / "wall.txt").write_text(wall_line(timing))
            current = [f"### Pod list `{name}`", markdown_table(headers, table),
                       verdict(rows, settings.policy.default), wall_line(timing),
                       f"Plots (one per metric against load) and per-seed CSV: `{out}/`."]
            _write_sweep(lists, [*parts, *done, *current])
        plot_sweep(rows, out)
        print_table(rows, f"load sweep: {name}", comparison(rows, "kube-default", kinds))
        done += current


def wall_line(timing: Sequence[Sequence[str]]) -> str:
    """The sweep's wall time per policy, as the section says it."""
    return ("Wall time of the whole sweep per policy (all loads and seeds, s): "
            + ", ".join(f"{p} {t}" for p, t in timing) + ".")


def verdict(rows: Sequence[SummaryRow], default: str) -> str:
    """Issue 17's target, checked: at every load where kube-default has >= 100 hot-spot
    node-minutes (mean over seeds), the default profile has <= 50% of its hot-spot node-minutes
    and of its deadline misses."""
    lines = []
    for load in loads_of(rows):
        def mean(policy: str, field: str, at: float = load) -> float:
            return mean_spread([getattr(r, field) for r in rows
                                if r.policy == policy and r.load == at])[0]

        base_hot, ours_hot = mean("kube-default", "hotspot_node_minutes"), mean(
            default, "hotspot_node_minutes")
        if math.isnan(base_hot) or math.isnan(ours_hot) or base_hot < 100:
            continue
        base_miss, ours_miss = mean("kube-default", "deadline_miss_rate"), mean(
            default, "deadline_miss_rate")
        hot_ok = ours_hot <= 0.5 * base_hot
        miss_ok = ours_miss <= 0.5 * base_miss
        lines.append(f"- load {load:g}: hot-spot node-min {ours_hot:.0f} vs {base_hot:.0f} "
                     f"({ours_hot / base_hot:.0%}, {'met' if hot_ok else 'MISSED'}); deadline "
                     f"misses {ours_miss * 100:.3f}% vs {base_miss * 100:.3f}% "
                     f"({'met' if miss_ok else 'MISSED'})")
    if not lines:
        return f"Target check (`{default}` vs kube-default): no load with >= 100 hot-spot node-min."
    return (f"Target check (`{default}` <= 50% of kube-default's hot spots and misses where "
            "kube-default has >= 100 hot-spot node-min):\n" + "\n".join(lines))


def rewrite(settings: Settings, lists: Sequence[str], first: int = 0) -> None:
    """Section(s) of the sweep again from the per-list summary CSVs, without running."""
    parts = [SWEEP_INTRO + (SLICE_NOTE.format(first=first) if first else "")]
    policies: list[str] = []
    for name in lists:
        rows = read_summary(OUT / f"sweep-{name}" / "summary.csv")
        policies = list(dict.fromkeys(r.policy for r in rows))
        kinds = {p: kind(p, settings) for p in policies}
        plot_sweep(rows, OUT / f"sweep-{name}")
        headers, table = comparison(rows, "kube-default", kinds)
        seeds = sorted({r.seed for r in rows})
        wall = OUT / f"sweep-{name}" / "wall.txt"
        parts += [f"### Pod list `{name}`", f"Seeds {seeds[0]}..{seeds[-1]}.",
                  markdown_table(headers, table), verdict(rows, settings.policy.default),
                  *([wall.read_text()] if wall.exists() else []),
                  f"Plots (one per metric against load) and per-seed CSV: "
                  f"`{OUT}/sweep-{name}/`."]
    _write_sweep(lists, parts)


SWEEP_INTRO = (
    "Replay on all 1523 nodes, every policy at every load (arrival speed-up; durations kept); "
    "the same usage draws for every policy of a seed. Each cell: mean ± sd over seeds, then "
    "(Δ mean ± sd) the paired difference to kube-default by seed. Kinds: deterministic = the "
    "default profile (weighted metrics), heuristic = the other profiles, FGD and kube-default, "
    "learned = a policy using a trained model.")
SLICE_NOTE = (" **A slice of the trace**: only the first {first} pods of each list by arrival "
              "(a time window from the first arrival), not the whole list; figures are for that "
              "window.")


def _write_sweep(lists: Sequence[str], parts: list[str]) -> None:
    """Section `simulation-sweep` (for the shipped lists; else one named after `lists`)."""
    name = ("simulation-sweep" if tuple(lists) == SWEEP_LISTS
            else "simulation-sweep-" + "-".join(lists))
    path = write_section(name, f"Load sweep and comparison (OpenB replay: {', '.join(lists)})",
                         "python -m benchmarks.sim_bench --sweep-only --lists "
                         + ",".join(lists), "\n\n".join([*parts, SWEEP_NOTES]))
    print(f"wrote {path}")


SWEEP_NOTES = """Why the default profile used to equal kube-default (issue 17, item 2). Measured on
the default list, load 10, seed 42, with `score_with_pod` off and no power term (the profile
as it was):
- Not the extender's weight: its scores count 5 x 10 x (0..10) = 0..500 against in-tree
  LeastAllocated + BalancedAllocation's 0..200, and its scores do vary (levels 5..10 occur). Nor
  the integer levels, the metric lag or the pending-load compensation: the extender's top nodes
  differed from in-tree scoring's best nodes in only 74 of 8147 decisions, because both prefer
  the least used nodes, and under these loads (GPU allocation 0.2-1%) usage and requests agree.
- Every hot-spot minute (353 of 353) came from one task alone on a node: two Burstable 8-GPU
  pods asking 88 cores and using 95 and 99, placed on idle 96-core nodes when the 128-core nodes
  were partly allocated. The profile rated an idle node about 10 whatever the pod's size: its
  CPU rule (90%) and terms look at usage before the pod, which is 0% there.
- Every deadline miss at these loads is a pod that fits nowhere by requests when it arrives
  (120-core 8-GPU pods: the 39 128-core 8-GPU nodes hold smaller pods), not contention; p99 task
  slowdown is 1.000 for every policy (fewer than 1% of tasks are slowed at all).
- Fix: `hotspot.score_with_pod` (on in `metrics-aware`, shipped on: the with-pod scores complete
  per-node sums kept with the baseline, about +30 us per call at 500 names) scores the CPU and
  memory terms on usage
  plus the pod's requests, as Trimaran's TargetLoadPacking predicts; the filter rules keep their
  meaning (the verdicts still come from the shared per-table baseline, only the scores are per
  pod). Pinned by `tests/sim/test_sim_contention.py` (a two-node cluster where kube-default and
  the old profile put a big pod on the node too small for it: 783 hot-spot node-minutes each,
  the profile now 157) and the engine tests.
- Saturation (`extender simulate --experiment saturation`, default list, GPU nodes, seeds 42-44,
  3 seeds only for lack of time): metrics-aware 94.06 ± 0.11% with the switch, 93.96 ± 0.26%
  without (paired +0.10 pp, sd 0.33), kube-default 93.76 ± 0.26% (paired +0.30 pp): no GPU
  allocation lost.
- What `score_with_pod` did not fix: the misses (unschedulable 120-core pods) and the hot spots
  of the 88-core pods once every 128-core node held small pods. Both need the large nodes kept
  free for the pods that only fit there. Tried (development runs, 1-2 seeds): `gpu_fragmentation:
  1` halved the misses at load 10 but raised hot spots at load 40 (236 vs 163); `gpu_packing: 2`
  changed neither; `host_power_watts: 1` gave mixed results; CPU and memory rules "with this pod"
  removed every hot spot but doubled the misses (0.098% vs 0.049%, load 10, seed 42: the rules
  turn big pods away instead of finding them room); `node_cpu_power_watts: 4` changed nothing.
- Fix, shipped: `node_cpu_power_watts: 8` in `metrics-aware`. A node's draw is its idle power,
  which grows with its idle GPUs (V100-class: 35 W each, 280 W for eight) and its size, plus what
  its busy cores and GPUs add. Preferring the lower draw keeps CPU-only pods off the 8-GPU nodes,
  and on this trace the 128-core nodes are all 8-GPU nodes (39 `G3`): they stay free for the big
  8-GPU pods that only fit there. Measured (load 10, seed 42, pods placed by node size): pods of
  <= 16 cores on 128-core nodes: kube-default 1281, the profile before 1329, now 2; pods of
  >= 64 cores on 96-core nodes: 5, 5, now 0 (all 44 on 128-core nodes); hot-spot node-min 353,
  353, now 63; deadline misses 4, 5, now 0. Weights 8 and 12 gave the same hot spots and misses
  at every load of this list (3 seeds); 8 leaves more weight on the usage terms. What is left,
  81 ± 35 node-min at every load, is what every policy has at load 1, where nothing contends.
  Pinned by `tests/sim/test_sim_contention.py` (three CPU nodes and an 8-GPU node: kube-default
  and the profile without the term leave all 10 big GPU pods unscheduled, the profile none).
- The trade-off: where an idle small node draws less than a busy large one, the term can send a
  pod that nearly fills the small node there. In the two-node case above (16 and 40 cores, no
  GPUs) the shipped profile is back at kube-default's 783 hot-spot node-min (157 without the
  term). Not seen on the trace; a rule that keeps the node under 85% with the pod removed those
  hot spots but left every pod larger than 85% of the biggest node unschedulable (misses 0.06%
  at loads 5, 10, 40, seed 42), so it is not shipped.
- Saturation (`--experiment saturation`, which now models power too): the profile allocates
  94.32 ± 0.09% of the GPUs (3 seeds) vs kube-default's 93.90 ± 0.21% (10 seeds; 93.76 on the
  same 3 seeds) and 94.06 ± 0.11% before the term: no GPU allocation lost (section
  "Trace-driven simulation", `python -m benchmarks.sim_bench --no-sweep`).
- Where no power exporter runs the term is absent on every node and dropped (the weights
  renormalise): the profile is then the one before, with `score_with_pod`."""


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
  from the same usage model as the replay, without lag (there is no clock), and power from the
  replay's power model (a GPU counted busy and loaded by its allocated share: no GPU usage draw
  here). Before 2026-12-03 power was absent there, so the `power` profile's figure was that of
  its usage terms alone.
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
