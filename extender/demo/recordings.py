"""Requests recorded from a real kube-scheduler, rewritten onto the demo's emulated nodes.

The recordings (`data/kube-scheduler/`, see its README) carry the node names of the cluster they
were recorded on; the demo renames them onto emulated nodes and otherwise sends the bodies as
kube-scheduler sent them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extender.errors import ConfigError

if TYPE_CHECKING:
    from extender.demo.emulator import EmulatedNode

REPLAYED_MODES = ("names", "nodes")  # bind and preempt recordings need a cluster behind them
REPLAYED_VERBS = ("filter", "prioritize")


@dataclass(frozen=True)
class Recording:
    """One recorded kube-scheduler request."""

    file: str
    mode: str
    verb: str
    pod: str
    body: dict[str, Any]

    @property
    def node_names(self) -> list[str]:
        """The candidate names, from NodeNames or from the full Node objects."""
        if self.body.get("NodeNames") is not None:
            return list(self.body["NodeNames"])
        items = (self.body.get("Nodes") or {}).get("items") or []
        return [item["metadata"]["name"] for item in items]

    @property
    def gpu_nodes(self) -> set[str]:
        """Candidates whose recorded Node object advertises nvidia.com/gpu."""
        items = (self.body.get("Nodes") or {}).get("items") or []
        return {item["metadata"]["name"] for item in items
                if "nvidia.com/gpu" in (item.get("status") or {}).get("capacity", {})}


def load_recordings(directory: Path) -> list[Recording]:
    """The filter and prioritize recordings of `directory`, in file order.

    Raises ConfigError when the directory has none or a file is not a recording.
    """
    recordings = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            recording = Recording(path.name, data["mode"], data["verb"], data["pod"],
                                  data["request"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a kube-scheduler recording: {exc}") from exc
        if recording.mode in REPLAYED_MODES and recording.verb in REPLAYED_VERBS:
            recordings.append(recording)
    if not recordings:
        raise ConfigError(f"{directory}: no filter/prioritize recordings found")
    return recordings


def node_mapping(recordings: list[Recording], nodes: list[EmulatedNode]) -> dict[str, str]:
    """Recorded node name -> emulated node name.

    Recorded GPU nodes go to emulated GPU nodes, the others to CPU-only nodes first; names are
    taken in order of first appearance, so the small recordings map before the large ones. Names
    beyond the emulated nodes stay unmapped (recordings using them are skipped).
    """
    recorded_gpu = set().union(*(r.gpu_nodes for r in recordings))
    order: dict[str, None] = {}
    for recording in recordings:
        order.update(dict.fromkeys(recording.node_names))
    gpu_pool = [n.name for n in nodes if n.gpus]
    cpu_pool = [n.name for n in nodes if not n.gpus]
    mapping: dict[str, str] = {}
    for name in order:
        preferred, other = (gpu_pool, cpu_pool) if name in recorded_gpu else (cpu_pool, gpu_pool)
        pool = preferred or other
        if pool:
            mapping[name] = pool.pop(0)
    return mapping


def rewrite(value: Any, mapping: dict[str, str]) -> Any:
    """`value` with every string (and mapping key) equal to a recorded node name renamed."""
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, list):
        return [rewrite(item, mapping) for item in value]
    if isinstance(value, dict):
        return {mapping.get(k, k): rewrite(v, mapping) for k, v in value.items()}
    return value


def without_nodes(body: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """A filter/prioritize body without the candidates in `names` (either wire mode)."""
    if not names:
        return body
    out = dict(body)
    if body.get("NodeNames") is not None:
        out["NodeNames"] = [n for n in body["NodeNames"] if n not in names]
    if body.get("Nodes") is not None:
        items = body["Nodes"].get("items") or []
        out["Nodes"] = {**body["Nodes"], "items": [item for item in items
                                                   if item["metadata"]["name"] not in names]}
    return out
