"""Show what the extender would know: one refresh from a live Prometheus, as a table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="settings file")
    parser.add_argument("--prometheus-url", help="overrides prometheus.url")
    parser.add_argument("--metrics", help="comma-separated catalog metrics to show "
                        "(default: those the default profile weights or filters)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from extender.metrics.cache import Fetcher, MetricsCache
    from extender.metrics.prometheus import PrometheusSource
    from extender.monitoring.answers import node_views
    from extender.policies.engine import Engine
    from extender.service import Extender
    from extender.settings import load_settings

    overrides = {"prometheus": {"url": args.prometheus_url}} if args.prometheus_url else None
    settings = load_settings(args.config, overrides=overrides)
    cache = MetricsCache(settings, Fetcher(settings, PrometheusSource(settings.prometheus)))
    snapshot = cache.refresh()
    console = Console()
    if not snapshot.status.prometheus_up:
        console.print(f"[red]Prometheus unreachable[/red] at {settings.prometheus.url}: "
                      f"{next(iter(snapshot.status.errors.values()), '')}")
        return 1
    profile = settings.profile()
    if args.metrics:
        shown = [m.strip() for m in args.metrics.split(",") if m.strip()]
    else:
        shown = [m for m in settings.profile().weights if m in snapshot.table.column]
        shown += [r.metric for r in profile.filters if r.metric not in shown]
    extender = Extender(settings, cache, Engine(settings))
    units = {entry.name: entry.unit for entry in settings.catalog}
    table = Table(title=f"{len(snapshot.table.names)} nodes from {settings.prometheus.url}")
    table.add_column("node")
    table.add_column("score", justify="right")
    for metric in shown:
        table.add_column(metric, justify="right")
    table.add_column("verdict")
    for view in node_views(extender, snapshot, time.time()):
        cells = []
        for metric in shown:
            reading = view.metrics.get(metric)
            if reading is None or reading.value is None:
                cells.append("[dim]-[/dim]")
            elif units.get(metric) == "ratio":
                cells.append(f"{reading.value:.0%}")
            else:
                cells.append(f"{reading.value:.3g}")
        verdict = "[green]ok[/green]" if view.passed else f"[red]{view.reason}[/red]"
        table.add_row(view.name, str(view.reference_score), *cells, verdict)
    console.print(table)
    for metric, error in snapshot.status.errors.items():
        console.print(f"[yellow]{metric}[/yellow]: {error}")
    return 0
