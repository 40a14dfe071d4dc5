"""Recording rules: Prometheus CPU and the cache's refresh time, raw queries vs recorded series.

One real Prometheus scrapes an emulated estate of `--nodes` nodes (node-exporter with `--cores`
CPUs each, kube-state-metrics with a few pods per node, cAdvisor, dcgm on a tenth of the nodes;
the emulator runs in a child process so that its rendering never holds this process' GIL). In
one run, on the same Prometheus and data:

1. without rules: an idle window (ingestion only), then a window of refreshes reading the raw
   queries (`cache.recording_rules: raw`), one every `--every` seconds;
2. the shipped rules loaded (config reload, the shipped 15 s interval): an idle window (ingestion
   plus rule evaluation), then a window of refreshes reading the recorded series.

Prometheus' CPU time comes from /proc (utime + stime of its process). A refresh's cost is the
window's CPU minus the idle window's CPU rate times the window's length, divided by the
refreshes; the rules' cost is the difference of the two idle windows, per evaluation, checked
against Prometheus' own `prometheus_rule_group_last_duration_seconds`. With N refreshers (replicas
x gunicorn workers) every 15 s, raw costs N x raw per refresh, recorded N x recorded + the rules
once: the break-even N is rules / (raw - recorded).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from benchmarks.results import markdown_table, write_section
from extender.demo import launcher
from extender.localserver import LocalServer, free_port, wait_until
from extender.metrics import rules
from extender.metrics.cache import Fetcher
from extender.metrics.prometheus import PrometheusSource, Sample
from extender.settings import Settings, load_settings

CONFIG = Path(__file__).resolve().parents[1] / "config" / "extender.yaml"
SCRAPE_S = 15.0  # as a production Prometheus scrapes; the shipped rules run every 15 s too
JOBS = {"node-exporter": "/node-exporter/metrics", "kube-state-metrics": "/kube-state-metrics/metrics",
        "cadvisor": "/cadvisor/metrics", "dcgm-exporter": "/dcgm/metrics"}
"""Scaphandre and Kepler are scraped once per node: 5000 HTTP targets on the Python emulator
would measure the emulator. Their entries are cheap selectors with or without rules."""


def _serve_emulator(nodes: int, cores: int, port: int, ready: Any) -> None:
    from extender.demo.emulator import EmulatedNode, Emulator, EmulatorServer, node_ip

    fleet = [EmulatedNode(name=f"bench-node-{i:05d}", ip=node_ip(i), cpu_milli=cores * 1000,
                          memory_mib=cores * 4096, gpus=4 if i % 10 == 0 else 0,
                          gpu_model="T4" if i % 10 == 0 else "")
             for i in range(nodes)]
    server = EmulatorServer(Emulator(fleet, seed=11), port=port).start()
    ready.set()
    try:
        while True:
            time.sleep(3600)
    finally:
        server.stop()


class TimedSource:
    """PrometheusSource that keeps each query's wall time (seconds) by catalog entry."""

    def __init__(self, settings: Settings) -> None:
        self.inner = PrometheusSource(settings.prometheus)
        self.names = {entry.query: entry.name for entry in settings.catalog}
        self.names.update({rules.recorded_query(e.recorded, settings.cache.max_staleness_s): e.name
                           for e in settings.catalog if e.recorded is not None})
        self.names.update({e.query: e.name for e in settings.owner_catalog})
        self.times: dict[str, list[float]] = {}

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        started = time.perf_counter()
        try:
            return self.inner.query(promql, at)
        finally:
            name = self.names.get(promql, "node_aliases")
            self.times.setdefault(name, []).append(time.perf_counter() - started)


def cpu_s(pid: int) -> float:
    """utime + stime of process `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    seconds: float
    cpu_s: float
    refreshes: list[float] = field(default_factory=list)
    """Wall time of each refresh (Fetcher.collect: every catalog entry, owners, aliases)."""
    per_entry: dict[str, list[float]] = field(default_factory=dict)
    recorded: int = 0
    """Entries read from recorded series in the last refresh."""


def window(pid: int, seconds: float, every: float,
           refresh: Callable[[], tuple[float, int]] | None) -> Window:
    """Prometheus' CPU over `seconds`, refreshing every `every` seconds when `refresh` is given."""
    start_cpu, start = cpu_s(pid), time.monotonic()
    out = Window(seconds, 0.0)
    next_at = start
    while time.monotonic() - start < seconds:
        if refresh is not None and time.monotonic() >= next_at:
            took, out.recorded = refresh()
            out.refreshes.append(took)
            next_at += every
        time.sleep(0.05)
    out.seconds = time.monotonic() - start
    out.cpu_s = cpu_s(pid) - start_cpu
    return out


