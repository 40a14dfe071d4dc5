"""Train the `learned` score term's model and write its versioned model file.

From the simulator's replay (features as the extender sees them, with the replay's metrics lag;
label: the task's deadline miss), split by time: the first --train-share of each replay trains,
the rest and every --test-pods list test:
  extender learn --from replay --nodes data/openb/openb_node_list_all_node.csv \\
      --pods data/openb/openb_pod_list_default.csv --speedup 20,40 \\
      --behaviour kube-default,random --test-pods data/openb/openb_pod_list_cpu050.csv \\
      --out config/models/learned.json

From a live cluster, through the Monitoring API (Prometheus history of node metrics; label: the
deadline sidecars' deadline_miss_ratio within --horizon after each time):
  extender learn --from monitoring --url http://extender.kube-system:8888 --start -6h \\
      --step 30s --horizon 5m --out model.json

Point `policy.learned_model` at the file and weight the `learned` term in a profile.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from extender.errors import ExtenderError

if TYPE_CHECKING:
    from extender.learning.dataset import Samples
    from extender.policies.learned import ModelFile
    from extender.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--from", dest="source", choices=("replay", "monitoring"),
                        default="replay", help="where the samples come from")
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument("--train-share", type=float, default=0.7,
                        help="share of each run's time (from its start) that trains; the rest "
                             "tests (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=30, help="boosting rounds (model size)")
    parser.add_argument("--min-leaf", type=int, default=50,
                        help="fewest samples per tree leaf (lower only for tiny data sets)")
    replay = parser.add_argument_group("replay")
    replay.add_argument("--nodes", type=Path, help="node list CSV")
    replay.add_argument("--pods", type=Path, help="pod list CSV to train on")
    replay.add_argument("--test-pods", default="", help="comma-separated pod lists to test on")
    replay.add_argument("--speedup", default="20,40",
                        help="comma-separated arrival speed-ups, one replay each")
    replay.add_argument("--behaviour", default="kube-default,random",
                        help="comma-separated policies whose placements are the samples")
    replay.add_argument("--seed", type=int, default=42)
    replay.add_argument("--config", type=Path, default=Path("config/extender.yaml"),
                        help="extender settings (catalog, profiles) (default: %(default)s)")
    live = parser.add_argument_group("monitoring")
    live.add_argument("--url", help="the extender's base URL (Monitoring API)")
    live.add_argument("--token-file", type=Path, default=None,
                      help="bearer token for an extender with server.auth on (e.g. "
                           "/var/run/secrets/kubernetes.io/serviceaccount/token)")
    live.add_argument("--start", default="-6h", help="Unix seconds or -<duration> from now")
    live.add_argument("--end", default="0", help="Unix seconds or -<duration> (0: now)")
    live.add_argument("--step", default="30s", help="time grid of the samples")
    live.add_argument("--horizon", default="5m", help="a miss within this long after t labels t")
    live.add_argument("--metrics", default="", help="comma-separated node metrics (default: "
                      "cpu_utilisation,memory_available_ratio,gpu_utilisation,deadline_miss_ratio)")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def without_learned(settings: Settings) -> Settings:
    """The settings minus the profiles that use the `learned` term: training must not need a
    model (the one it replaces may be absent or stale)."""
    from extender.policies.learned import profile_uses_learned

    profiles = {name: p for name, p in settings.policy.profiles.items()
                if not profile_uses_learned(p)}
    if settings.policy.default not in profiles:
        raise ExtenderError(f"{settings.source}: the default profile {settings.policy.default!r} "
                            "uses the learned term: it cannot feed the training")
    return msgspec.structs.replace(settings, policy=msgspec.structs.replace(
        settings.policy, profiles=profiles))


def replay_samples(nodes_path: Path, pods_path: Path, *, settings: Settings,
                   behaviours: Sequence[str], speedups: Sequence[float], seed: int,
                   progress: Callable[[str], None] = print) -> list[Samples]:
    """One sample set per (behaviour, speed-up) replay of `pods_path`."""
    from extender.learning.dataset import from_replay
    from extender.openb import load_nodes, load_pods
    from extender.policies.fragmentation import TargetWorkload
    from extender.sim import policies as registry

    base = without_learned(settings)
    nodes, pods = load_nodes(nodes_path), load_pods(pods_path)
    workload = TargetWorkload.from_tasks(pods.cpu_milli.tolist(), pods.num_gpu.tolist(),
                                         pods.gpu_milli.tolist(), pods.spec)
    out = []
    for name in behaviours:
        for speedup in speedups:
            started = time.perf_counter()
            behaviour = registry.build(name, nodes=nodes, workload=workload, settings=base)
            feed = registry.OursPolicy(base, base.policy.default, nodes, workload)
            part = from_replay(nodes, pods, behaviour, feed, speedup=speedup, seed=seed,
                               description=f"{pods_path.name} x{speedup:g} under {name}",
                               max_staleness_s=base.cache.max_staleness_s)
            progress(f"{part.description}: {len(part)} samples, {part.positives} misses "
                     f"({time.perf_counter() - started:.0f} s)")
            out.append(part)
    return out


def learn_from_replay(nodes: Path, pods: Path, *, settings: Settings, behaviours: Sequence[str],
                      speedups: Sequence[float], seed: int, train_share: float,
                      test_pods: Sequence[Path] = (), rounds: int = 30,
                      min_samples_in_leaf: int = 50,
                      progress: Callable[[str], None] = print) -> ModelFile:
    """Train on the first `train_share` of each replay of `pods`; test on the rest and on the
    replays of `test_pods` (all of their time)."""
    from extender.learning.dataset import Samples
    from extender.learning.train import TrainParams, train

    parts = replay_samples(nodes, pods, settings=settings, behaviours=behaviours,
                           speedups=speedups, seed=seed, progress=progress)
    halves = [part.split(train_share) for part in parts]
    described = (f"{pods.name} on {nodes.name}, speed-ups {','.join(f'{s:g}' for s in speedups)},"
                 f" behaviour {','.join(behaviours)}, seed {seed}")
    train_part = Samples.concat([h[0] for h in halves], described)
    tests = [("test: rest of the time", Samples.concat([h[1] for h in halves], "rest"))]
    for path in test_pods:
        other = replay_samples(nodes, path, settings=settings, behaviours=behaviours,
                               speedups=speedups, seed=seed, progress=progress)
        tests.append((f"test: {path.name}", Samples.concat(other, path.name)))
    return train(train_part, tests, source="replay", description=described,
                 split=f"by time: the first {train_share:.0%} of each replay trains, the last "
                       f"{1 - train_share:.0%} and the other pod lists test",
                 params=TrainParams(rounds=rounds, min_samples_in_leaf=min_samples_in_leaf))


def learn_from_monitoring(url: str, *, start: float, end: float, step_s: float,
                          horizon_s: float, metrics: Sequence[str], train_share: float,
                          rounds: int = 30, min_samples_in_leaf: int = 50,
                          token_file: Path | None = None) -> ModelFile:
    """Train on the first `train_share` of the history window, test on the rest."""
    from extender.client import MonitoringClient
    from extender.learning.dataset import LIVE_METRICS, from_monitoring
    from extender.learning.train import TrainParams, train

    samples = from_monitoring(MonitoringClient(url, token_file=token_file), start=start, end=end,
                              step_s=step_s, horizon_s=horizon_s,
                              metrics=tuple(metrics) or LIVE_METRICS)
    early, late = samples.split(train_share)
    return train(early, [("test: rest of the time", late)], source="monitoring",
                 description=samples.description,
                 split=f"by time: the first {train_share:.0%} of the window trains, the rest "
                       "tests",
                 params=TrainParams(rounds=rounds, min_samples_in_leaf=min_samples_in_leaf))


def _time(text: str, now: float) -> float:
    from extender.settings import duration_s

    if text.startswith("-"):
        return now - duration_s(text[1:])
    value = float(text)
    return now if value == 0 else value


def run(args: argparse.Namespace) -> int:
    from extender.learning.train import summary, write_model
    from extender.settings import duration_s, load_settings

    if not 0 < args.train_share < 1:
        raise ExtenderError(f"--train-share: expected 0 < share < 1, got {args.train_share}")
    try:
        if args.source == "replay":
            if args.nodes is None or args.pods is None:
                raise ExtenderError("--from replay needs --nodes and --pods")
            model = learn_from_replay(
                args.nodes, args.pods, settings=load_settings(args.config),
                behaviours=_csv(args.behaviour), speedups=[float(s) for s in _csv(args.speedup)],
                seed=args.seed, train_share=args.train_share,
                test_pods=[Path(p) for p in _csv(args.test_pods)], rounds=args.rounds,
                min_samples_in_leaf=args.min_leaf)
        else:
            if not args.url:
                raise ExtenderError("--from monitoring needs --url")
            now = time.time()
            model = learn_from_monitoring(
                args.url, start=_time(args.start, now), end=_time(args.end, now),
                step_s=duration_s(args.step), horizon_s=duration_s(args.horizon),
                metrics=_csv(args.metrics), train_share=args.train_share, rounds=args.rounds,
                min_samples_in_leaf=args.min_leaf, token_file=args.token_file)
    except ValueError as exc:
        raise ExtenderError(str(exc)) from exc
    path = write_model(args.out, model)
    for line in summary(model):
        print(line)
    print(f"wrote {path}")
    return 0
