"""The simulator's decisions through the real HTTP extender (gunicorn), checked against in-process.

Server side (`python -m extender.sim.http --bind HOST:PORT --settings FILE`): the production app
(`extender.server.create_app`, the `extender serve` gunicorn options) with two differences that
make it replayable: its clock is the simulator's, and its metrics come from the simulator instead
of Prometheus. Before a decision the simulator PUTs `/sim/state` (the NodeTable the extender would
hold, with its allocation state, and the simulated time); the cache swaps it in through its normal
refresh path. Bind is enabled with a binder that creates nothing, so the extender learns each
placement from the bind verb, as a binding extender does.

Client side (`HttpPolicy`): for every decision, what kube-scheduler sends: `filter` with the
nodes that fit by requests, `prioritize` with the nodes that passed (skipped when one did), and
`bind` for the node finally chosen. The same decision is also taken in-process by `OursPolicy`
(`filter`, then `prioritize` on the passed nodes, as here) and the two answers are compared:
`mismatches` counts decisions where they differ in any verdict or score.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import requests
from flask import Blueprint, Response, current_app, request

from extender import protocol as wire
from extender.localserver import LocalServer, free_port
from extender.metrics.cache import RefreshStatus
from extender.policies.baselines import Bools, Choice, ClusterView, Task
from extender.policies.fragmentation import TargetWorkload, derived_terms
from extender.policies.model import Allocation, NodeTable, request_pod
from extender.settings import Settings
from extender.sim.policies import OursPolicy
from extender.sim.replay import Observation

STATE_PATH = "/sim/state"
PODS_PATH = "/sim/pods"


class Workload(msgspec.Struct, array_like=True):
    """The simulator's target workload for the `gpu_fragmentation` term (as sent to the server)."""

    cpu_milli: list[int]
    gpu_milli: list[int]
    num_gpu: list[int]
    spec: list[list[str]]
    weight: list[float]

    @classmethod
    def of(cls, wl: TargetWorkload) -> Workload:
        return cls(wl.cpu_milli.tolist(), wl.gpu_milli.tolist(), wl.num_gpu.tolist(),
                   [list(s) for s in wl.spec], wl.weight.tolist())

    def target(self) -> TargetWorkload:
        return TargetWorkload(np.array(self.cpu_milli, np.int64), np.array(self.gpu_milli, np.int64),
                              np.array(self.num_gpu, np.int64), tuple(map(tuple, self.spec)),
                              np.array(self.weight, np.float64))


class State(msgspec.Struct, array_like=True):
    """A NodeTable and the simulated time, as sent to the server (numpy arrays as lists)."""

    now: float
    names: list[str]
    metrics: list[str]
    values: list[list[float]]
    sampled_at: list[list[float]]
    cpu_free_milli: list[float]
    memory_free_mib: list[float]
    gpu_free_milli: list[list[float]]
    gpu_model: list[str]

    @classmethod
    def of(cls, table: NodeTable, now: float) -> State:
        alloc = table.allocation
        assert alloc is not None
        return cls(now, list(table.names), list(table.metrics), table.values.tolist(),
                   table.sampled_at.tolist(), alloc.cpu_free_milli.tolist(),
                   alloc.memory_free_mib.tolist(), alloc.gpu_free_milli.tolist(),
                   list(alloc.gpu_model))

    def table(self) -> NodeTable:
        n = len(self.names)
        gpu_free = np.array(self.gpu_free_milli, dtype=np.float64).reshape(n, -1)
        return NodeTable(
            names=tuple(self.names), metrics=tuple(self.metrics),
            values=np.array(self.values, dtype=np.float64).reshape(n, len(self.metrics)),
            sampled_at=np.array(self.sampled_at, dtype=np.float64).reshape(n, len(self.metrics)),
            built_at=self.now,
            allocation=Allocation(cpu_free_milli=np.array(self.cpu_free_milli),
                                  memory_free_mib=np.array(self.memory_free_mib),
                                  gpu_free_milli=gpu_free, gpu_model=tuple(self.gpu_model)))


