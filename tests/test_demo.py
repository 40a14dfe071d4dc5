"""`extender demo` (the `make demo` job): its helpers, and the whole run end to end."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from extender.demo import cli as demo
from extender.demo.emulator import EmulatedNode
from extender.demo.recordings import load_recordings, node_mapping, rewrite, without_nodes
from extender.errors import ConfigError, ExtenderError
from extender.policies.scoring import format_value
from extender.settings import load_settings

REPO = Path(__file__).resolve().parents[1]


def node(name: str, gpus: int = 0) -> EmulatedNode:
    return EmulatedNode(name=name, ip="10.20.0.1", cpu_milli=32000, memory_mib=65536, gpus=gpus,
                        gpu_model="T4" if gpus else "")


def test_recordings_are_the_filter_and_prioritize_calls_in_both_modes() -> None:
    recordings = load_recordings(demo.DEFAULT_RECORDINGS)
    assert {r.verb for r in recordings} == {"filter", "prioritize"}
    assert {r.mode for r in recordings} == {"names", "nodes"}
    full = next(r for r in recordings if r.mode == "nodes")
    assert full.node_names and full.body["NodeNames"] is None


def test_a_directory_without_recordings_or_with_a_bad_file_is_a_config_error(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no filter/prioritize recordings"):
        load_recordings(tmp_path)
    (tmp_path / "broken.json").write_text('{"mode": "names"}')
    with pytest.raises(ConfigError, match="broken.json: not a kube-scheduler recording"):
        load_recordings(tmp_path)


def test_recorded_gpu_nodes_map_onto_emulated_gpu_nodes() -> None:
    recordings = load_recordings(demo.DEFAULT_RECORDINGS)
    nodes = [node("cpu-a"), node("cpu-b"), node("gpu-a", 2), node("gpu-b", 4), node("gpu-c", 8)]
    nodes += [node(f"cpu-{i}") for i in range(10)]
    mapping = node_mapping(recordings, nodes)
    gpu = {n.name for n in nodes if n.gpus}
    assert {mapping[name] for name in ("node-0", "node-4", "node-8")} == gpu
    assert len(set(mapping.values())) == len(mapping)  # never two recorded nodes on one
    assert len(mapping) == len(nodes)  # the large recordings' names stay unmapped


def test_rewrite_renames_node_names_everywhere_and_nothing_else() -> None:
    body = {"NodeNames": ["node-1", "node-2"], "Pod": {"metadata": {"name": "node-1-pod"}},
            "Nodes": {"items": [{"metadata": {"name": "node-1",
                                              "labels": {"kubernetes.io/hostname": "node-1"}}}]},
            "NodeNameToMetaVictims": {"node-2": {"Pods": []}}}
    out = rewrite(body, {"node-1": "a", "node-2": "b"})
    assert out["NodeNames"] == ["a", "b"]
    assert out["Pod"]["metadata"]["name"] == "node-1-pod"
    assert out["Nodes"]["items"][0]["metadata"] == {"name": "a",
                                                    "labels": {"kubernetes.io/hostname": "a"}}
    assert out["NodeNameToMetaVictims"] == {"b": {"Pods": []}}
    assert body["NodeNames"] == ["node-1", "node-2"]  # the recording itself is untouched


def test_without_nodes_drops_rejected_candidates_in_either_mode() -> None:
    names = {"NodeNames": ["a", "b", "c"], "Nodes": None}
    full = {"NodeNames": None, "Nodes": {"items": [{"metadata": {"name": n}} for n in "abc"]}}
    assert without_nodes(names, {"b"})["NodeNames"] == ["a", "c"]
    kept = without_nodes(full, {"a", "c"})["Nodes"]["items"]
    assert [item["metadata"]["name"] for item in kept] == ["b"]
    assert without_nodes(names, set()) is names


def test_demo_settings_point_at_the_local_prometheus_with_short_windows(tmp_path: Path) -> None:
    path = demo.demo_settings(demo.DEFAULT_CONFIG, tmp_path, "http://127.0.0.1:9")
    settings = load_settings(path, environ={})
    assert settings.prometheus.url == "http://127.0.0.1:9"
    assert settings.cache.refresh_interval_s == demo.REFRESH_S
    cpu = settings.metric("cpu_utilisation").query
    assert f"[{demo.RATE_WINDOW}]" in cpu and "$rate_window" not in cpu
    assert all(p.hotspot.window_s == demo.HOTSPOT_WINDOW_S
               for p in settings.policy.profiles.values())
    shipped = load_settings(demo.DEFAULT_CONFIG, environ={})
    assert [e.name for e in settings.catalog] == [e.name for e in shipped.catalog]


def test_a_broken_base_config_fails_before_anything_starts(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(f"catalog_file: {REPO / 'config' / 'catalog.yaml'}\n"
                    "server: {unknown_nodes: shrug}\n")
    with pytest.raises(ConfigError, match="server.unknown_nodes"):
        demo.demo_settings(base, tmp_path, "http://127.0.0.1:9")


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (0.123, "ratio", "12%"), (2.5e6, "bytes/s", "2.5 MB/s"), (2**31, "bytes", "2.0 GiB"),
    (412.3, "W", "412 W"), (3.0, "", "3"), (None, "ratio", "n/a"),
])
def test_values_are_shown_in_human_units(value: float | None, unit: str, shown: str) -> None:
    assert format_value(value, unit) == shown


@pytest.mark.prometheus
def test_make_demo_prints_reasons_and_a_ranking_and_stops_everything(tmp_path: Path) -> None:
    """What `make demo` runs: the real CLI, a real Prometheus, Pushgateway and gunicorn."""
    run = subprocess.run([sys.executable, "-m", "extender.cli", "demo", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    out = run.stdout
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Filter reasons, as kube-scheduler would show them.
    assert "node is NotReady (kube-state-metrics)" in out
    assert re.search(r"cpu \d+% > 90%", out)
    # A ranking: rank, emulated node, score 0..10, and the terms behind it.
    assert re.search(r"prioritize default/cache-plain \(profile metrics-aware\)", out)
    assert re.search(r"│ 1 │ openb-node-\d{4} │\s+(10|\d) │ \w+ .*-> \d+\.\d\d", out)
    # The GPU pod's profile keeps FGD's best nodes, from kube-state-metrics' allocation.
    assert "fragments GPUs more than on the best nodes (FGD)" in out
    # The burst spreads over several nodes, and every process it started is gone.
    spread = re.search(r"(\d+) pods landed on (\d+) nodes", out)
    assert spread and int(spread.group(2)) > 1
    # The replay: the throttled node misses deadlines, the sidecars' pushes reach the extender
    # through the Pushgateway and Prometheus, and its filter then keeps pods away from it.
    replay = re.search(r"(\d+) of (\d+) tasks placed .* The throttled node (openb-node-\d{4}) took "
                       r"(\d+); the extender saw its misses (\d+) s into the replay and then "
                       r"rejected it in (\d+) filter calls", " ".join(out.split()))
    assert replay, out[-3000:]
    assert int(replay.group(4)) >= 1 and int(replay.group(6)) >= 1
    row = re.search(replay.group(3) + r" \(throttled x3\)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│"
                    r"\s*(\d+)", out)
    assert row and int(row.group(3)) >= 1, "the sidecar counted no miss on the throttled node"
    assert int(row.group(4)) == 0, "pods still went to the throttled node after its misses showed"
    assert (tmp_path / "demo-replay.png").stat().st_size > 10_000
    assert "catalog entries without series: none" in out
    assert "demo finished" in out
    for url in re.findall(r"(?:Prometheus|extender) (http://127\.0\.0\.1:\d+)", out):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=2)


@pytest.mark.parametrize("argv", [["--nodes", "1"], ["--burst", "-1"], ["--burst-cpu", "0"]])
def test_demo_refuses_nonsense_arguments_before_starting_anything(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    with pytest.raises(ConfigError, match="--nodes must be >= 2, --burst >= 0"):
        demo.run(parser.parse_args(argv))


def test_missing_prometheus_is_a_clear_error_and_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus binary on it
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    with pytest.raises(ExtenderError, match="prometheus(-pushgateway)? is not installed: run `make deps`"):
        demo.run(parser.parse_args(["--nodes", "4"]))
    assert list(tmp_path.iterdir()) == []  # the demo's work directory is gone


def test_incidents_land_on_the_mapped_nodes_and_show_in_the_readings() -> None:
    from extender.demo.emulator import Emulator, load_fleet

    nodes = load_fleet(demo.DEFAULT_NODE_LIST, limit=16, seed=1)
    mapping = node_mapping(load_recordings(demo.DEFAULT_RECORDINGS), nodes)
    emulator = Emulator(nodes, seed=1)
    incidents = {i.node for i in demo.stage_incidents(emulator, mapping)}
    assert incidents == {mapping[n] for n in ("node-3", "node-10", "node-6", "node-9", "node-4")}
    assert emulator.reading(mapping["node-3"]).conditions["Ready"] == "false"
    assert emulator.reading(mapping["node-10"]).conditions["MemoryPressure"] == "true"
    assert emulator.reading(mapping["node-6"]).cpu_utilisation > 0.9
    memory = emulator.reading(mapping["node-9"])
    assert memory.memory_available_bytes < 0.1 * memory.memory_total_bytes


def test_burst_pods_are_the_recorded_pod_renamed_with_the_asked_cpu() -> None:
    template = next(r for r in load_recordings(demo.DEFAULT_RECORDINGS)
                    if r.pod == "cache-burst-0" and r.verb == "filter").body
    first = demo._burst_body(template, 0, 8.0, ["a", "b"])
    second = demo._burst_body(template, 1, 8.0, ["a", "b"])
    assert first["Pod"]["metadata"]["name"] == "demo-burst-0"
    assert first["Pod"]["metadata"]["uid"] != second["Pod"]["metadata"]["uid"]
    assert first["Pod"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "8"
    assert first["NodeNames"] == ["a", "b"] and first["Nodes"] is None
    assert template["Pod"]["metadata"]["name"] == "cache-burst-0"  # template untouched


def test_trace_slice_spreads_arrivals_and_clamps_lifetimes() -> None:
    from extender.demo.replay import MAX_TASK_S, MIN_TASK_S, trace_slice

    tasks = trace_slice(demo.DEFAULT_POD_LIST, 30, 40.0, seed=1)
    arrivals = [t.arrive_s for t in tasks]
    assert len(tasks) == 30 and arrivals == sorted(arrivals)
    assert arrivals[0] == 0.0 and arrivals[-1] == pytest.approx(40.0)
    assert all(MIN_TASK_S <= t.expected_s <= MAX_TASK_S for t in tasks)
    assert tasks == trace_slice(demo.DEFAULT_POD_LIST, 30, 40.0, seed=1)
    assert tasks != trace_slice(demo.DEFAULT_POD_LIST, 30, 40.0, seed=2)


def test_replay_counts_whole_gpus_and_gpu_shares_like_the_device_plugin() -> None:
    from extender.demo.replay import cluster_of
    from extender.policies.baselines import Task, feasible, pick_gpus

    def task(cpu: int, gpus: int, milli: int) -> Task:
        return Task(cpu_milli=cpu, memory_mib=1024, num_gpu=gpus, gpu_milli=milli)

    cluster = cluster_of([EmulatedNode(name="n", ip="10.20.0.1", cpu_milli=16000,
                                       memory_mib=65536, gpus=2, gpu_model="T4")])

    def fits(t: Task) -> bool:
        return bool(feasible(t, cluster.view())[0])

    def take(t: Task) -> tuple[int, ...]:
        slots = pick_gpus(t, cluster.gpu_free[0])
        cluster.place(0, t, slots)
        return slots

    share, whole = task(2000, 1, 600), task(4000, 1, 1000)
    slots = take(share)
    assert slots == (0,) and cluster.gpu_free[0].tolist() == [400, 1000]
    assert fits(task(1000, 1, 400)) and fits(whole)  # GPU 1 is still idle
    assert not fits(task(1000, 2, 1000))
    second = take(task(1000, 1, 300))
    assert second == (0,) and cluster.gpu_free[0].tolist() == [100, 1000]  # best fit
    cluster.release(0, share, slots)
    assert cluster.gpu_free[0].tolist() == [700, 1000] and cluster.cpu_free[0] == 16000 - 1000
    assert not fits(task(20000, 0, 0))


def test_replay_pods_reach_the_extender_with_their_gpu_share() -> None:
    from extender.demo.replay import TraceTask, pod_body
    from extender.policies.baselines import Task
    from extender.policies.model import pod_demand
    from extender.protocol import ExtenderArgs, decode

    task = Task(cpu_milli=6000, memory_mib=12288, num_gpu=1, gpu_milli=460)
    body = pod_body(TraceTask("p", task, 0.0, 6.0), "u1", ["n1", "n2"])
    args = decode(body, ExtenderArgs)
    demand = pod_demand(args.Pod)
    assert (demand.cpu_cores, demand.gpus, demand.gpu_milli) == (6.0, 1, 460)
    assert args.NodeNames == ["n1", "n2"]
