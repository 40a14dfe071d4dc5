"""Validate a configuration file (and its catalogs); print errors with file, key and reason."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="settings file, e.g. config/extender.yaml")


def run(args: argparse.Namespace) -> int:
    from extender.monitoring.catalog import load_for
    from extender.policies.learned import learned_term_for, uses_learned
    from extender.settings import load_settings

    # ConfigError -> exit 2 with file, key and reason (cli.py)
    settings = load_settings(args.file)
    monitoring = load_for(settings)
    if uses_learned(settings):
        learned_term_for(settings)  # the model file: readable, a known version, features we have
    profiles = ", ".join(settings.policy.profiles)
    print(f"{args.file}: ok ({len(settings.catalog)} catalog metrics, "
          f"{len(monitoring.metrics)} monitoring metrics; profiles: {profiles}; "
          f"default: {settings.policy.default})")
    return 0
