"""Run the trace-driven simulator: the OpenB saturation experiment or a replay of the trace.

Examples:
  extender simulate --nodes openb_node_list_gpu_node.csv --pods openb_pod_list_default.csv \\
      --experiment saturation --policy random,best-fit,fgd --seeds 3 --out out/sat
  extender simulate --nodes openb_node_list_all_node.csv --pods openb_pod_list_default.csv \\
      --experiment replay --policy kube-default,fgd,metrics-aware --seeds 2 --out out/replay
  extender simulate --nodes openb_node_list_all_node.csv --pods openb_pod_list_default.csv \\
      --experiment replay --load 1,5,10,20,40 --policy kube-default,metrics-aware --seeds 3

Policies: kube-default, random, best-fit, dot-product, gpu-packing, gpu-clustering, trimaran-tlp,
fgd, and every profile of the extender configuration (--config), e.g. metrics-aware.
Writes OUT/summary.csv and PNG plots, and prints a table (mean ± sd over seeds). With --load
(a sweep of arrival speed-ups) every policy runs at every load, the plots show each metric against
the load, and a second table gives each policy's paired difference to kube-default (when run).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from extender.errors import ExtenderError

if TYPE_CHECKING:
    from extender.settings import Settings
    from extender.sim.http import Comparison
    from extender.sim.replay import ReplayResult
    from extender.sim.report import SummaryRow
    from extender.sim.saturation import SaturationResult

log = logging.getLogger(__name__)
FIRST_SEED = 42  # the OpenB artifact's seeds are 42..51
IN_TREE = {"least-allocated": "kube_default", "most-allocated": "most_allocated",
           "none": "no_resource_scoring"}
"""--in-tree choice -> the function of `extender.policies.baselines` scoring like it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--nodes", required=True, type=Path, help="node list CSV")
    parser.add_argument("--pods", required=True, type=Path, help="pod list CSV")
    parser.add_argument("--experiment", choices=("saturation", "replay"), default="saturation")
    parser.add_argument("--policy", default="random,best-fit,fgd",
                        help="comma-separated policy names (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per policy, seeds 42, 43, ...")
    parser.add_argument("--out", type=Path, default=Path("out/simulate"), help="output directory")
    parser.add_argument("--config", type=Path, default=Path("config/extender.yaml"),
                        help="extender settings whose profiles are policies (default: %(default)s)")
    parser.add_argument("--ratio", type=float, default=1.3,
                        help="saturation: arrived GPU demand / capacity at the end")
    parser.add_argument("--speedup", type=float, default=1.0,
                        help="replay: bring arrivals this many times closer (more load)")
    parser.add_argument("--load", type=_loads, default=None, metavar="L1,L2,...",
                        help="replay: sweep these arrival speed-ups (e.g. 1,5,10,20,40); "
                             "replaces --speedup")
    parser.add_argument("--extender-weight", type=float, default=5.0,
                        help="ours: kube-scheduler extender weight (scores 0..10 x weight x 10)")
    parser.add_argument("--in-tree", choices=tuple(IN_TREE), default="least-allocated",
                        help="ours: kube-scheduler's in-tree resource scoring around the extender "
                             "(none: the resource score plugins disabled, as in "
                             "manifests/overlays/gpu; default: %(default)s)")
    parser.add_argument("--http", action="store_true",
                        help="ours: send every decision through the extender served by gunicorn "
                             "on a loopback port (filter, prioritize, bind), check each against "
                             "the in-process answer, and fail on any difference")
    parser.add_argument("--rebalance", nargs="?", type=Path, default=None,
                        const=Path("config/rebalance.yaml"), metavar="REBALANCE_YAML",
                        help="replay: also run the rebalancer with these settings (default "
                             "file: %(const)s); its runs are named POLICY+rebalance")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _loads(text: str) -> list[float]:
    """`--load 1,5,10` -> [1.0, 5.0, 10.0]; argparse turns the ValueError into a usage error."""
    try:
        loads = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not loads or any(not load > 0 for load in loads):
        raise argparse.ArgumentTypeError(f"expected speed-ups > 0, got {text!r}")
    return loads


@dataclass
class SimulationRuns:
    rows: list[SummaryRow] = field(default_factory=list)
    saturation: list[SaturationResult] = field(default_factory=list)
    replay: list[ReplayResult] = field(default_factory=list)
    http: list[tuple[str, int, Comparison]] = field(default_factory=list)
    """(policy, seed, HTTP vs in-process comparison) of each run made with `http`."""


