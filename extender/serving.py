"""Serve a WSGI app under gunicorn with the extender's worker arrangement.

Worker arrangement: one gthread worker with several threads by default. Every gunicorn worker
process holds its own metrics cache and refresher (memory is not shared across processes), so
more workers multiply the Prometheus query load and memory; threads share one cache. gthread keeps
connections alive, which kube-scheduler's Go client reuses. The app (and so the refresher thread)
is created in the worker after fork, never under --preload, because threads do not survive fork.

Used by `extender serve` and by the simulator's HTTP mode (`extender.sim.http`).
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from typing import Any

from extender.errors import ConfigError

KEEPALIVE_S = 75  # above kube-scheduler's idle-connection reuse, below typical LB idle timeouts
SWITCH_INTERVAL_S = 0.0005  # see run_gunicorn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The listener and worker flags (`--bind`, `--workers`, `--threads`)."""
    parser.add_argument("--bind", default="0.0.0.0:8888", help="HOST:PORT to listen on")
    parser.add_argument("--workers", type=int, default=1,
                        help="gunicorn worker processes; each has its own cache (default 1)")
    # Two threads: a slow Monitoring API call (history from Prometheus) never stalls a
    # scheduling call; more threads only contend for the GIL (measured: with 4 threads a 500-node
    # prioritize p99 rose from ~1.8 ms to ~3.9 ms and throughput fell).
    parser.add_argument("--threads", type=int, default=2,
                        help="threads per worker (default 2; the handler is CPU-bound)")


def gunicorn_options(args: argparse.Namespace, tls: tuple[str | None, str | None]) -> dict[str, Any]:
    """The gunicorn settings for `extender serve`."""
    if args.workers < 1 or args.threads < 1:
        raise ConfigError("--workers and --threads must be >= 1")
    options: dict[str, Any] = {
        "bind": args.bind,
        "workers": args.workers,
        "worker_class": "gthread",
        "threads": args.threads,
        "keepalive": KEEPALIVE_S,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "graceful_timeout": 20,
        "timeout": 30,
        # No control socket: it lives at a shared path ($HOME/.gunicorn) and wants a writable root.
        "control_socket_disable": True,
    }
    if tls[0] and tls[1]:
        options.update(certfile=tls[0], keyfile=tls[1])
    return options


def run_gunicorn(options: dict[str, Any], load: Callable[[], Any]) -> None:
    """Serve the WSGI app made by `load()` under gunicorn with `options` (until stopped).

    `load` runs in each worker after fork, so threads it starts (the refresher) live there.
    """
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            app = load()
            # Move everything alive now (modules, settings, the app) out of the collector's
            # view: full collections would otherwise rescan ~60k objects and pause requests
            # for tens of milliseconds.
            gc.freeze()
            # The refresher thread's work on a new table (baselines, ledger totals) holds the GIL
            # for milliseconds; a request thread waiting for it would wait a whole switch
            # interval (5 ms by default) each time. Ask for the GIL back sooner.
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            return app

    Application().run()
