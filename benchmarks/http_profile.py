"""Profile the request path in-process: where does a filter or prioritize call spend its time?

    python -m benchmarks.http_profile                       # filter and prioritize, 500 names
    python -m benchmarks.http_profile --verbs filter --names 500 --mode nodes --top 40

Same app, fleet and bodies as `benchmarks.http_bench` (every call about another pod), called
through Flask's test client (no socket, no gunicorn), under cProfile, after a warm-up to the
steady state of a burst. Prints the mean time per call with and without the profiler
and the functions with the most own time and the most cumulative time. Use it before and after an
optimisation of the hot path; the HTTP benchmark gives the figures that count.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

from benchmarks import bodies, fleet
from benchmarks.bench_app import CONFIG, build_app
from benchmarks.http_bench import VERBS


def timed(client: object, path: str, body: bytes, calls: int, first_seq: int) -> float:
    """Mean seconds per call of `calls` POSTs, each about another pod; every answer must be 200."""
    post = client.post  # type: ignore[attr-defined]
    payloads = [bodies.fill(body, first_seq + k) for k in range(calls)]
    started = time.perf_counter()
    for payload in payloads:
        response = post(path, data=payload, content_type="application/json")
        if response.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.data[:300]!r}")
    return (time.perf_counter() - started) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000, help="nodes in the cache")
    parser.add_argument("--names", type=int, default=500, help="candidates per request")
    parser.add_argument("--mode", choices=bodies.MODES, default="names")
    parser.add_argument("--verbs", nargs="+", choices=VERBS, default=list(VERBS))
    parser.add_argument("--calls", type=int, default=300, help="profiled calls per verb")
    parser.add_argument("--warmup", type=int, default=1500,
                        help="calls before measuring (fills the decision log and the ledger)")
    parser.add_argument("--top", type=int, default=25, help="functions listed per table")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--fixtures", type=Path, default=bodies.FIXTURES)
    parser.add_argument("--profile", help="the profile the Pod asks for (annotation); default: "
                                          "none, the default profile")
    args = parser.parse_args(argv)

    app = build_app("extender", args.config, args.nodes, refresher=False)  # calls only
    prefix = app.extensions["extender"].settings.server.url_prefix
    body = bodies.extender_args(bodies.Recorded(args.fixtures),
                                bodies.candidates(fleet.node_names(args.nodes), args.names), args.mode,
                                profile=args.profile)
    client = app.test_client()
    seq = 0  # pod number: every call is about another pod
    for verb in args.verbs:
        path = f"{prefix}/{verb}"
        # Warm-up to the steady state of a burst: decision log full, placements in the ledger.
        timed(client, path, body, args.warmup, seq)
        seq += args.warmup
        plain = timed(client, path, body, args.calls, seq)
        seq += args.calls
        profiler = cProfile.Profile()
        profiler.enable()
        profiled = timed(client, path, body, args.calls, seq)
        profiler.disable()
        seq += args.calls
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(f"=== {verb}, profile {args.profile or 'default'}, {args.names} candidates "
              f"({args.mode}), {args.nodes} nodes in the cache: "
              f"{plain * 1e3:.2f} ms per call ({profiled * 1e3:.2f} ms under cProfile), "
              f"{args.calls} calls")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