def refresher(settings: Settings, source: TimedSource) -> Callable[[], tuple[float, int]]:
    fetcher = Fetcher(settings, source)

    def refresh() -> tuple[float, int]:
        started = time.perf_counter()
        _, status = fetcher.collect(time.time())
        took = time.perf_counter() - started
        if status.errors:
            raise RuntimeError(f"refresh failed: {status.errors}")
        return took, len(status.recorded)

    return refresh


def rule_group_seconds(url: str) -> float:
    """prometheus_rule_group_last_duration_seconds of our group (Prometheus' own /metrics)."""
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("prometheus_rule_group_last_duration_seconds") and \
                rules.GROUP_NAME in line:
            return float(line.rsplit(" ", 1)[1])
    raise RuntimeError("no rule group duration in Prometheus' /metrics")


def series_count(url: str) -> int:
    body = requests.get(f"{url}/api/v1/status/tsdb", timeout=30).json()
    return int(body["data"]["headStats"]["numSeries"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rules_bench")
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--cores", type=int, default=8, help="CPUs per node (default 8)")
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds per measured window, a multiple of the 15 s scrape")
    parser.add_argument("--every", type=float, default=10.0,
                        help="seconds between refreshes within a window (default 10)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="rules-bench-"))
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_serve_emulator, args=(args.nodes, args.cores, port, ready),
                        daemon=True)
    child.start()
    prom: LocalServer | None = None
    try:
        if not ready.wait(600):
            raise RuntimeError("the emulator did not start")
        host = f"127.0.0.1:{port}"
        # As Emulator.scrape_targets has them (dcgm as its chart scrapes it).
        targets = [launcher.ScrapeTarget(job, (host,), honor_labels=job != "dcgm-exporter",
                                         metrics_path=path) for job, path in JOBS.items()]
        prom = launcher.prometheus(targets, scrape_interval_s=SCRAPE_S, workdir=workdir).start()
        pid = prom.process.pid if prom.process else 0
        settings = load_settings(CONFIG, environ={}, overrides={
            "prometheus": {"url": prom.url, "query_timeout_s": 60, "retries": 0}})
        raw_s = load_settings(CONFIG, environ={}, overrides={
            "prometheus": {"url": prom.url, "query_timeout_s": 60, "retries": 0},
            "cache": {"recording_rules": "raw"}})
        rec_s = load_settings(CONFIG, environ={}, overrides={
            "prometheus": {"url": prom.url, "query_timeout_s": 60, "retries": 0},
            "cache": {"recording_rules": "recorded"}})
        print(f"warming up: {args.nodes} nodes x {args.cores} CPUs, scrape every {SCRAPE_S:g} s",
              flush=True)
        # Two full scrapes of every job: rates need two samples in their window.
        source = PrometheusSource(settings.prometheus)
        wait_until(lambda: len(source.query(settings.metric("cpu_utilisation").query))
                   >= args.nodes, timeout_s=240, interval_s=5, what="CPU rates of every node")
        series = series_count(prom.url)
        print(f"{series} series in the head", flush=True)

        idle_raw = window(pid, args.window, args.every, None)
        raw_source = TimedSource(raw_s)
        raw = window(pid, args.window, args.every, refresher(raw_s, raw_source))
        raw.per_entry = raw_source.times
        print(f"raw: {len(raw.refreshes)} refreshes, Prometheus CPU {raw.cpu_s:.1f} s "
              f"(idle {idle_raw.cpu_s:.1f} s)", flush=True)

        rules_path = workdir / "recording-rules.yaml"
        rules_path.write_text(rules.document(settings))
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(launcher.prometheus_config(
            targets, SCRAPE_S, [rules_path])))
        requests.post(f"{prom.url}/-/reload", timeout=30).raise_for_status()
        rec_check = Fetcher(rec_s, PrometheusSource(rec_s.prometheus))
        wait_until(lambda: len(rec_check.collect(time.time())[1].recorded) ==
                   len(rules.recorded_entries(rec_s)), timeout_s=120, interval_s=2,
                   what="every recorded series")
        idle_rules = window(pid, args.window, args.every, None)
        group_s = [rule_group_seconds(prom.url)]
        rec_source = TimedSource(rec_s)
        rec = window(pid, args.window, args.every, refresher(rec_s, rec_source))
        rec.per_entry = rec_source.times
        group_s.append(rule_group_seconds(prom.url))
        print(f"recorded: {len(rec.refreshes)} refreshes ({rec.recorded} entries recorded), "
              f"Prometheus CPU {rec.cpu_s:.1f} s (idle with rules {idle_rules.cpu_s:.1f} s)",
              flush=True)
        load = os.getloadavg()
    finally:
        if prom is not None:
            prom.stop()
        child.terminate()
        child.join(10)

    def net(w: Window, idle: Window) -> float:
        return (w.cpu_s - idle.cpu_s / idle.seconds * w.seconds) / len(w.refreshes)

    raw_cpu, rec_cpu = net(raw, idle_raw), net(rec, idle_rules)
    evals = idle_rules.seconds / 15.0
    rules_cpu = (idle_rules.cpu_s - idle_raw.cpu_s * idle_rules.seconds / idle_raw.seconds) / evals
    rules_wall = sum(group_s) / len(group_s)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    heavy = [e.name for e in rules.recorded_entries(settings)]
    raw_heavy = sum(mean(raw.per_entry[n]) for n in heavy)
    rec_heavy = sum(mean(rec.per_entry[n]) for n in heavy)
    saved = raw_cpu - rec_cpu
    cost = max(rules_cpu, rules_wall)
    breakeven = cost / saved if saved > 0 else float("inf")
    rows: list[list[object]] = [
        ["Prometheus CPU per refresh (s)", f"{raw_cpu:.3f}", f"{rec_cpu:.3f}",
         f"{raw_cpu / rec_cpu:.1f}x" if rec_cpu > 0 else "-"],
        ["refresh wall time, all entries (s, mean)", f"{mean(raw.refreshes):.2f}",
         f"{mean(rec.refreshes):.2f}", f"{mean(raw.refreshes) / mean(rec.refreshes):.1f}x"],
        [f"the {len(heavy)} recorded entries' queries (s, mean per refresh)", f"{raw_heavy:.3f}",
         f"{rec_heavy:.3f}", f"{raw_heavy / rec_heavy:.1f}x"],
        ["refreshes measured", len(raw.refreshes), len(rec.refreshes), ""],
    ]
    table = markdown_table(["per refresh", "raw queries", "recorded series", "ratio"], rows)
    entry_rows: list[list[object]] = [
        [n, f"{mean(raw.per_entry[n]) * 1000:.0f}", f"{mean(rec.per_entry[n]) * 1000:.0f}"]
        for n in heavy]
    entries = markdown_table(["entry", "raw (ms)", "recorded (ms)"], entry_rows)
    rules_table = markdown_table(["rule evaluation (once per 15 s)", "seconds"], [
        ["Prometheus CPU (idle window with rules - without, per evaluation)", f"{rules_cpu:.3f}"],
        ["prometheus_rule_group_last_duration_seconds (mean of 2 reads)", f"{rules_wall:.3f}"],
    ])
    per_n = markdown_table(["refreshers per 15 s (replicas x workers)", "raw CPU s / 15 s",
                            "recorded + rules CPU s / 15 s"],
                           [[n, f"{n * raw_cpu:.2f}", f"{n * rec_cpu + cost:.2f}"]
                            for n in (1, 2, 3, 10)])
    verdict = (f"Break-even at {breakeven:.1f} refreshers (rules cost taken as the larger of "
               f"the two rule figures, {cost:.3f} s per evaluation): from "
               f"{int(breakeven) + 1} refreshers on the rules cost Prometheus less."
               if saved > 0 else "The recorded path saved no Prometheus CPU in this run.")
    print("\n".join([table, "", entries, "", rules_table, "", per_n, "", verdict]))
    write_section(
        "rules", "Recording rules: Prometheus CPU and refresh time, raw vs recorded",
        command=f"python -m benchmarks.rules_bench --nodes {args.nodes} --cores {args.cores} "
                f"--window {args.window:g} --every {args.every:g}",
        body=f"{args.nodes} emulated nodes x {args.cores} CPUs ({series} series in the head; "
             f"node-exporter, kube-state-metrics with 1-4 pods per node, cAdvisor, dcgm on a tenth "
             f"of the nodes), one real Prometheus 2.42 scraping every {SCRAPE_S:g} s; per mode "
             f"one {args.window:g} s window with a full refresh (every catalog entry, the owners "
             f"entries, the alias query; `Fetcher.collect`) every {args.every:g} s, and an idle "
             f"window of the same length before it (without, then with the shipped rules "
             f"loaded, 15 s interval). Prometheus CPU from /proc, net of the idle window. "
             f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 shared "
             f"cores: CPU times are less sensitive to it than wall times).\n\n"
             + table + "\n\n" + entries + "\n\n" + rules_table + "\n\n" + per_n + "\n\n"
             + verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
