"""Run the partition controller: one pinned, right-sized worker pod per eligible node.

Uses the in-cluster service account unless --kubeconfig is given. With --dry-run it lists nodes and
workers once, prints the plan (create/delete/replace per node) and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, TextIO

from extender.partition.settings import DEFAULT_CONFIG

if TYPE_CHECKING:
    from extender.partition.reconcile import Reconciler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `extender partition` options."""
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="partition settings YAML (default: %(default)s)",
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster service account)"
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="namespace of workers, ConfigMap, Lease (default: from the config)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan per node and change nothing")


def run(args: argparse.Namespace) -> int:
    """Run the controller (or one dry-run plan); returns the exit code."""
    import msgspec
    from kubernetes.client import CoreV1Api
    from prometheus_client import CollectorRegistry

    from extender.leader import api_client_for
    from extender.partition.reconcile import PartitionMetrics, Reconciler
    from extender.partition.settings import load_partition_settings

    settings = load_partition_settings(args.config)
    if args.namespace:
        settings = msgspec.structs.replace(settings, namespace=args.namespace)
    api_client = api_client_for(args.kubeconfig)
    if args.dry_run:
        # Private registry: a dry run serves no metrics and must not claim the global names.
        metrics = PartitionMetrics(CollectorRegistry())
        return dry_run(Reconciler(settings, CoreV1Api(api_client), metrics=metrics), sys.stdout)

    from prometheus_client import start_http_server

    from extender.leader import run_elected

    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    reconciler = Reconciler(settings, CoreV1Api(api_client))
    if not settings.leader.enabled:
        reconciler.run(stop)
        return 0
    identity = settings.leader.identity or os.environ.get("POD_NAME") or socket.gethostname()
    return run_elected(settings.leader, settings.namespace, api_client, identity, reconciler.run, stop)


def dry_run(reconciler: Reconciler, out: TextIO) -> int:
    """List once, print the plan per node, touch nothing; returns 0."""
    from extender.partition.plan import plan

    nodes, workers = reconciler.observe()
    result = plan(nodes, workers.values(), reconciler.settings, now=reconciler.clock())
    rows = [("action", "node", "pod", "reason")]
    rows += [(a.kind, a.node, a.pod, a.reason) for a in result.actions]
    rows += [(f"held:{a.kind}", a.node, a.pod, a.reason) for a in result.held]
    rows += [("skip", node, "-", reason) for node, reason in sorted(result.excluded.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3],
            file=out,
        )
    print(
        f"\n{len(result.eligible)} eligible nodes, {len(workers)} workers, "
        f"{len(result.actions)} actions, {len(result.held)} held (dry run: nothing changed)",
        file=out,
    )
    return 0
