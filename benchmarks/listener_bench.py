"""Scheduling calls never wait behind other callers: filter p99 at 500 names, idle, with 50
stalled connections, and with 10 concurrent slow Monitoring API history queries.

    python -m benchmarks.listener_bench            # about a minute
    python -m benchmarks.listener_bench --help

Two servers, each `extender serve`'s arrangement over the benchmark's synthetic fleet
(benchmarks/bench_app.py), measured in the same run, case by case alternately:
- **listeners**: as deployed now: the verbs on gunicorn's worker that hands only complete
  requests to its threads, the Monitoring API on its own listener and threads;
- **single** (the baseline, as before): stock gthread, everything on one port and two threads.

Load: one keep-alive connection POSTing filter with 500 candidate names in a closed loop (a
filter call sits in kube-scheduler's serial cycle), wrk if installed. Conditions:
- idle;
- stalled: 50 connections to the verbs' port that sent a filter's headers and one byte of its
  body, held open for the whole run (reopened when the server closes them: `server.read_timeout_s`
  cuts them, and a stalling client would reconnect);
- slow history: 10 clients in a loop on a Monitoring API history endpoint
  (`/api/v1/metrics/cpu_utilisation?level=node&start=...`), whose Prometheus is a deliberately
  slow range source on loopback: each query_range is answered after `--history-delay` seconds
  with 200 series x 121 points (about 0.5 MB of JSON the extender decodes and re-encodes), the
  way a real Prometheus answers a heavy range query. Every query asks for its own range, so the
  Monitoring API's result cache never answers it.
Goal (issue 20): stalled and slow-history p99 within 2x of idle.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from benchmarks import bodies, fleet
from benchmarks.load import CLIENTS, LoadError, LoadResult, default_client, run_load
from benchmarks.servers import BenchServer

NAMES = 500
CONDITIONS = ("idle", "stalled", "slow history")
ARRANGEMENTS = ("listeners", "single")
TARGET_RATIO = 2.0
HISTORY_SERIES = 200
HISTORY_POINTS = 121  # 10 minutes every 5 s
SEQ_PER_RUN = 10**7
RUNS = itertools.count(1)


# --- the slow range source --------------------------------------------------------------------


class SlowPrometheus:
    """A loopback server answering Prometheus' query_range after `delay_s`, with a fixed matrix."""

    def __init__(self, delay_s: float) -> None:
        now = time.time()
        matrix = [{"metric": {"node": f"node-{i:05d}", "instance": f"10.0.{i // 250}.{i % 250}"},
                   "values": [[now - 5 * k, f"{0.3 + (i * k % 50) / 100:.3f}"]
                              for k in range(HISTORY_POINTS)]} for i in range(HISTORY_SERIES)]
        body = json.dumps({"status": "success",
                           "data": {"resultType": "matrix", "result": matrix}}).encode()
        self.queries = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer()

            def _answer(self) -> None:
                outer.queries += 1
                time.sleep(delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.body_bytes = len(body)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the other callers ------------------------------------------------------------------------


class Stallers:
    """`count` connections holding a filter's headers and one byte of its body, reopened when
    the server closes them, until stopped."""

    def __init__(self, port: int, count: int, body_len: int) -> None:
        self.port, self.count = port, count
        self.head = (b"POST /filter HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n{" % body_len)
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(self.head)
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        socks = [self._open() for _ in range(self.count)]
        while not self._stop.wait(0.05):
            for i, sock in enumerate(socks):
                try:
                    closed = sock.recv(4096) == b""
                except BlockingIOError:
                    continue
                except OSError:
                    closed = True
                if closed:
                    sock.close()
                    socks[i] = self._open()
                    self.reopened += 1
        for sock in socks:
            sock.close()

    def __enter__(self) -> Stallers:
        self._thread.start()
        time.sleep(0.5)  # all connected and read by the server before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class HistoryClients:
    """`count` clients querying history in a loop, each query for a range of its own."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.answers: dict[int, int] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            path = (f"/api/v1/metrics/cpu_utilisation?level=node&start={now - 600 - next(self._seq):.0f}"
                    f"&end={now:.0f}&step=5")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
            finally:
                conn.close()
            with self._lock:
                self.answers[status] = self.answers.get(status, 0) + 1

    def __enter__(self) -> HistoryClients:
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One arrangement under one condition: a run per round (None: not one call answered)."""

    arrangement: str
    condition: str
    runs: list[LoadResult | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def result(self) -> LoadResult | None:
        """The run with the median p99 (a no-answer run counts as the worst)."""
        if not self.runs:
            return None
        ranked = sorted(self.runs, key=lambda r: math.inf if r is None else r.p99_ms)
        return ranked[(len(ranked) - 1) // 2]

    @property
    def spread(self) -> str:
        """p99 of every round, as measured."""
        return ", ".join("none" if r is None else f"{r.p99_ms:.1f}" for r in self.runs)

    @property
    def note(self) -> str:
        return self.notes[-1] if self.notes else ""


@dataclass
class Report:
    client: str
    duration_s: float
    nodes: int
    stalled: int
    history_clients: int
    history_delay_s: float
    history_bytes: int = 0
    rounds: int = 1
    rows: list[Row] = field(default_factory=list)
    load_average: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, arrangement: str, condition: str) -> Row | None:
        return next((r for r in self.rows
                     if (r.arrangement, r.condition) == (arrangement, condition)), None)

    def ratio(self, arrangement: str, condition: str) -> float | None:
        """p99 under `condition` / idle p99, same arrangement; inf when nothing was answered."""
        idle, other = self.row(arrangement, "idle"), self.row(arrangement, condition)
        if idle is None or other is None or idle.result is None or not idle.result.p99_ms:
            return None
        if other.result is None or not other.result.requests:
            return math.inf
        return other.result.p99_ms / idle.result.p99_ms

    def targets(self) -> list[tuple[str, str, bool | None]]:
        out: list[tuple[str, str, bool | None]] = []
        for condition in CONDITIONS[1:]:
            ratio = self.ratio("listeners", condition)
            label = f"filter p99 at {NAMES} names, {condition}, within {TARGET_RATIO:g}x of idle"
            if ratio is None:
                out.append((label, "not measured", None))
            else:
                out.append((label, _ratio(ratio), ratio <= TARGET_RATIO))
        return out


def measure(server: BenchServer, path: str, body_file: Path, args: argparse.Namespace) -> LoadResult | None:
    try:
        result = run_load(server.url + path, body_file, connections=1, duration_s=args.duration,
                          client=args.client, first_seq=next(RUNS) * SEQ_PER_RUN)
    except LoadError:
        return None
    return result if result.requests else None


def run_case(server: BenchServer, condition: str, body: bytes, body_file: Path,
             args: argparse.Namespace) -> tuple[LoadResult | None, str]:
    """Filter's figures on `server` under `condition`, and a note on the other callers."""
    if condition == "idle":
        return measure(server, "/filter", body_file, args), ""
    if condition == "stalled":
        with Stallers(server.port, args.stalled, len(body)) as stallers:
            result = measure(server, "/filter", body_file, args)
        return result, f"{stallers.reopened} stalled connections cut and reopened"
    with HistoryClients(server.monitoring_port, args.history_clients) as history:
        result = measure(server, "/filter", body_file, args)
    return result, "history answers " + ", ".join(
        f"{'no answer' if code == 0 else code}: {n}" for code, n in sorted(history.answers.items()))


def config_file(tmp: Path, prometheus_url: str) -> Path:
    from benchmarks.bench_app import CONFIG, REPO
    from extender.settings import merge, read_yaml

    path = tmp / "extender.yaml"
    path.write_text(yaml.safe_dump(merge(read_yaml(CONFIG), {
        "catalog_file": str(REPO / "config" / "catalog.yaml"),
        "monitoring": {"catalog_file": str(REPO / "config" / "monitoring.yaml"),
                       "query_timeout_s": 30},
        "policy": {"learned_model": str(REPO / "config" / "learned-model.json")},
        "prometheus": {"url": prometheus_url},
    })))
    return path


def run(args: argparse.Namespace, log: Any) -> Report:
    started = time.monotonic()
    report = Report(args.client, args.duration, args.nodes, args.stalled, args.history_clients,
                    args.history_delay, rounds=args.rounds)
    report.load_average["start"] = os.getloadavg()
    recorded = bodies.Recorded(args.fixtures)
    body = bodies.extender_args(recorded, bodies.candidates(fleet.node_names(args.nodes), NAMES),
                                "names")
    slow = SlowPrometheus(args.history_delay)
    report.history_bytes = slow.body_bytes
    try:
        with tempfile.TemporaryDirectory(prefix="listener-bench-") as tmp:
            body_file = Path(tmp) / "filter.json"
            body_file.write_bytes(body)
            config = config_file(Path(tmp), slow.url)
            with BenchServer("extender", nodes=args.nodes, config=config, monitoring=True,
                             extra=["--monitoring-threads", str(args.monitoring_threads)]
                             ) as listeners, \
                    BenchServer("extender", nodes=args.nodes, config=config,
                                extra=["--stock-gthread"]) as single:
                servers = {"listeners": listeners, "single": single}
                report.rows = [Row(a, c) for c in CONDITIONS for a in ARRANGEMENTS]
                # Rounds of every case in turn, so that drift of a shared machine hits all alike;
                # a case that answered nothing is not run again (it would only wait again).
                for round_ in range(1, args.rounds + 1):
                    for row in report.rows:
                        if row.runs and row.runs[0] is None:
                            continue
                        server = servers[row.arrangement]
                        result, note = run_case(server, row.condition, body, body_file, args)
                        row.runs.append(result)
                        row.notes.append(note)
                        log(f"round {round_} {row.arrangement:9} {row.condition:12} " + (
                            f"p50 {result.p50_ms:8.2f} ms p99 {result.p99_ms:8.2f} ms "
                            f"{result.requests:6} calls, {result.errors} errors"
                            if result else "no answer") + f" | {note}")
                        if not server.alive():
                            raise RuntimeError(f"{row.arrangement} server died:\n"
                                               f"{server.log_tail()}")
    finally:
        slow.stop()
    report.load_average["end"] = os.getloadavg()
    report.seconds = time.monotonic() - started
    return report


# --- output -----------------------------------------------------------------------------------


HEADERS = ["arrangement", "condition", "calls", "p50 ms", "p99 ms", "max ms", "p99 / idle",
           "p99 of each round", "note (last round)"]


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return "no answer" if math.isinf(value) else f"{value:.2f}x"


def rows(report: Report) -> list[list[str]]:
    out = []
    for row in report.rows:
        r = row.result
        out.append([row.arrangement, row.condition, "0" if r is None else str(r.requests),
                    "-" if r is None else f"{r.p50_ms:.2f}", "-" if r is None else f"{r.p99_ms:.2f}",
                    "-" if r is None else f"{r.max_ms:.2f}",
                    _ratio(report.ratio(row.arrangement, row.condition)), row.spread,
                    row.note])
    return out


def markdown(report: Report) -> str:
    from benchmarks.results import machine, markdown_table

    load = report.load_average
    lines = [
        f"Machine: {machine()}; load average (1 min) {load['start'][0]:.1f} at the start, "
        f"{load['end'][0]:.1f} at the end; {report.seconds:.0f} s in all. Client: "
        f"{report.client}, 1 keep-alive connection, {report.duration_s:g} s per run, "
        f"{report.rounds} rounds of every case in turn (the table shows the round with the "
        "median p99), filter with "
        f"{NAMES} candidate names over a {report.nodes}-node cache. **listeners**: as deployed "
        "(verbs on gunicorn fed whole requests, the Monitoring API on its own cheroot listener); "
        "**single**: the former arrangement (stock gthread, one port, two threads), measured in "
        f"the same run. Stalled: {report.stalled} connections that sent headers and one byte of "
        "a filter's body, held open (reopened when cut). Slow history: "
        f"{report.history_clients} clients in a loop on a history endpoint whose Prometheus is "
        f"a deliberately slow loopback range source ({report.history_delay_s:g} s per "
        f"query_range, {HISTORY_SERIES} series x {HISTORY_POINTS} points, "
        f"{report.history_bytes / 1e6:.1f} MB of JSON). \"no answer\": not one filter call "
        "was answered during the run.",
        "",
        markdown_table(HEADERS, [list[object](r) for r in rows(report)]),
        "",
        markdown_table(["target", "measured", "verdict"],
                       [[t, m, _verdict(ok)] for t, m, ok in report.targets()]),
    ]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[ok]


def print_report(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=180)
    table = Table(title=f"filter at {NAMES} names while others call ({report.client}, 1 connection)")
    for header in HEADERS:
        table.add_column(header, justify="left" if header in (
            "arrangement", "condition", "note (last round)", "p99 of each round") else "right")
    for row in rows(report):
        table.add_row(*row)
    console.print(table)
    for target, measured, met in report.targets():
        console.print(f"{target}: {measured} ({_verdict(met)})")
    console.print(f"load average: start {report.load_average['start']}, "
                  f"end {report.load_average['end']}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.listener_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=5000, help="nodes in the extender's cache")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=3,
                   help="runs of each case; the table shows the run with the median p99")
    p.add_argument("--stalled", type=int, default=50, help="stalled connections")
    p.add_argument("--history-clients", type=int, default=10, help="concurrent history clients")
    p.add_argument("--history-delay", type=float, default=1.0,
                   help="seconds the range source takes per query")
    p.add_argument("--monitoring-threads", type=int, default=4,
                   help="threads of the monitoring listener (extender serve's default: 4)")
    p.add_argument("--client", choices=CLIENTS, default=None, help="default: wrk when installed")
    p.add_argument("--fixtures", type=Path, default=bodies.FIXTURES,
                   help="the recorded kube-scheduler requests")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success (1 with --strict and a missed target, 2 on bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.client = args.client or default_client()
    if args.nodes < NAMES or args.duration <= 0 or min(args.stalled, args.history_clients,
                                                       args.rounds) < 1:
        print(f"error: --nodes >= {NAMES}, --duration > 0, --stalled, --history-clients and "
              "--rounds >= 1",
              file=sys.stderr)
        return 2
    if args.client == "wrk":
        args.duration = float(math.ceil(args.duration))
    report = run(args, lambda message: print(message, flush=True))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps({
            "rows": [{"arrangement": r.arrangement, "condition": r.condition,
                      "runs": [None if x is None else vars(x) for x in r.runs],
                      "notes": r.notes} for r in report.rows],
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in report.targets()],
            "load_average": report.load_average}, indent=1))
    if not args.no_write:
        from benchmarks.results import write_section

        path = write_section("listeners", "Verbs on their own listener: filter p99 while others "
                             "stall or query history",
                             " ".join(["python -m benchmarks.listener_bench", *argv]),
                             markdown(report))
        print(f"wrote {path}")
    missed = [t for t, _, met in report.targets() if met is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