# --- server -------------------------------------------------------------------------------------

class SimClock:
    """The simulated time, set by each state the simulator sends."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FeedFetcher:
    """A cache fetcher whose every refresh returns the table the simulator sent last."""

    def __init__(self, metrics: Sequence[str]) -> None:
        self.table = NodeTable.empty(list(metrics))

    def collect(self, at: float) -> tuple[NodeTable, RefreshStatus]:
        return self.table, RefreshStatus(started_at=at, prometheus_up=True,
                                         series={m: len(self.table.names)
                                                 for m in self.table.metrics})


class SimPods:
    """The simulator's stand-in for the API server behind bind: binding succeeds (the
    simulator places the pod itself) and reading a pod returns what the simulator put there
    (`PUT /sim/pods`) before binding it, as the API server holds every pod kube-scheduler binds."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], wire.Pod] = {}

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        del namespace, name, uid, node

    def read(self, namespace: str, name: str) -> wire.Pod | None:
        return self.pods.pop((namespace, name), None)  # read once, by bind: the store stays small


def create_sim_app(settings: Settings, workload: TargetWorkload) -> Any:
    """The production app on the simulator's clock and metrics, with `PUT /sim/state`, and the
    simulator's target workload for `gpu_fragmentation`."""
    from extender.monitoring.catalog import load_for
    from extender.server import create_app

    clock = SimClock()
    pods = SimPods()
    fetcher = FeedFetcher([entry.name for entry in settings.catalog])
    feed = Blueprint("sim", __name__)

    @feed.put(STATE_PATH)
    def put_state() -> Response:
        state = msgspec.msgpack.decode(request.get_data(), type=State)
        fetcher.table = state.table()
        clock.now = state.now
        current_app.extensions["extender"].cache.refresh()
        return Response(status=204)

    @feed.put(PODS_PATH)
    def put_pod() -> Response:
        pod = wire.decode(request.get_data(), wire.Pod)
        pods.pods[(pod.metadata.namespace, pod.metadata.name)] = pod
        return Response(status=204)

    server = msgspec.structs.replace(settings.server, bind_enabled=True)
    settings = msgspec.structs.replace(settings, server=server)
    app = create_app(settings, load_for(settings), fetcher, binder=pods, clock=clock,
                     start_refresher=False, blueprints=[feed], derived_terms=derived_terms(workload))
    return app


def main(argv: list[str] | None = None) -> int:
    """Serve the simulator's extender under gunicorn, as `extender serve` does."""
    from extender import serving

    parser = argparse.ArgumentParser(prog="python -m extender.sim.http")
    parser.add_argument("--settings", required=True, type=Path,
                        help="the Settings as JSON (written by the simulator)")
    parser.add_argument("--workload", required=True, type=Path,
                        help="the target workload as msgpack (written by the simulator)")
    serving.add_arguments(parser)
    args = parser.parse_args(argv)
    settings = msgspec.json.decode(args.settings.read_bytes(), type=Settings)
    workload = msgspec.msgpack.decode(args.workload.read_bytes(), type=Workload).target()
    options = serving.gunicorn_options(args, settings.server)
    # One listener: the simulator PUTs its state and calls the verbs on the same port.
    serving.run_gunicorn(options, functools.partial(create_sim_app, settings, workload))
    return 0


# --- client -------------------------------------------------------------------------------------

def start_server(settings: Settings, workload: TargetWorkload,
                 workdir: Path | None = None) -> LocalServer:
    """Start the simulator's extender under gunicorn on a free loopback port."""
    where = Path(workdir or tempfile.mkdtemp(prefix="extender-sim-http-"))
    settings_file = where / "settings.json"
    # The server runs in `where`: files named relative to the settings file must still resolve.
    source = settings.source if settings.source.startswith("<") else \
        str(Path(settings.source).resolve())
    settings_file.write_bytes(msgspec.json.encode(msgspec.structs.replace(settings,
                                                                          source=source)))
    workload_file = where / "workload.msgpack"
    workload_file.write_bytes(msgspec.msgpack.encode(Workload.of(workload)))
    port = free_port()
    argv = [sys.executable, "-m", "extender.sim.http", "--settings", str(settings_file),
            "--workload", str(workload_file), "--bind", f"127.0.0.1:{port}"]
    return LocalServer("extender-sim", port, argv, where, "/healthz").start()


