"""The `extender` command.

Each subcommand lives next to the part it drives, in a module exposing
`add_arguments(parser)` and `run(args) -> int`; heavy imports stay inside `run` so that
`extender --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from extender import __version__
from extender.errors import ExtenderError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("extender.commands.serve", "run the extender webhook under gunicorn"),
    "check-config": ("extender.commands.check_config", "validate a configuration file"),
    "nodes": ("extender.commands.nodes", "show the node snapshot from a live Prometheus"),
    "recording-rules": ("extender.commands.recording_rules",
                        "write the catalog's recording rules (rules file or PrometheusRule)"),
    "demo": ("extender.demo.cli", "run the self-contained demo (no cluster needed)"),
    "partition": ("extender.partition.cli", "run the partition controller"),
    "rebalance": ("extender.rebalance.cli", "run the rebalancer (evicts from nodes that stay hot)"),
    "sidecar": ("extender.sidecar.cli", "run the deadline sidecar next to a worker"),
    "simulate": ("extender.sim.cli", "run the trace-driven simulator"),
    "learn": ("extender.learning.cli", "train the model of the `learned` score term"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only `command`'s module is imported (all of them when None), so
    one subcommand's heavy or broken imports never affect another."""
    parser = argparse.ArgumentParser(prog="extender", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        child = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(child)
        child.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if arg in SUBCOMMANDS), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._module.run(args))
    except ExtenderError as exc:
        print(f"extender {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
