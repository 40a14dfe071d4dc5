"""Invariants of whole runs, determinism per seed, and the command line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sim_support import make_nodes, make_pods

from extender.cli import main
from extender.policies import baselines as A
from extender.policies.baselines import Bools, Choice, ClusterView, Task
from extender.policies.fragmentation import TargetWorkload, fgd_policy
from extender.sim import models
from extender.sim.replay import Observation, compress, run_replay
from extender.sim.report import SUMMARY_COLUMNS
from extender.sim.saturation import run_saturation, saturation_workload


def small_cluster():  # type: ignore[no-untyped-def]
    return make_nodes([(32000, 131072, 4, "T4"), (64000, 262144, 8, "V100M32"),
                       (16000, 65536, 2, "T4"), (32000, 131072, 0, "")])


def small_trace(n: int = 60, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    kinds = [(4000, 8192, 1, 500), (8000, 16384, 1, 1000), (16000, 32768, 2, 1000),
             (2000, 4096, 0, 0), (6000, 8192, 1, 250)]
    specs = [kinds[i] for i in rng.integers(len(kinds), size=n)]
    start = np.sort(rng.uniform(0, 3600, n))
    times = [(float(s), float(s + d)) for s, d in zip(start, rng.uniform(60, 1800, n), strict=True)]
    return make_pods(specs, times=times)


def test_saturation_workload_reaches_the_ratio_without_passing_it() -> None:
    pods = small_trace()
    capacity = 14_000
    arrivals = saturation_workload(pods, capacity, seed=1, ratio=1.3)
    total = int(arrivals.total_gpu_milli.sum())
    assert total <= 1.3 * capacity
    assert total > 1.3 * capacity - 2000  # stops at the first draw that would pass it


def test_saturation_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    nodes, pods = small_cluster(), small_trace()
    wl = TargetWorkload.from_tasks(pods.cpu_milli, pods.num_gpu, pods.gpu_milli)
    runs = [run_saturation(nodes, pods, A.random_policy, name="random", seed=s, workload=wl)
            for s in (5, 5, 6)]
    assert runs[0].curve.unallocated == runs[1].curve.unallocated
    assert runs[0].gpu_alloc_ratio == runs[1].gpu_alloc_ratio
    assert runs[0].curve.unallocated != runs[2].curve.unallocated


class _Watching:
    """best-fit, told the metrics before each decision (as the extender's engine is)."""

    def __init__(self) -> None:
        self.seen: list[Observation] = []
        self.used: list[int] = []

    def __call__(self, task: Task, view: ClusterView, ok: Bools, rng: np.random.Generator
                 ) -> Choice:
        return A.best_fit(task, view, ok, rng)

    def observe(self, observation: Observation) -> None:
        self.seen.append(observation)

    def placed(self, node: int, task: Task, name: str) -> None:
        self.used.append(node)


def test_saturation_shows_power_rising_on_the_nodes_that_run_tasks() -> None:
    # A profile weighting a power term must see power in this experiment too, or the GPU
    # allocation it is checked on would be that of the profile without the term.
    nodes, pods = small_cluster(), small_trace()
    wl = TargetWorkload.from_tasks(pods.cpu_milli, pods.num_gpu, pods.gpu_milli)
    watching = _Watching()
    run_saturation(nodes, pods, watching, name="best-fit", seed=3, workload=wl)
    first, last = watching.seen[0].power_watts, watching.seen[-1].power_watts
    idle = np.array([models.idle_power(c / 1000, models.gpu_power(nodes.models[m])[0] * k
                                       if m >= 0 else 0.0)
                     for c, m, k in zip(nodes.cpu_milli, nodes.model, nodes.gpus, strict=True)])
    assert np.array_equal(first, idle)
    used = sorted(set(watching.used[:-1]))
    assert used and np.all(last[used] > idle[used])
    assert np.array_equal(np.delete(last, used), np.delete(idle, used))


@pytest.mark.parametrize("policy", ["best-fit", "fgd", "random"])
def test_saturation_never_over_allocates_and_conserves_pods(policy: str) -> None:
    nodes, pods = small_cluster(), small_trace()
    wl = TargetWorkload.from_tasks(pods.cpu_milli, pods.num_gpu, pods.gpu_milli)
    fn = fgd_policy(wl, nodes.models) if policy == "fgd" else {
        "best-fit": A.best_fit, "random": A.random_policy}[policy]
    result = run_saturation(nodes, pods, fn, name=policy, seed=3, workload=wl)
    arrivals = saturation_workload(pods, int(nodes.gpus.sum()) * 1000, 3)
    assert result.placed + result.failed == len(arrivals)
    assert 0.0 < result.gpu_alloc_ratio <= 1.0
    assert all(0.0 <= u <= 1.0 for u in result.curve.unallocated)
    assert all(f >= 0.0 for f in result.curve.fragmented)


@pytest.mark.parametrize("policy", [A.kube_default, A.best_fit, A.trimaran_tlp])
def test_replay_invariants(policy: A.Policy) -> None:
    nodes, pods = small_cluster(), small_trace(120)
    result = run_replay(nodes, pods, policy, name="p", seed=2)
    assert result.placed + result.unscheduled == len(pods)
    assert result.energy_kwh >= result.idle_energy_kwh > 0
    assert 0.0 <= result.deadline_miss_rate <= 1.0
    assert result.hotspot_node_minutes >= 0.0
    assert 0.0 <= result.gpu_alloc_ratio <= 1.0


def test_replay_is_deterministic_per_seed() -> None:
    nodes, pods = small_cluster(), small_trace(120)
    a = run_replay(nodes, pods, A.random_policy, name="r", seed=4)
    b = run_replay(nodes, pods, A.random_policy, name="r", seed=4)
    assert (a.energy_kwh, a.deadline_misses, a.hotspot_node_minutes) == (
        b.energy_kwh, b.deadline_misses, b.hotspot_node_minutes)


def test_spreading_avoids_contention_and_packing_saves_energy() -> None:
    # Two identical nodes, two best-effort tasks each asking for 40% of a node (they may use up
    # to 150% of that); a third, tiny task arrives an hour later and ends the measurement.
    nodes = make_nodes([(10000, 65536, 0, ""), (10000, 65536, 0, "")])
    pods = make_pods([(4000, 1024, 0, 0)] * 2 + [(1, 1, 0, 0)],
                     times=[(0.0, 7200.0), (1.0, 7200.0), (3600.0, 3601.0)], qos="BE")
    packed = run_replay(nodes, pods, A.best_fit, name="best-fit", seed=0)
    spread = run_replay(nodes, pods, A.kube_default, name="kube-default", seed=0)
    assert spread.deadline_misses == 0 and spread.hotspot_node_minutes == 0
    assert packed.energy_kwh < spread.energy_kwh  # one active node instead of two


def test_compress_keeps_durations_and_order() -> None:
    pods = small_trace()
    fast = compress(pods, 10.0)
    assert np.allclose(fast.deletion - fast.creation, pods.deletion - pods.creation)
    assert (np.argsort(fast.creation) == np.argsort(pods.creation)).all()
    with pytest.raises(ValueError):
        compress(pods, 0)


def write_trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,32000,131072,4,T4\n"
                     "n1,64000,262144,8,V100M32\n")
    pods = tmp_path / "pods.csv"
    rows = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,creation_time,deletion_time"]
    rows += [f"p{i},{2000 + 1000 * (i % 3)},4096,1,{250 * (1 + i % 4)},,LS,{i * 10},{i * 10 + 600}"
             for i in range(30)]
    pods.write_text("\n".join(rows) + "\n")
    return nodes, pods


