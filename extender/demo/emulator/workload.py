"""What runs on emulated nodes: pods with their requests, background load, the power model."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from extender.demo.emulator.fleet import GIB, MIB, EmulatedNode, GpuModel


@dataclass(frozen=True)
class EmulatedContainer:
    """A container's requests (limits equal requests, as for Guaranteed pods)."""

    name: str
    cpu_cores: float
    memory_bytes: int
    gpus: float = 0.0
    """Whole GPUs, or a fraction of one GPU (OpenB's gpu_milli / 1000)."""


@dataclass(frozen=True)
class EmulatedPod:
    """A pod to place on an emulated node."""

    namespace: str
    name: str
    containers: tuple[EmulatedContainer, ...]
    usage_factor: float | None = None
    """Share of the requests the pod actually uses (above 1: more than it requests); None takes
    the emulator's default."""
    ready: bool = True
    owner_kind: str = "Job"
    """The controller that made the pod (kube-state-metrics' `kube_pod_owner`)."""
    owner_name: str = ""
    """Empty: a controller of its own, named after the pod."""

    @property
    def owner(self) -> tuple[str, str]:
        """(kind, name) of the pod's controller."""
        return self.owner_kind, self.owner_name or self.name

    @classmethod
    def single(cls, namespace: str, name: str, *, cpu_cores: float, memory_bytes: int,
               gpus: float = 0.0, usage_factor: float | None = None) -> EmulatedPod:
        """A pod with one container called `main`."""
        return cls(namespace, name, (EmulatedContainer("main", cpu_cores, memory_bytes, gpus),),
                   usage_factor)

    @property
    def cpu_cores(self) -> float:
        return sum(c.cpu_cores for c in self.containers)

    @property
    def memory_bytes(self) -> int:
        return sum(c.memory_bytes for c in self.containers)

    @property
    def gpus(self) -> float:
        return sum(c.gpus for c in self.containers)


@dataclass(frozen=True)
class Background:
    """A node's load apart from its pods: system daemons and work the scheduler does not see."""

    cpu: float = 0.05
    """Share of the node's cores busy (0..1)."""
    memory: float = 0.1
    """Share of the node's memory used (0..1)."""
    gpu: float = 0.0
    """Utilisation of every GPU (0..1), added to the pods' use."""
    receive_bps: float = 1 * MIB
    transmit_bps: float = 1 * MIB
    drop_pps: float = 0.0
    """Received packets dropped per second on eth0."""
    disk_read_bps: float = 1 * MIB
    disk_write_bps: float = 1 * MIB
    disk_io_now: float = 1.0
    """I/Os in flight on the disk."""
    disk_used: float = 0.3
    """Share of the root filesystem used (0..1)."""

    def validated(self) -> Background:
        """Self, or ValueError naming the first field out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            high = 1.0 if f.name in {"cpu", "memory", "gpu", "disk_used"} else math.inf
            if not 0.0 <= value <= high:
                raise ValueError(f"background {f.name}: expected 0..{high:g}, got {value!r}")
        return self


@dataclass(frozen=True)
class PowerModel:
    """Node power: RAPL's view (idle + per busy core) plus each GPU between its idle and max."""

    idle_w: float = 60.0
    per_core_w: float = 3.0
    """Extra watts per fully busy core."""
    per_gib_w: float = 0.05
    """DRAM watts per GiB installed (RAPL's DRAM domain), always on."""

    def host_w(self, node: EmulatedNode, cpu_utilisation: float) -> float:
        """What Scaphandre reports: CPU packages and DRAM, no GPUs."""
        return (self.idle_w + self.per_gib_w * node.memory_bytes / GIB
                + self.per_core_w * node.cores * cpu_utilisation)

    @staticmethod
    def gpu_w(model: GpuModel, utilisation: float) -> float:
        """One GPU's board power at `utilisation` (0..1)."""
        return model.idle_w + (model.max_w - model.idle_w) * utilisation
