"""The demo rig: everything `extender demo` needs to run without a cluster, and nothing the
webhook imports (an import-linter contract keeps it so).

    emulator/     emulated nodes and their exporters' series, served on loopback
    launcher.py   real Prometheus and Pushgateway servers on free loopback ports
    recordings.py requests recorded from a real kube-scheduler, rewritten onto emulated nodes
    replay.py     a slice of the OpenB trace replayed in compressed time through the extender
    cli.py        the `extender demo` command
"""

from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "data"
"""The repository's data folder (OpenB lists, recorded requests): the demo runs from a clone."""
