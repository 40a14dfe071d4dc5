"""The emulated fleet: nodes of an OpenB node list, each with a fake internal IP.

The list is read by the project's one OpenB reader (`extender.openb`); this module only turns its
rows into `EmulatedNode`s and, for a small demo, samples them so that every kind still shows.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from extender.errors import ConfigError
from extender.openb import TraceError
from extender.openb import load_nodes as read_node_list

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class GpuModel:
    """What dcgm-exporter reports for a model, and its power envelope."""

    model_name: str
    """dcgm `modelName` label value."""
    memory_mib: int
    idle_w: float
    max_w: float


GPU_MODELS: dict[str, GpuModel] = {
    "A10": GpuModel("NVIDIA A10", 23028, 20.0, 150.0),
    "T4": GpuModel("Tesla T4", 15360, 10.0, 70.0),
    "P100": GpuModel("Tesla P100-PCIE-16GB", 16280, 30.0, 250.0),
    "V100M16": GpuModel("Tesla V100-SXM2-16GB", 16160, 40.0, 300.0),
    "V100M32": GpuModel("Tesla V100-SXM2-32GB", 32510, 40.0, 300.0),
    # G2/G3 are anonymised in OpenB; assumed to be V100-class boards.
    "G2": GpuModel("G2", 32510, 40.0, 300.0),
    "G3": GpuModel("G3", 32510, 40.0, 300.0),
}
UNKNOWN_GPU = GpuModel("unknown", 16384, 30.0, 250.0)


@dataclass(frozen=True)
class EmulatedNode:
    """One node of the OpenB node list, with a fake internal IP."""

    name: str
    ip: str
    cpu_milli: int
    memory_mib: int
    gpus: int = 0
    gpu_model: str = ""
    """OpenB model code (`T4`, `V100M32`, ...); empty for CPU-only nodes."""

    @property
    def cores(self) -> int:
        """Logical CPUs node-exporter lists (cpu_milli rounded up to whole CPUs)."""
        return max(1, math.ceil(self.cpu_milli / 1000))

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def gpu(self) -> GpuModel:
        return GPU_MODELS.get(self.gpu_model, replace(UNKNOWN_GPU, model_name=self.gpu_model))


def node_ip(row: int) -> str:
    """The fake internal IP of the node on CSV data row `row` (0-based): 10.20.x.y, y in 1..250."""
    return f"10.20.{row // 250}.{row % 250 + 1}"


def load_fleet(path: Path | str, *, limit: int | None = None, seed: int = 0) -> list[EmulatedNode]:
    """The nodes of an OpenB node list (`sn,cpu_milli,memory_mib,gpu[,model]`), read by
    `extender.openb.load_nodes`.

    `limit` keeps a seeded sample of that many nodes with CPU-only and GPU nodes in their CSV
    proportions (at least one of each when both exist and limit >= 2) and GPU nodes spread over the
    GPU models round-robin, so that a small demo still shows every kind; the result keeps CSV order.
    Raises ConfigError naming the file (and line) of bad input.
    """
    try:
        rows = read_node_list(path)
    except TraceError as exc:
        raise ConfigError(str(exc)) from exc
    nodes = []
    for index, name in enumerate(rows.names):
        cpu, memory = int(rows.cpu_milli[index]), int(rows.memory_mib[index])
        for column, value in (("cpu_milli", cpu), ("memory_mib", memory)):
            if value < 1:
                raise ConfigError(f"{path}:{index + 2}: {column}: an emulated node needs >= 1, "
                                  f"got {value}")
        gpus = int(rows.gpus[index])
        model = rows.models[rows.model[index]] if gpus else ""
        nodes.append(EmulatedNode(name=name, ip=node_ip(index), cpu_milli=cpu, memory_mib=memory,
                                  gpus=gpus, gpu_model=model))
    if limit is None or limit >= len(nodes):
        return nodes
    if limit < 1:
        raise ConfigError(f"{path}: limit: expected >= 1, got {limit}")
    return _sample(nodes, limit, random.Random(seed))


def _sample(nodes: list[EmulatedNode], limit: int, rng: random.Random) -> list[EmulatedNode]:
    order = {node.name: i for i, node in enumerate(nodes)}
    cpu_only = [node for node in nodes if not node.gpus]
    gpu = [node for node in nodes if node.gpus]
    n_cpu = round(limit * len(cpu_only) / len(nodes))
    if cpu_only and gpu and limit >= 2:
        n_cpu = min(max(n_cpu, 1), limit - 1)
    picked = rng.sample(cpu_only, n_cpu)
    by_model: dict[str, list[EmulatedNode]] = {}
    for node in gpu:
        by_model.setdefault(node.gpu_model, []).append(node)
    pools = [rng.sample(group, len(group)) for _, group in sorted(by_model.items())]
    while len(picked) < limit and any(pools):
        for pool in pools:
            if pool and len(picked) < limit:
                picked.append(pool.pop())
    return sorted(picked, key=lambda node: order[node.name])
