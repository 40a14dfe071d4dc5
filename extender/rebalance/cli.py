"""Run the rebalancer: evict pods from nodes that stay hot when the extender ranks another node
clearly better for them (see config/rebalance.yaml).

Uses the in-cluster service account unless --kubeconfig is given. With --dry-run it logs and
publishes (/metrics, /api/v1/rebalance) what it would evict, and evicts nothing. --once runs a
single cycle and prints its report as JSON. --check validates the settings and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading

from extender.rebalance.settings import DEFAULT_CONFIG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `extender rebalance` options."""
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="rebalancer settings YAML (default: %(default)s)")
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster service account)")
    parser.add_argument("--dry-run", action="store_true",
                        help="log and publish what would be evicted, evict nothing")
    parser.add_argument("--once", action="store_true",
                        help="run one cycle without leader election, print it as JSON")
    parser.add_argument("--check", action="store_true", help="validate the settings and exit")


def run(args: argparse.Namespace) -> int:
    """Run the rebalancer (or one cycle, or a settings check); returns the exit code."""
    import msgspec
    from kubernetes.client import CoreV1Api
    from prometheus_client import REGISTRY

    from extender.leader import api_client_for
    from extender.metrics.cache import Fetcher, MetricsCache
    from extender.metrics.prometheus import PrometheusSource
    from extender.rebalance.controller import RebalanceMetrics, Rebalancer
    from extender.rebalance.kube import ClusterApi
    from extender.rebalance.settings import load_rebalance_settings

    settings, extender = load_rebalance_settings(args.config)
    if args.dry_run:
        settings = msgspec.structs.replace(settings, dry_run=True)
    if args.check:
        print(f"{settings.source}: ok (extender settings {extender.source}, "
              f"{len(settings.thresholds)} thresholds{', dry run' if settings.dry_run else ''})")
        return 0
    api_client = api_client_for(args.kubeconfig)
    api = ClusterApi(CoreV1Api(api_client), extender.policy, settings.api_timeout_s,
                     events=settings.events and not settings.dry_run)
    cache = MetricsCache(extender, Fetcher(extender, PrometheusSource(extender.prometheus)))
    rebalancer = Rebalancer(settings, extender, api, cache, metrics=RebalanceMetrics(REGISTRY))
    if args.once:
        report = rebalancer.cycle()
        print(msgspec.json.encode(report).decode())
        return 1 if report.error else 0

    from extender.leader import run_elected
    from extender.rebalance.http import serve

    leading = threading.Event()
    server = None
    if settings.listen_port:
        server = serve(rebalancer, REGISTRY, settings.listen_port, leading.is_set)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def work(stopping: threading.Event) -> None:
        leading.set()
        try:
            rebalancer.run(stopping)
        finally:
            leading.clear()

    try:
        if not settings.leader.enabled:
            work(stop)
            return 0
        identity = settings.leader.identity or os.environ.get("POD_NAME") or socket.gethostname()
        return run_elected(settings.leader, settings.namespace, api_client, identity, work, stop)
    finally:
        if server is not None:
            server.shutdown()
        sys.stdout.flush()
