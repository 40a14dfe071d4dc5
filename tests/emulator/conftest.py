"""Emulated exporter fixtures: a small OpenB node sample, a fake clock, a served emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from extender.demo.emulator import EmulatedNode, Emulator, EmulatorServer, load_fleet
from tests.support import OPENB

OPENB_NODES = OPENB / "openb_node_list_all_node.csv"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def openb_csv() -> Path:
    return OPENB_NODES


@pytest.fixture(scope="session")
def openb_nodes() -> list[EmulatedNode]:
    """Twelve OpenB nodes: CPU-only nodes and one GPU node of every model."""
    return load_fleet(OPENB_NODES, limit=12, seed=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emulator(openb_nodes: list[EmulatedNode], clock: FakeClock) -> Emulator:
    return Emulator(openb_nodes, seed=1, clock=clock)


@pytest.fixture
def served(emulator: Emulator) -> Iterator[EmulatorServer]:
    with EmulatorServer(emulator) as server:
        yield server