def simulate(nodes_path: Path, pods_path: Path, experiment: str, policies: Sequence[str],
             seeds: int, *, config: Path | None = None, ratio: float = 1.3,
             extender_weight: float = 5.0, in_tree: str = "least-allocated",
             speedup: float = 1.0, loads: Sequence[float] | None = None,
             settings: Settings | None = None, http: bool = False,
             rebalance: Path | None = None,
             progress: Callable[[str], None] | None = None) -> SimulationRuns:
    """Run every policy for `seeds` seeds (replay: at each of `loads`, default `speedup`);
    returns summary rows and the raw results. Profiles come from `settings`, else from the file
    `config` (read only when a profile is asked for). With `http`, ours' decisions go through
    the HTTP extender (a fresh server per run) and are compared with the in-process ones
    (`SimulationRuns.http`). With `rebalance` (a rebalancer settings file), replays also run the
    rebalancer (`extender.sim.rebalance`)."""
    from extender.openb import load_nodes, load_pods
    from extender.policies import baselines
    from extender.policies.fragmentation import TargetWorkload
    from extender.settings import load_settings
    from extender.sim import policies as registry
    from extender.sim.http import HttpPolicy, start_server
    from extender.sim.replay import run_replay
    from extender.sim.report import summarise
    from extender.sim.saturation import run_saturation

    if seeds < 1:
        raise ExtenderError(f"--seeds: expected at least 1, got {seeds}")
    if not policies:
        raise ExtenderError("--policy: name at least one policy")
    if loads is not None and experiment != "replay":
        raise ExtenderError("--load: only the replay has arrival times to speed up")
    if loads is not None and (not loads or any(not load > 0 for load in loads)):
        raise ExtenderError(f"--load: expected speed-ups > 0, got {list(loads)}")
    sweep = list(loads) if loads is not None else [speedup]
    nodes = load_nodes(nodes_path)
    pods = load_pods(pods_path)
    workload = TargetWorkload.from_tasks(pods.cpu_milli.tolist(), pods.num_gpu.tolist(),
                                         pods.gpu_milli.tolist(), pods.spec)
    if settings is None and (rebalance is not None
                             or any(p not in registry.BASELINE_NAMES for p in policies)):
        settings = load_settings(config)
    moves = None
    if rebalance is not None:
        from extender.rebalance.settings import load_rebalance_settings

        if experiment != "replay":
            raise ExtenderError("--rebalance: only with --experiment replay")
        assert settings is not None
        moves, _ = load_rebalance_settings(rebalance, extender=settings)
    out = SimulationRuns()
    if in_tree not in IN_TREE:
        raise ExtenderError(f"--in-tree: expected one of {', '.join(IN_TREE)}, got {in_tree!r}")
    tree = getattr(baselines, IN_TREE[in_tree])
    runs = [(name, load, seed) for name in policies
            for load in (sweep if experiment == "replay" else [speedup])
            for seed in range(FIRST_SEED, FIRST_SEED + seeds)]
    for name, load, seed in runs:
        # A fresh policy per run: ours keeps a placement ledger.
        policy = registry.build(name, nodes=nodes, workload=workload, settings=settings)
        server = None
        if isinstance(policy, registry.OursPolicy):
            policy.extender_weight = extender_weight
            policy.in_tree = tree
            if http:
                assert settings is not None
                server = start_server(settings, workload)
                policy = HttpPolicy(policy, server.url)
        result: SaturationResult | ReplayResult
        try:
            if experiment == "saturation":
                result = run_saturation(nodes, pods, policy, name=name, seed=seed,
                                        workload=workload, ratio=ratio)
                out.saturation.append(result)
            else:
                mover = None
                if moves is not None:
                    from extender.sim.rebalance import SimRebalancer

                    assert settings is not None
                    mover = SimRebalancer(moves, settings, nodes, pods, workload)
                label = f"{name}+rebalance" if mover is not None else name
                result = run_replay(nodes, pods, policy, name=label, seed=seed,
                                    speedup=load, mover=mover)
                out.replay.append(result)
        finally:
            if isinstance(policy, HttpPolicy):
                policy.session.close()
            if server is not None:
                server.stop()
                shutil.rmtree(server.workdir, ignore_errors=True)
        if isinstance(policy, HttpPolicy):
            out.http.append((name, seed, policy.comparison))
        out.rows.append(summarise(result))
        if progress:
            at = f" load {load:g}" if experiment == "replay" else ""
            progress(f"{name}{at} seed {seed}: {result.wall_s:.1f} s")
    return out


def run(args: argparse.Namespace) -> int:
    from extender.sim.report import comparison, plot, print_table, write_summary

    names = [p.strip() for p in args.policy.split(",") if p.strip()]
    outcome = simulate(args.nodes, args.pods, args.experiment, names, args.seeds,
                       config=args.config, ratio=args.ratio,
                       extender_weight=args.extender_weight, in_tree=args.in_tree,
                       speedup=args.speedup, loads=args.load, http=args.http,
                       rebalance=args.rebalance,
                       progress=log.info)
    summary = write_summary(outcome.rows, args.out / "summary.csv")
    print_table(outcome.rows, f"{args.experiment}: {args.pods.name} on {args.nodes.name}")
    if args.load is not None and "kube-default" in names:
        headers, rows = comparison(outcome.rows, "kube-default")
        print_table(outcome.rows, "paired difference to kube-default by seed (Δ)",
                    (headers, rows))
    print(f"wrote {summary}")
    if not args.no_plots:
        for path in plot(outcome.rows, args.out, outcome.saturation):
            print(f"wrote {path}")
    for result in outcome.replay:
        if args.rebalance is not None:
            print(f"{result.policy} seed {result.seed}: {result.evictions} evictions")
    failed = False
    for policy, seed, check in outcome.http:
        print(f"HTTP check {policy} seed {seed}: {check.decisions} decisions through gunicorn, "
              f"{check.mismatches} differ from in-process{': ' if check.mismatches else ''}"
              f"{check.first_mismatch}")
        failed = failed or check.mismatches > 0
    if args.http and not outcome.http:
        print("HTTP check: no policy of ours among --policy (baselines run in-process)")
    return 1 if failed else 0
