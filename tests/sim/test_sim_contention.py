"""The default profile under contention: it must not place like kube-default where that piles a
pod onto a node too small for it, nor where it takes the GPU node a big pod needs (the causes
found for issue 17, see benchmarks/RESULTS.md, "Load sweep and comparison")."""

from __future__ import annotations

import dataclasses

import msgspec
from sim_support import make_nodes, make_pods

from extender.policies.fragmentation import TargetWorkload
from extender.settings import Settings, load_settings
from extender.sim.policies import build
from extender.sim.replay import ReplayResult, run_replay
from tests.support import WITH_POD

POWER = "node_cpu_power_watts"
SMALL = (16000, 65536, 0, "")
LARGE = (40000, 131072, 0, "")
EPISODES = 20


def episodes() -> tuple[list[tuple[int, int, int, int]], list[tuple[float, float]], list[str]]:
    """Each episode on an idle cluster: a latency-sensitive pod requesting 24 of the large node's
    40 cores (it uses 20-90% of that), then, once the metrics show it, a best-effort pod of 14
    cores (it may use up to 1.5x). By requests the small node (16 cores) looks freer; by usage the
    large one has room. Both leave before the next episode."""
    specs, times, qos = [], [], []
    for k in range(EPISODES):
        start = k * 10_000.0
        specs += [(24000, 8192, 0, 0), (14000, 8192, 0, 0)]
        times += [(start, start + 5000.0), (start + 300.0, start + 5000.0)]
        qos += ["LS", "BE"]
    return specs, times, qos


def replay(settings: Settings, policy: str, seed: int = 42) -> ReplayResult:
    nodes = make_nodes([SMALL, LARGE])
    specs, times, qos = episodes()
    pods = make_pods(specs, times=times)
    pods = dataclasses.replace(pods, qos=tuple(qos))
    workload = TargetWorkload.from_tasks([s[0] for s in specs], [0] * len(specs),
                                         [0] * len(specs))
    chosen = build(policy, nodes=nodes, workload=workload, settings=settings)
    return run_replay(nodes, pods, chosen, name=policy, seed=seed)


def test_kube_default_piles_the_large_pod_onto_the_small_node() -> None:
    """The premise: by requests the small node wins, and it runs hot."""
    settings = load_settings("config/extender.yaml", environ={}, overrides=WITH_POD)
    result = replay(settings, "kube-default")
    assert result.placed == 2 * EPISODES
    assert result.hotspot_node_minutes > 100


def without_power(settings: Settings) -> Settings:
    """`settings` with the default profile's power term removed."""
    name = settings.policy.default
    profile = settings.policy.profiles[name]
    weights = {k: v for k, v in profile.weights.items() if k != POWER}
    return msgspec.structs.replace(settings, policy=msgspec.structs.replace(
        settings.policy, profiles={**settings.policy.profiles,
                                   name: msgspec.structs.replace(profile, weights=weights)}))


def test_score_with_pod_halves_kube_defaults_hot_spots_here() -> None:
    """Without the power term. With it (as shipped) the idle small node's lower draw outweighs
    the CPU term here and the profile places like kube-default (783 hot-spot node-min): the
    trade-off for the trace's hot spots and misses, see the test below and RESULTS.md."""
    settings = without_power(load_settings("config/extender.yaml", environ={},
                                           overrides=WITH_POD))
    default = settings.policy.default
    base = replay(settings, "kube-default")
    ours = replay(settings, default)
    assert ours.placed == 2 * EPISODES
    assert ours.hotspot_node_minutes <= 0.5 * base.hotspot_node_minutes


def test_without_scoring_with_the_pod_the_default_profile_places_like_kube_default() -> None:
    """What the profile did before: an idle node scores 10 whatever the pod's size, so the
    in-tree LeastAllocated decides (the switch is what makes the difference)."""
    settings = load_settings("config/extender.yaml", environ={}, overrides=WITH_POD)
    name = settings.policy.default
    profile = settings.policy.profiles[name]
    off = msgspec.structs.replace(profile, hotspot=msgspec.structs.replace(
        profile.hotspot, score_with_pod=False))
    old = msgspec.structs.replace(settings, policy=msgspec.structs.replace(
        settings.policy, profiles={**settings.policy.profiles, name: off}))
    assert profile.hotspot.score_with_pod
    base = replay(settings, "kube-default")
    before = replay(old, name)
    assert before.hotspot_node_minutes > 0.5 * base.hotspot_node_minutes


def gpu_episodes(settings: Settings, policy: str, seed: int = 42) -> ReplayResult:
    """Three CPU-only nodes and one 8-GPU node. Each episode: three 4-core CPU pods, one a
    minute, then a pod asking for 62 cores and all 8 GPUs, which only an empty GPU node holds.
    By requests the GPU node looks freest (64 cores), so LeastAllocated puts a CPU pod there."""
    nodes = make_nodes([(32000, 131072, 0, "")] * 3 + [(64000, 262144, 8, "V100M32")])
    specs, times = [], []
    for k in range(EPISODES // 2):
        start = k * 10_000.0
        for j in range(3):
            specs.append((4000, 8192, 0, 0))
            times.append((start + 60.0 * j, start + 3600.0))
        specs.append((62000, 65536, 8, 1000))
        times.append((start + 600.0, start + 3600.0))
    pods = dataclasses.replace(make_pods(specs, times=times), qos=tuple("LS" for _ in specs))
    workload = TargetWorkload.from_tasks([s[0] for s in specs], [s[2] for s in specs],
                                         [s[3] for s in specs])
    chosen = build(policy, nodes=nodes, workload=workload, settings=settings)
    return run_replay(nodes, pods, chosen, name=policy, seed=seed)


def test_the_power_term_keeps_cpu_pods_off_the_gpu_node_the_big_pod_needs() -> None:
    """The shipped default profile prefers the nodes drawing less power; idle GPUs draw, so CPU
    pods go to the CPU nodes and every big GPU pod finds the GPU node empty. Without the term
    the profile places like kube-default and every big pod is left unscheduled."""
    settings = load_settings("config/extender.yaml", environ={})
    default = settings.policy.default
    assert settings.policy.profiles[default].weights.get(POWER, 0) > 0
    assert gpu_episodes(settings, "kube-default").unscheduled == EPISODES // 2
    assert gpu_episodes(without_power(settings), default).unscheduled == EPISODES // 2
    ours = gpu_episodes(settings, default)
    assert ours.unscheduled == 0 and ours.placed == 4 * (EPISODES // 2)
