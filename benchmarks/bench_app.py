"""Serve the extender (or the floor) exactly as `extender serve` does, over a synthetic fleet.

    python -m benchmarks.bench_app extender --bind 127.0.0.1:PORT --nodes 5000
    python -m benchmarks.bench_app floor --bind 127.0.0.1:PORT        # or floor-lean

The gunicorn options come from `extender.serving.gunicorn_options` with that command's own
flag defaults, so a change to the deployed worker class, threads or keep-alive changes the
benchmark too. As in `extender serve`, the app is created in the worker after fork. The extender
is the real `create_app`, with a `FleetSource` instead of Prometheus; its cache is filled before
the worker serves (`fleet.prime`), then the background refresher runs at the configured interval
as in production. (A cache refreshed only once goes stale after `max_staleness_s`, and a stale
cache answers without doing the work: all nodes neutral.) Refreshes compete with requests for the
GIL, as they do when deployed, so they show in the p99. With `informer.enabled` in the settings,
the pod informer runs as in `extender serve` (its list is applied before the worker serves).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

from extender import serving

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "extender.yaml"
APPS = ("extender", "floor", "floor-lean")
INFORMER_SYNC_S = 120.0


def serve_args(bind: str, *, workers: int | None = None, threads: int | None = None) -> argparse.Namespace:
    """The `extender serve` flags for `bind`, with that command's defaults for everything else."""
    parser = argparse.ArgumentParser()
    serving.add_arguments(parser)
    argv = ["--bind", bind]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return parser.parse_args(argv)


def build_app(kind: str, config: Path, nodes: int, *, refresher: bool = True) -> Any:
    """The WSGI app of `kind` (one of `APPS`, see benchmarks/floor_app.py for the floors); the
    extender's cache holds `nodes` nodes and is refreshed in the background unless `refresher` is
    false."""
    from extender.settings import load_settings

    settings = load_settings(config, environ={})
    if kind in ("floor", "floor-lean"):
        from benchmarks.floor_app import create_floor_app

        return create_floor_app(settings, lean=kind == "floor-lean")
    if kind != "extender":
        raise ValueError(f"unknown app {kind!r}: expected one of {APPS}")
    from benchmarks.fleet import STALE_METRICS, FleetSource, OffsetClock, prime
    from extender.metrics.cache import Fetcher, collector_for
    from extender.monitoring.catalog import load_for
    from extender.server import create_app

    clock = OffsetClock()
    bound_pods = None
    if settings.informer.enabled:
        from extender.informer import PodInformer

        bound_pods = PodInformer.for_settings(settings.informer, clock=clock).start()
        if not bound_pods.wait_synced(INFORMER_SYNC_S):
            raise RuntimeError(f"pod informer not synced after {INFORMER_SYNC_S:g} s: "
                               f"{bound_pods.status().last_error}")
    if settings.cache.refresh_in_child:  # as deployed: the fleet lives in the refresh process
        factory = functools.partial(FleetSource, settings, nodes,
                                    failing_after_first=STALE_METRICS)
        app = create_app(settings, load_for(settings), collector_for(settings, factory),
                         clock=clock, start_refresher=False, bound_pods=bound_pods)
        prime(app.extensions["extender"].cache, None, clock)
    else:
        source = FleetSource(settings, nodes)
        app = create_app(settings, load_for(settings), Fetcher(settings, source), clock=clock,
                         start_refresher=False, bound_pods=bound_pods)
        prime(app.extensions["extender"].cache, source, clock)
    cache = app.extensions["extender"].cache
    if refresher:
        cache.start()
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", choices=APPS)
    parser.add_argument("--bind", required=True, help="HOST:PORT")
    parser.add_argument("--nodes", type=int, default=5000, help="nodes in the extender's cache")
    parser.add_argument("--config", type=Path, default=CONFIG, help="extender settings file")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: extender serve's)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: extender serve's)")
    parser.add_argument("--monitoring-bind", default="",
                        help="HOST:PORT of the extender's monitoring listener, as `extender "
                             "serve --monitoring-bind` (default: none, everything on --bind)")
    parser.add_argument("--monitoring-threads", type=int, default=4,
                        help="threads of the monitoring listener (as extender serve's flag)")
    parser.add_argument("--stock-gthread", action="store_true",
                        help="gunicorn's own gthread worker instead of extender serve's (the "
                             "arrangement before the verbs got their own listener: a baseline)")
    args = parser.parse_args(argv)
    from extender.settings import load_settings

    server = load_settings(args.config, environ={}).server
    options = serving.gunicorn_options(serve_args(args.bind, workers=args.workers,
                                                threads=args.threads), server)
    if args.stock_gthread:
        options["worker_class"] = "gthread"
    monitoring = serving.parse_bind(args.monitoring_bind) if args.monitoring_bind else None
    if monitoring is not None and args.app != "extender":
        parser.error("--monitoring-bind: only the extender has a monitoring listener")
    serving.run_gunicorn(options, lambda: build_app(args.app, args.config, args.nodes),
                         monitoring=monitoring, monitoring_threads=args.monitoring_threads,
                         server=server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