def test_cli_writes_summary_with_exact_columns_and_plots(tmp_path: Path) -> None:
    nodes, pods = write_trace(tmp_path)
    out = tmp_path / "out"
    code = main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--experiment",
                 "saturation", "--policy", "random,fgd", "--seeds", "2", "--out", str(out)])
    assert code == 0
    with (out / "summary.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [(r[0], r[1]) for r in rows[1:]] == [("random", "42"), ("random", "43"),
                                                ("fgd", "42"), ("fgd", "43")]
    assert (out / "unallocated_gpu_vs_arrived.png").stat().st_size > 0
    assert (out / "gpu_alloc_ratio.png").exists()


def test_cli_replay_runs_a_shipped_profile(tmp_path: Path) -> None:
    nodes, pods = write_trace(tmp_path)
    out = tmp_path / "out"
    code = main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--experiment",
                 "replay", "--policy", "kube-default,metrics-aware", "--out", str(out),
                 "--no-plots"])
    assert code == 0
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["policy"] for r in rows] == ["kube-default", "metrics-aware"]
    assert all(float(r["energy_kwh"]) > 0 for r in rows)


def test_cli_unknown_policy_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    nodes, pods = write_trace(tmp_path)
    code = main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--policy", "fastest",
                 "--out", str(tmp_path / "o"), "--config", "config/extender.yaml"])
    assert code == 2
    assert "unknown policy 'fastest'" in capsys.readouterr().err


