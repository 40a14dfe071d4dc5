"""Run the extender webhook under gunicorn (`extender serve`).

Settings and the Monitoring API's catalog are loaded here, once, before gunicorn starts: a bad
file fails the command with its error instead of every worker. See `extender.serving` for the
listeners (verbs on --bind, the Monitoring API, /metrics and health on --monitoring-bind) and the
worker arrangement.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from extender import serving


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="settings file (default: $EXTENDER_CONFIG "
                        "or config/extender.yaml)")
    parser.add_argument("--prometheus-url", help="overrides prometheus.url")
    serving.add_arguments(parser)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings overrides from command-line flags (flags win over the file and env)."""
    out: dict[str, Any] = {}
    if args.prometheus_url:
        out["prometheus"] = {"url": args.prometheus_url}
    return out


def run(args: argparse.Namespace) -> int:
    from extender.metrics.cache import collector_for
    from extender.monitoring.catalog import load_for
    from extender.policies.learned import learned_term_for, uses_learned
    from extender.server import create_app
    from extender.settings import load_settings

    settings = load_settings(args.config, overrides=overrides(args))
    catalog = load_for(settings)  # loaded here, once: a bad monitoring.yaml fails before serving
    if uses_learned(settings):
        learned_term_for(settings)  # a bad model file fails here too, not in every worker
    options = serving.gunicorn_options(args, settings.server)  # bad TLS files fail here too
    # The collector is built in each worker (after fork): its refresh process and threads must
    # belong to the worker that reads the cache.
    serving.run_gunicorn(options, lambda: create_app(settings, catalog, collector_for(settings)),
                         monitoring=serving.monitoring_address(args),
                         monitoring_threads=args.monitoring_threads, server=settings.server)
    return 0
