"""Write the recording rules of the catalog's `recorded` entries: a plain Prometheus rules file
(`rule_files:`) or a PrometheusRule for the Prometheus Operator.

The shipped `config/recording-rules.yaml` and
`manifests/components/monitoring/recording-rules.yaml` are this command's output for
`config/extender.yaml` (`make recording-rules` rewrites both); regenerate them after changing a
recorded entry's query or `cache.rate_window`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("rules", "prometheusrule")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="settings file (default $EXTENDER_CONFIG, then config/extender.yaml)")
    parser.add_argument("--format", choices=FORMATS, default="rules",
                        help="rules: a plain rules file (default); prometheusrule: a "
                             "monitoring.coreos.com/v1 PrometheusRule")
    parser.add_argument("--interval", default=None,
                        help="the group's evaluation interval, a PromQL duration (default 15s, "
                             "the cache's default refresh interval)")
    parser.add_argument("--namespace", default=None,
                        help="the PrometheusRule's namespace (default extract)")
    parser.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")


def run(args: argparse.Namespace) -> int:
    from extender.errors import ConfigError
    from extender.metrics import rules
    from extender.settings import duration_s, load_settings

    settings = load_settings(args.config)
    interval = args.interval or rules.DEFAULT_INTERVAL
    try:
        duration_s(interval)
    except ValueError as exc:
        raise ConfigError(f"--interval: {exc}") from exc
    text = rules.document(settings, args.format, interval=interval,
                          namespace=args.namespace or rules.NAMESPACE)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0