def test_cli_replay_without_times_says_to_use_saturation(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    nodes, _ = write_trace(tmp_path)
    pods = tmp_path / "bare.csv"
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1000,1024,1,500\n")
    code = main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--experiment",
                 "replay", "--policy", "random", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "use the saturation experiment" in capsys.readouterr().err


@pytest.mark.parametrize(("nodes_csv", "pods_csv", "message"), [
    ("sn,cpu_milli,memory_mib,gpu,model\nn1,64000,262144,0,\n",
     "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1000,1024,1,500\n",
     "the node list has no GPU"),
    ("sn,cpu_milli,memory_mib,gpu,model\nn1,64000,262144,2,V100M16\n",
     "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1000,1024,0,0\n",
     "the pod list has no GPU task"),
])
def test_cli_saturation_without_gpus_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes_csv: str, pods_csv: str,
        message: str) -> None:
    (tmp_path / "nodes.csv").write_text(nodes_csv)
    (tmp_path / "pods.csv").write_text(pods_csv)
    code = main(["simulate", "--nodes", str(tmp_path / "nodes.csv"), "--pods",
                 str(tmp_path / "pods.csv"), "--policy", "fgd", "--out", str(tmp_path / "o"),
                 "--no-plots"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_load_sweep_runs_every_policy_at_every_load_and_plots_against_load(
        tmp_path: Path) -> None:
    nodes, pods = write_trace(tmp_path)
    out = tmp_path / "sweep"
    code = main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--experiment",
                 "replay", "--policy", "kube-default,metrics-aware", "--load", "1,10",
                 "--seeds", "2", "--out", str(out)])
    assert code == 0
    with (out / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["policy"], r["load"], r["seed"]) for r in rows] == [
        (p, load, seed) for p in ("kube-default", "metrics-aware") for load in ("1", "10")
        for seed in ("42", "43")]
    assert all(float(r["slowdown_p99"]) >= 1.0 and r["energy_above_idle_kwh"] for r in rows)
    for name in ("hotspot_vs_load", "deadline_miss_vs_load", "slowdown_p99_vs_load",
                 "energy_above_idle_vs_load", "gpu_alloc_vs_load"):
        assert (out / f"{name}.png").stat().st_size > 0


def test_cli_load_is_a_replay_option_and_must_be_positive(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = write_trace(tmp_path)
    code = main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--experiment",
                 "saturation", "--policy", "random", "--load", "1,5", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "only the replay" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--nodes", str(nodes), "--pods", str(pods), "--experiment", "replay",
              "--load", "1,0", "--out", str(tmp_path / "o")])
    assert "speed-ups > 0" in capsys.readouterr().err


def test_comparison_pairs_every_policy_with_kube_default_by_seed() -> None:
    from extender.sim.report import SummaryRow, comparison

    def row(policy: str, seed: int, hot: float) -> SummaryRow:
        return SummaryRow(policy, seed, 10.0, 0.9, 0.1, hot, 0.01, 1.0, 0.2, 1.0, 5.0)

    rows = [row("kube-default", 42, 100), row("kube-default", 43, 300),
            row("any-new-policy", 42, 40), row("any-new-policy", 43, 260)]
    headers, table = comparison(rows, "kube-default", {"any-new-policy": "learned"})
    assert headers[:4] == ["load", "policy", "kind", "seeds"]
    new = next(r for r in table if r[1] == "any-new-policy")
    # Means 150 vs 200 with a seed-to-seed sd of 156; paired by seed -60 and -40: -50 ± 14.
    assert new[:4] == ["10", "any-new-policy", "learned", "2"]
    assert new[4] == "150 ± 156 (Δ -50 ± 14)"
