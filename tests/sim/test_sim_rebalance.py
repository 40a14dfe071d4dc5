"""The rebalancer in the replay: moves cost what they should, and moving off a hot node helps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from extender.cli import main
from extender.policies import baselines as A
from extender.policies.fragmentation import TargetWorkload
from extender.rebalance.settings import RebalanceSettings, SimulationSettings
from extender.sim.cluster import Cluster
from extender.sim.rebalance import SimRebalancer
from extender.sim.replay import Observation, run_replay
from tests.sim.sim_support import make_nodes, make_pods
from tests.support import OPENB, settings


@dataclass
class Scripted:
    """Moves task 0 to node 1 at the first tick, then nothing."""

    restart_cost_s: float
    interval_s: float = 60.0
    calls: list[Mapping[int, tuple[int, float]]] = field(default_factory=list)

    def moves(self, now: float, seen: Observation, cluster: Cluster,
              running: Mapping[int, tuple[int, float]]) -> list[tuple[int, int]]:
        self.calls.append(dict(running))
        return [(0, 1)] if len(self.calls) == 1 else []

    def refused(self) -> None:
        raise AssertionError("the move fits")


def test_a_moved_task_pays_its_restart_cost_in_its_deadline() -> None:
    # One task of 1000 s on an idle cluster: it misses only when the restart costs more than
    # the 10% deadline margin: (1000 + c - c) useful seconds in a window of 1000 + c.
    nodes = make_nodes([(10000, 65536, 0, ""), (10000, 65536, 0, "")])
    pods = make_pods([(1000, 1024, 0, 0), (1, 1, 0, 0)], times=[(0.0, 1000.0), (2000.0, 2001.0)],
                     qos="LS")
    cheap = Scripted(restart_cost_s=50.0)
    ok = run_replay(nodes, pods, A.kube_default, name="p", seed=0, mover=cheap)
    assert ok.evictions == 1 and ok.deadline_misses == 0
    assert cheap.calls[0] == {0: (0, 0.0)} and cheap.calls[-1] == {}  # departed after the move
    costly = run_replay(nodes, pods, A.kube_default, name="p", seed=0,
                        mover=Scripted(restart_cost_s=200.0))
    assert costly.evictions == 1 and costly.deadline_misses == 1
    assert costly.placed == ok.placed == 2


def test_the_rebalancer_moves_work_off_a_packed_hot_node() -> None:
    # best-fit packs three tasks onto node 0; their usage (seed 3) makes it hot for two hours.
    nodes = make_nodes([(10000, 65536, 0, ""), (10000, 65536, 0, "")])
    pods = make_pods([(3000, 1024, 0, 0)] * 3 + [(1, 1, 0, 0)],
                     times=[(0.0, 7200.0), (1.0, 7200.0), (2.0, 7200.0), (7100.0, 7101.0)])
    ext = settings()
    workload = TargetWorkload.from_tasks(pods.cpu_milli.tolist(), pods.num_gpu.tolist(),
                                         pods.gpu_milli.tolist(), pods.spec)
    without = run_replay(nodes, pods, A.best_fit, name="best-fit", seed=3)
    assert without.hotspot_node_minutes > 100  # the precondition: node 0 is hot throughout
    rules = RebalanceSettings(simulation=SimulationSettings(restart_cost_s=30.0))
    mover = SimRebalancer(rules, ext, nodes, pods, workload)
    moved = run_replay(nodes, pods, A.best_fit, name="best-fit", seed=3, mover=mover)
    assert moved.evictions == 1  # one move relieves it; the destination never turns hot
    assert moved.hotspot_node_minutes < without.hotspot_node_minutes / 5
    assert moved.deadline_misses <= without.deadline_misses


def test_cli_runs_the_rebalancer_in_the_replay(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    nodes = OPENB / "openb_node_list_all_node.csv"
    pods = OPENB / "openb_pod_list_cpu050.csv"
    code = main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--experiment",
                 "replay", "--policy", "best-fit", "--speedup", "400", "--rebalance",
                 str(Path("config/rebalance.yaml").resolve()), "--no-plots",
                 "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "best-fit+rebalance" in out and "evictions" in out
    assert main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--rebalance",
                 "--no-plots", "--out", str(tmp_path)]) == 2  # saturation: refused