def pod_of(policy: OursPolicy, task: Task, name: str) -> wire.Pod:
    """The wire Pod of a simulated task, naming the profile under test."""
    per_gpu = task.gpu_milli if task.shares_gpu else 1000
    return request_pod(name=name, namespace="sim", uid=name, cpu_milli=task.cpu_milli,
                       memory_mib=task.memory_mib, gpus=task.num_gpu, gpu_milli=per_gpu,
                       gpu_models=[policy.nodes.models[m] for m in task.models if m >= 0],
                       annotations={"extract.io/policy": policy.profile})


@dataclass
class Comparison:
    decisions: int = 0
    mismatches: int = 0
    first_mismatch: str = ""


class HttpPolicy:
    """Ours through the HTTP extender; every decision also taken in-process and compared."""

    def __init__(self, local: OursPolicy, url: str) -> None:
        self.local = local
        self.url = url
        self.session = requests.Session()  # keep-alive, as kube-scheduler's client
        self.comparison = Comparison()
        self._count = 0

    def observe(self, observation: Observation) -> None:
        self.local.observe(observation)

    def _post(self, verb: str, body: object) -> Any:
        response = self.session.post(f"{self.url}/{verb}", data=wire.encode(body),
                                     headers={"Content-Type": "application/json"}, timeout=30)
        response.raise_for_status()
        return response.json()

    def __call__(self, task: Task, view: ClusterView, ok: Bools,
                 rng: np.random.Generator) -> Choice:
        local = self.local
        self._count += 1
        name = f"pod-{self._count}"
        table = local.table(view)
        self.session.put(f"{self.url}{STATE_PATH}",
                         data=msgspec.msgpack.encode(State.of(table, local.clock)),
                         timeout=30).raise_for_status()
        rows = np.flatnonzero(ok)
        offered = [local.names[i] for i in rows]
        pod = pod_of(local, task, name)
        filtered = self._post("filter", wire.ExtenderArgs(Pod=pod, NodeNames=offered))
        passed = set(filtered.get("NodeNames") or [])
        scores = dict.fromkeys(passed, 0)
        if len(passed) > 1:
            ranked = self._post("prioritize", wire.ExtenderArgs(Pod=pod, NodeNames=[
                n for n in offered if n in passed]))
            scores = {item["Host"]: item["Score"] for item in ranked}
        extender = np.array([scores.get(n, -np.inf) for n in offered], dtype=np.float64)
        expected = local.extender_scores(task, table, offered)
        self.comparison.decisions += 1
        if not np.array_equal(extender, expected):
            self.comparison.mismatches += 1
            if not self.comparison.first_mismatch:
                differ = [n for n, a, b in zip(offered, extender, expected, strict=True) if a != b]
                self.comparison.first_mismatch = (
                    f"{name}: {len(differ)} nodes differ, e.g. {differ[:3]}")
        return local.combine(task, view, ok, rng, extender)

    def placed(self, node: int, task: Task, name: str) -> None:
        local = self.local
        local.placed(node, task, name)
        pod = f"pod-{self._count}"
        # Bind reads the pod back from the API server: here, the simulator's stand-in.
        self.session.put(f"{self.url}{PODS_PATH}", data=wire.encode(pod_of(local, task, pod)),
                         timeout=30).raise_for_status()
        self._post("bind", wire.ExtenderBindingArgs(PodName=pod, PodNamespace="sim", PodUID=pod,
                                                    Node=local.names[node]))


if __name__ == "__main__":
    raise SystemExit(main())
