"""Run the self-contained demo: emulated OpenB nodes, a real Prometheus, the extender under
gunicorn, and requests recorded from a real kube-scheduler.

Steps:
1. Emulate `--nodes` nodes of the OpenB node list (CPU-only and GPU nodes, every GPU model) and
   serve their node-exporter, kube-state-metrics, cAdvisor, dcgm-exporter and Scaphandre series.
   A few nodes get trouble on purpose: NotReady, memory pressure, a CPU hog, low memory, busy GPUs.
2. Start a real Prometheus scraping them every second.
3. Start the extender for real (`extender serve`: gunicorn, gthread) with the shipped
   configuration and catalog, pointed at that Prometheus, with a 1 s refresh and 10 s rate
   windows (the settings file is written to a temporary directory; shipped files are untouched).
4. Once its cache is warm, replay the recorded filter/prioritize requests with their node names
   rewritten onto emulated nodes (bodies otherwise as recorded), then a burst of pods placed one
   after another, as kube-scheduler would, to show hot-spot compensation spreading them.
5. Print the filter reasons, the rankings with each node's top score contributions, the burst's
   placements, and the self-check; stop everything (also on Ctrl-C or error).

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extender.demo import DATA
from extender.demo.recordings import Recording, load_recordings, node_mapping, rewrite, without_nodes

if TYPE_CHECKING:  # heavy imports stay inside run(), so that `extender --help` is instant
    import requests
    from rich.console import Console

    from extender.demo.emulator import EmulatedNode, Emulator
    from extender.policies.explain import Decision, NodeExplanation
    from extender.settings import Settings

DEFAULT_NODE_LIST = DATA / "openb" / "openb_node_list_all_node.csv"
DEFAULT_POD_LIST = DATA / "openb" / "openb_pod_list_default.csv"
DEFAULT_RECORDINGS = DATA / "kube-scheduler"
DEFAULT_CONFIG = DATA.parent / "config" / "extender.yaml"

SCRAPE_INTERVAL_S = 1.0
RATE_WINDOW = "10s"  # ten 1 s samples: rate() is steady, and shows a change within seconds
REFRESH_S = 1.0
MAX_STALENESS_S = 15.0  # scrape (1 s) + refresh (1 s) + Prometheus' discovery delay (5 s), twice
HOTSPOT_WINDOW_S = 40.0
HOTSPOT_SETTLE_S = 14.0  # a placement is in the 10 s rate window after scrape + refresh + window
HTTP_TIMEOUT_S = 5.0
WARM_METRICS = ("cpu_utilisation", "memory_available_ratio", "host_power_watts")
WARM_TOLERANCE = 0.03  # CPU utilisation points between the cache and the emulated truth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=48,
                        help="emulated nodes sampled from the OpenB node list (default 48)")
    parser.add_argument("--seed", type=int, default=1, help="sampling and load seed (default 1)")
    parser.add_argument("--burst", type=int, default=8,
                        help="pods in the hot-spot burst (default 8)")
    parser.add_argument("--burst-cpu", type=float, default=8.0,
                        help="CPU cores each burst pod requests and uses (default 8)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="extender settings to start from (default config/extender.yaml)")
    parser.add_argument("--node-list", type=Path, default=DEFAULT_NODE_LIST,
                        help="OpenB node list CSV")
    parser.add_argument("--recordings", type=Path, default=DEFAULT_RECORDINGS,
                        help="directory of recorded kube-scheduler requests")
    parser.add_argument("--warmup-timeout", type=float, default=60.0,
                        help="seconds to wait for the extender's cache to be warm (default 60)")
    parser.add_argument("--pod-list", type=Path, default=DEFAULT_POD_LIST,
                        help="OpenB pod list CSV for the compressed replay")
    parser.add_argument("--replay-tasks", type=int, default=40,
                        help="trace tasks in the compressed replay (default 40; 0 skips it)")
    parser.add_argument("--replay-span", type=float, default=40.0,
                        help="seconds over which the replayed arrivals are spread (default 40)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="where the replay's timeline plot goes (default out/demo)")


def demo_settings(base: Path, workdir: Path, prometheus_url: str) -> Path:
    """Write the demo's settings and catalog into `workdir`; return the settings path.

    Starts from `base`, points it at `prometheus_url`, refreshes every second and shortens the
    catalog's rate windows and the hot-spot window to the demo's time scale; files named
    relative to `base` are made absolute. Raises ConfigError (via load_settings) if the result
    is invalid.
    """
    import yaml

    from extender.settings import Settings, load_settings, merge, read_yaml

    data = read_yaml(base)
    profiles = data.get("policy", {}).get("profiles", {})
    overrides: dict[str, Any] = {
        "prometheus": {"url": prometheus_url},
        "cache": {"refresh_interval_s": REFRESH_S, "max_staleness_s": MAX_STALENESS_S,
                  "rate_window": RATE_WINDOW},
        "catalog_file": str((base.parent / data.get("catalog_file", "catalog.yaml")).resolve()),
        "policy": {"profiles": {name: {"hotspot": {"window_s": HOTSPOT_WINDOW_S,
                                                   "settle_s": HOTSPOT_SETTLE_S}}
                                for name in profiles}},
    }
    relative = (data.get("monitoring") or {}).get("catalog_file",
                                                  Settings().monitoring.catalog_file)
    overrides["monitoring"] = {"catalog_file": str((base.parent / relative).resolve())}
    model = (data.get("policy") or {}).get("learned_model")
    if model:  # the `learned` term's model file, also relative to `base`
        overrides["policy"]["learned_model"] = str((base.parent / model).resolve())
    path = workdir / "extender.yaml"
    path.write_text(yaml.safe_dump(merge(data, overrides), sort_keys=False))
    load_settings(path, environ={})
    return path


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    node: str
    what: str


def stage_incidents(emulator: Emulator, mapping: dict[str, str]) -> list[Incident]:
    """Give some of the replayed nodes trouble, so that filter has something to say.

    The recorded names were chosen for where they appear: node-3 is the node the recording
    extender rejected, node-6, -9 and -10 are CPU nodes offered to every 12-candidate pod (and
    not to the 20-core `big` pod, which keeps its candidates), node-4 is a GPU pod's candidate.
    """
    from extender.demo.emulator import EmulatedPod

    incidents = []

    def node(recorded: str) -> str | None:
        return mapping.get(recorded)

    if (name := node("node-3")) is not None:
        emulator.set_condition(name, "Ready", "false")
        incidents.append(Incident(name, "kubelet stopped posting status: Ready=false"))
    if (name := node("node-10")) is not None:
        emulator.set_condition(name, "MemoryPressure", "true")
        incidents.append(Incident(name, "MemoryPressure=true"))
    if (name := node("node-6")) is not None:
        cores = emulator.reading(name).cores
        emulator.set_background(name, cpu=0.0)
        emulator.place(EmulatedPod.single("batch", "cpu-hog", cpu_cores=0.96 * cores,
                                  memory_bytes=2 * 1024**3, usage_factor=1.0), name)
        incidents.append(Incident(name, f"a pod keeps {0.96 * cores:.0f} of {cores} cores busy"))
    if (name := node("node-9")) is not None:
        emulator.set_background(name, memory=0.95)
        incidents.append(Incident(name, "a memory leak: 95% of memory used"))
    if (name := node("node-4")) is not None and emulator.reading(name).gpus:
        emulator.set_background(name, gpu=0.9)
        incidents.append(Incident(name, "its GPUs are 90% busy"))
    return incidents


def run(args: argparse.Namespace) -> int:
    import shutil
    import sys
    import tempfile
    import time
    from contextlib import ExitStack

    import requests
    from rich.console import Console

    from extender import localserver
    from extender.demo import launcher
    from extender.demo.emulator import Emulator, EmulatorServer, load_fleet
    from extender.errors import ConfigError, ExtenderError
    from extender.settings import load_settings

    if args.nodes < 2 or args.burst < 0 or args.burst_cpu <= 0:
        raise ConfigError("--nodes must be >= 2, --burst >= 0 and --burst-cpu > 0")
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="extender-demo-"))
    try:
        with ExitStack() as stack:
            nodes = load_fleet(args.node_list, limit=args.nodes, seed=args.seed)
            recordings = load_recordings(args.recordings)
            mapping = node_mapping(recordings, nodes)
            emulator = Emulator(nodes, seed=args.seed)
            incidents = stage_incidents(emulator, mapping)
            server = stack.enter_context(EmulatorServer(emulator))
            (workdir / "prometheus").mkdir()
            (workdir / "pushgateway").mkdir()
            gateway = launcher.pushgateway(workdir=workdir / "pushgateway")
            with console.status("starting the Pushgateway"):
                stack.enter_context(gateway.start())
            # honor_labels: the sidecars' node and worker labels must win over the scrape's.
            gateway_target = launcher.ScrapeTarget("pushgateway", (f"127.0.0.1:{gateway.port}",),
                                                     honor_labels=True)
            # Kepler too, on every node (its series are shown; Scaphandre's values win in the
            # power terms where a node runs both).
            kepler_nodes = [node.name for node in emulator.nodes]
            prometheus = launcher.prometheus([*server.scrape_targets(kepler_nodes=kepler_nodes),
                                              gateway_target],
                                               scrape_interval_s=SCRAPE_INTERVAL_S,
                                               workdir=workdir / "prometheus")
            with console.status("starting Prometheus"):
                stack.enter_context(prometheus.start())
            settings_path = demo_settings(args.config, workdir, prometheus.url)
            settings = load_settings(settings_path, environ={})
            port = localserver.free_port()
            extender = localserver.LocalServer(
                "extender", port,
                [sys.executable, "-m", "extender.cli", "--log-level", "WARNING", "serve",
                 "--config", str(settings_path), "--bind", f"127.0.0.1:{port}",
                 "--prometheus-url", prometheus.url,  # wins over an EXTENDER_PROMETHEUS__URL
                 "--workers", "1", "--threads", "4",
                 # One port: the demo calls the verbs and reads the Monitoring API at one URL.
                 "--monitoring-bind", ""],
                workdir, "/healthz")
            with console.status("starting the extender (gunicorn)"):
                stack.enter_context(extender.start())
            session = stack.enter_context(requests.Session())
            _print_setup(console, nodes, incidents, prometheus.url, extender.url)
            with console.status("waiting for the extender's cache to be warm"):
                warm_s = _wait_warm(session, extender.url, emulator, args.warmup_timeout)
            console.print(f"cache warm after {warm_s:.1f} s (scrape {SCRAPE_INTERVAL_S:g} s, "
                          f"refresh {REFRESH_S:g} s, rate windows {RATE_WINDOW})\n")
            demo = _Demo(console, session, extender.url, emulator, settings)
            demo.replay(recordings, mapping)
            demo.burst(recordings, args.burst, args.burst_cpu)
            if args.replay_tasks:
                _replay(console, session, extender.url, emulator, gateway.url, args)
            demo.selfcheck()
            console.print(f"\n[bold green]demo finished[/bold green] in "
                          f"{time.monotonic() - started:.0f} s; stopping the extender, "
                          f"Prometheus and the emulator")
    except (localserver.ServerError, TimeoutError, requests.RequestException) as exc:
        # Everything is stopped by now; the logs are still there for the message.
        raise ExtenderError(f"{exc}\n{_log_tails(workdir)}") from exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _replay(console: Console, session: requests.Session, url: str, emulator: Emulator,
            pushgateway: str, args: argparse.Namespace) -> None:
    """The compressed trace replay with deadline sidecars (see demo_replay)."""
    from extender.demo.replay import SLOWDOWN, Replay, trace_slice

    tasks = trace_slice(args.pod_list, args.replay_tasks, args.replay_span, seed=args.seed)
    replay = Replay(console, session, url, emulator, pushgateway)
    try:
        console.rule("compressed trace replay")
        console.print(
            f"{len(tasks)} consecutive tasks of {args.pod_list.name}, arrivals spread over "
            f"{args.replay_span:g} s, each running its trace lifetime scaled alike (6..20 s). "
            f"The node the extender picks for the first task is throttled: its tasks take "
            f"{SLOWDOWN:g}x their expected time, which no exporter shows. A deadline sidecar per "
            f"node reports misses to the Pushgateway every second.")
        with console.status("replaying (real time)"):
            outcome = replay.run(tasks)
        replay.summary(tasks, outcome, args.out)
    finally:
        replay.stop()


def _log_tails(workdir: Path, lines: int = 15) -> str:
    """The end of each server log under `workdir`, for error messages."""
    parts = []
    for log in sorted(workdir.rglob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _print_setup(console: Console, nodes: list[EmulatedNode], incidents: list[Incident],
                 prometheus: str, extender: str) -> None:
    from rich.table import Table

    gpu = [n for n in nodes if n.gpus]
    models = sorted({n.gpu_model for n in gpu})
    console.rule("[bold]extract-extender demo")
    console.print(f"{len(nodes)} emulated OpenB nodes ({len(nodes) - len(gpu)} CPU-only, "
                  f"{len(gpu)} with {sum(n.gpus for n in gpu)} GPUs: {', '.join(models)}), "
                  f"node-exporter identifying them by IP only")
    console.print(f"Prometheus {prometheus} (scrape every {SCRAPE_INTERVAL_S:g} s), "
                  f"extender {extender} (gunicorn)")
    table = Table(title="trouble staged on purpose", title_justify="left")
    table.add_column("node")
    table.add_column("what the exporters report")
    for incident in incidents:
        table.add_row(incident.node, incident.what)
    console.print(table)


def _wait_warm(session: requests.Session, url: str, emulator: Emulator,
               timeout_s: float) -> float:
    """Seconds until the extender's cache holds fresh CPU, memory and power data for every node,
    with CPU utilisation within `WARM_TOLERANCE` of the emulated truth.

    Fresh is not enough: while a series is younger than the rate window, Prometheus' rate()
    extrapolates over the part it has seen and underestimates, so new nodes look busy at first.
    """
    import time

    from extender import localserver

    started = time.monotonic()
    truth = {r.node: r.cpu_utilisation for r in emulator.readings()}

    def warm() -> bool:
        view = session.get(f"{url}/api/v1/nodes", timeout=HTTP_TIMEOUT_S).json()
        settled = set()
        for node in view["nodes"]:
            metrics = node["metrics"]
            cpu = metrics.get("cpu_utilisation", {}).get("value")
            fresh = all(metrics.get(m, {}).get("fresh") for m in WARM_METRICS)
            if fresh and cpu is not None and node["name"] in truth \
                    and abs(cpu - truth[node["name"]]) <= WARM_TOLERANCE:
                settled.add(node["name"])
        return settled >= truth.keys()

    localserver.wait_until(warm, timeout_s=timeout_s, interval_s=0.5,
                          what="settled metrics for every emulated node in the extender's cache")
    return time.monotonic() - started


class _Demo:
    """Talks to the running extender and prints what it answers."""

    def __init__(self, console: Console, session: requests.Session, url: str,
                 emulator: Emulator, settings: Settings) -> None:
        self.console = console
        self.session = session
        self.url = url
        self.emulator = emulator
        self.units = {entry.name: entry.unit for entry in settings.catalog}
        self.prefix = settings.server.url_prefix

    def post(self, verb: str, body: dict[str, Any]) -> bytes:
        answer = self.session.post(f"{self.url}{self.prefix}/{verb}", json=body,
                                   timeout=HTTP_TIMEOUT_S)
        answer.raise_for_status()
        content: bytes = answer.content
        return content

    def filter(self, body: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        import msgspec

        from extender import protocol as wire

        result = wire.decode(self.post("filter", body), wire.ExtenderFilterResult)
        if result.Error:
            raise RuntimeError(f"filter answered an error: {result.Error}")
        if result.NodeNames is not None:
            passed = list(result.NodeNames)
        else:
            items = result.Nodes.items if result.Nodes else []
            passed = [msgspec.json.decode(item)["metadata"]["name"] for item in items]
        return passed, {**result.FailedNodes, **result.FailedAndUnresolvableNodes}

    def prioritize(self, body: dict[str, Any]) -> list[tuple[str, int]]:
        from extender import protocol as wire

        scores = wire.decode(self.post("prioritize", body), list[wire.HostPriority])
        return sorted(((s.Host, s.Score) for s in scores), key=lambda hs: (-hs[1], hs[0]))

    def decision(self, pod: str) -> Decision | None:
        import msgspec

        from extender.policies.explain import Decision

        answer = self.session.get(f"{self.url}/api/v1/decisions",
                                  params={"pod": pod, "limit": "1"}, timeout=HTTP_TIMEOUT_S)
        answer.raise_for_status()
        decisions = msgspec.json.decode(answer.content, type=dict[str, list[Decision]])
        return decisions["decisions"][0] if decisions["decisions"] else None

    def replay(self, recordings: list[Recording], mapping: dict[str, str]) -> None:
        """Replay each recording onto the emulated nodes; print one row per pod and mode."""
        from rich.table import Table

        table = Table(title="recorded kube-scheduler requests, node names rewritten onto the "
                      "emulated nodes", title_justify="left")
        for column in ("pod", "mode", "candidates", "filter", "prioritize: best three"):
            table.add_column(column)
        rows: dict[tuple[str, str], list[str]] = {}
        rejected: dict[tuple[str, str], set[str]] = {}
        reasons: dict[str, tuple[str, list[str]]] = {}
        rankings: list[tuple[str, list[tuple[str, int]]]] = []
        skipped = [r for r in recordings if not set(r.node_names) <= mapping.keys()]
        for recording in recordings:
            if recording in skipped:
                continue
            body = rewrite(recording.body, mapping)
            pod = _pod_key(body)
            key = (pod, recording.mode)
            row = rows.setdefault(key, [pod, recording.mode, str(len(recording.node_names)),
                                        "-", "-"])
            if recording.verb == "filter":
                passed, failed = self.filter(body)
                rejected[key] = set(failed)
                for node, reason in failed.items():
                    reasons.setdefault(node, (reason, []))[1].append(pod)
                row[3] = f"{len(passed)} pass, {len(failed)} rejected"
            else:
                # kube-scheduler offers prioritize only the nodes every filter passed.
                ranking = self.prioritize(without_nodes(body, rejected.get(key, set())))
                rankings.append((pod, ranking))
                row[4] = ", ".join(f"{host} {score}" for host, score in ranking[:3])
        for row in rows.values():
            table.add_row(*row)
        self.console.print(table)
        if skipped:
            needed = len(set().union(*(r.node_names for r in recordings)))
            self.console.print(f"[dim]{len(skipped)} recordings with up to "
                               f"{max(len(r.node_names) for r in skipped)} candidates were "
                               f"skipped: they name more nodes than are emulated (run with "
                               f"--nodes {needed} to include them)[/dim]")
        self._print_reasons(reasons)
        shown: set[str] = set()
        for pod, ranking in rankings:
            # One ranking per kind of pod: both modes and every burst pod score alike.
            kind = pod.split("-", 1)[-1].rstrip("0123456789-")
            if kind not in shown and len(ranking) >= 2:
                shown.add(kind)
                self._print_ranking(pod, ranking)

    def _print_reasons(self, reasons: dict[str, tuple[str, list[str]]]) -> None:
        from rich.table import Table

        table = Table(title="filter: why nodes were rejected (FailedNodes as kube-scheduler "
                      "shows them; CPU includes placements not yet in the metrics)",
                      title_justify="left")
        table.add_column("node")
        table.add_column("reason (first time)")
        table.add_column("rejected for")
        for node, (reason, pods) in sorted(reasons.items()):
            table.add_row(node, reason, _plural(len(set(pods)), "pod"))
        self.console.print(table)

    def _print_ranking(self, pod: str, ranking: list[tuple[str, int]]) -> None:
        from rich.table import Table

        decision = self.decision(pod)
        explained = {n.node: n for n in decision.nodes} if decision else {}
        profile = decision.profile if decision else "?"
        table = Table(title=f"prioritize {pod} (profile {profile}): ranking and top contributions",
                      title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("node")
        table.add_column("score", justify="right")
        table.add_column("top contributions (value, weight -> points of 10)")
        for rank, (node, score) in enumerate(ranking[:5], start=1):
            table.add_row(str(rank), node, str(score), self._contributions(explained.get(node)))
        self.console.print(table)

    def _contributions(self, node: NodeExplanation | None) -> str:
        if node is None:
            return "[dim]not in the decision's breakdown[/dim]"
        terms = sorted(node.terms, key=lambda t: -t.contribution)[:3]
        parts = [f"{t.metric} {self._value(t.metric, t.value)} w{t.weight:g} -> "
                 f"{t.contribution:.2f}" for t in terms]
        if node.pending_cpu_cores:
            parts.append(f"pending {node.pending_cpu_cores:g} cores")
        return "; ".join(parts) or "[dim]no fresh terms[/dim]"

    def _value(self, metric: str, value: float | None) -> str:
        from extender.policies.scoring import format_value

        return format_value(value, self.units.get(metric, ""))

    def burst(self, recordings: list[Recording], count: int, cpu_cores: float) -> None:
        """Place `count` pods one after another, each on its best-scored node."""
        from rich.table import Table

        from extender.demo.emulator import EmulatedPod

        if count == 0:
            return
        template = next((r for r in recordings if r.mode == "names" and r.verb == "filter"
                         and "burst" in r.pod), None) or recordings[0]
        names = sorted(n.name for n in self.emulator.nodes)
        table = Table(title=f"burst: {count} pods of {cpu_cores:g} cores, placed one after "
                      "another on the best-scored node", title_justify="left")
        for column in ("pod", "rejected", "placed on", "score", "runner-up",
                       "winner's CPU (metrics + pending)", "first winner's score now"):
            table.add_column(column)
        first: str | None = None
        placed: list[str] = []
        for i in range(count):
            body = _burst_body(template.body, i, cpu_cores, names)
            passed, failed = self.filter(body)
            if not passed:
                table.add_row(_pod_key(body), str(len(failed)), "[red]no node passed[/red]",
                              "", "", "", "")
                continue
            ranking = self.prioritize({**body, "NodeNames": passed})
            node, score = ranking[0]
            first = first or node
            runner_up = f"{ranking[1][0]} {ranking[1][1]}" if len(ranking) > 1 else "-"
            first_now = next((str(s) for n, s in ranking if n == first),
                             failed.get(first, "not offered"))
            table.add_row(_pod_key(body), str(len(failed)), node, str(score), runner_up,
                          self._cpu_seen(_pod_key(body), node), first_now)
            self.emulator.place(EmulatedPod.single("default", body["Pod"]["metadata"]["name"],
                                           cpu_cores=cpu_cores, memory_bytes=2 * 1024**3,
                                           usage_factor=1.0), node)
            placed.append(node)
        self.console.print(table)
        self.console.print(
            f"{len(placed)} pods landed on {len(set(placed))} nodes: each placement counts as "
            f"load on its node until the metrics show it (hot-spot compensation), so the burst "
            f"does not pile onto the node that looked idlest a moment ago.")

    def _cpu_seen(self, pod: str, node: str) -> str:
        """The winner's CPU term in the pod's decision, and the pending cores behind it."""
        decision = self.decision(pod)
        explained = next((n for n in decision.nodes if n.node == node), None) if decision else None
        if explained is None:
            return "-"
        cpu = next((t.value for t in explained.terms if t.metric == "cpu_utilisation"), None)
        return f"{self._value('cpu_utilisation', cpu)} ({explained.pending_cpu_cores:g} cores pending)"

    def selfcheck(self) -> None:
        check = self.session.get(f"{self.url}/api/v1/selfcheck", timeout=HTTP_TIMEOUT_S).json()
        empty = ", ".join(check.get("empty_entries", [])) or "none"
        unmatched = check.get("unmatched_identities", {})
        self.console.print(
            f"self-check: Prometheus up {check.get('prometheus_up')}, "
            f"{check.get('kubernetes_nodes')} nodes from kube_node_info, catalog entries without "
            f"series: {empty}, exporter identities "
            f"matching no node: {sum(len(v) for v in unmatched.values())}")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pod_key(body: dict[str, Any]) -> str:
    meta = (body.get("Pod") or {}).get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def _burst_body(template: dict[str, Any], index: int, cpu_cores: float,
                names: list[str]) -> dict[str, Any]:
    """The recorded burst pod, renamed, requesting `cpu_cores`, offered every emulated node."""
    body: dict[str, Any] = json.loads(json.dumps(template))
    meta = body["Pod"]["metadata"]
    meta["name"] = f"demo-burst-{index}"
    meta["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"extender-demo/burst/{index}"))
    for container in body["Pod"]["spec"]["containers"]:
        container.setdefault("resources", {}).setdefault("requests", {})["cpu"] = f"{cpu_cores:g}"
    body["NodeNames"] = names
    body["Nodes"] = None
    return body
