"""The default profile under contention: it must not place like kube-default where that piles a
pod onto a node too small for it (the cause found for issue 17, see benchmarks/RESULTS.md)."""

from __future__ import annotations

import dataclasses

import msgspec
from sim_support import make_nodes, make_pods

from extender.policies.fragmentation import TargetWorkload
from extender.settings import Settings, load_settings
from extender.sim.policies import build
from extender.sim.replay import ReplayResult, run_replay
from tests.support import WITH_POD

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


def test_score_with_pod_halves_kube_defaults_hot_spots_here() -> None:
    settings = load_settings("config/extender.yaml", environ={}, overrides=WITH_POD)
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
