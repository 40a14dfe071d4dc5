"""Request bodies for the benchmarks, built from what a real kube-scheduler sent.

The Pod is the recorded one, byte for byte (managedFields, volumes, tolerations and all), because
decoding it is part of every call. Candidates are drawn from the synthetic fleet:
- `names` mode (`nodeCacheCapable: true`): `NodeNames` and `"Nodes": null`;
- `nodes` mode (`nodeCacheCapable: false`): `Nodes.items` holds the recorded Node object
  replicated under each candidate's name, and `"NodeNames": null`.
kube-scheduler sends the same ExtenderArgs to filter and prioritize, so one body serves both.

Every call of a real burst is about another pod, and the extender keeps per-pod state (placements
for hot-spot compensation, pod demands for bind, the decision log). So the Pod's name and uid carry
`SEQ_MARKER`, which the load generators replace with a per-request sequence number (`fill`).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

Mode = Literal["names", "nodes"]
MODES: tuple[Mode, ...] = ("names", "nodes")

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "kube-scheduler"
SEQ_MARKER = "@@SEQ@@"
POD_FIXTURE = "names-0000-filter-cache-plain.json"
NODE_FIXTURE = "nodes-0000-filter-full-plain.json"


class Recorded:
    """The recorded Pod and Node objects (from `fixtures`, the kube-scheduler recordings)."""

    def __init__(self, fixtures: Path = FIXTURES) -> None:
        try:
            pod_request = json.loads((fixtures / POD_FIXTURE).read_text())["request"]
            node_request = json.loads((fixtures / NODE_FIXTURE).read_text())["request"]
            self.pod: dict[str, Any] = pod_request["Pod"]
            self.node: dict[str, Any] = node_request["Nodes"]["items"][0]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise FileNotFoundError(
                f"{fixtures}: cannot read the recorded kube-scheduler requests {POD_FIXTURE} and "
                f"{NODE_FIXTURE} ({type(exc).__name__}: {exc}); pass --fixtures DIR") from exc

    def node_named(self, name: str, index: int) -> dict[str, Any]:
        """The recorded Node under a new name (and a matching hostname label, address and uid)."""
        node = copy.deepcopy(self.node)
        meta = node.setdefault("metadata", {})
        meta["name"] = name
        meta["uid"] = f"00000000-0000-4000-8000-{index:012d}"
        meta.setdefault("labels", {})["kubernetes.io/hostname"] = name
        for address in node.get("status", {}).get("addresses", []):
            if address.get("type") == "Hostname":
                address["address"] = name
        return node


def candidates(fleet: Sequence[str], count: int, seed: int = 1) -> list[str]:
    """`count` distinct names of `fleet` in a random (seeded) order, as kube-scheduler offers them."""
    if not 1 <= count <= len(fleet):
        raise ValueError(f"cannot offer {count} candidates from a fleet of {len(fleet)} nodes")
    return random.Random(seed * 1_000_003 + count).sample(list(fleet), count)


def extender_args(recorded: Recorded, names: Sequence[str], mode: Mode,
                  profile: str | None = None) -> bytes:
    """An ExtenderArgs body for `names` in `mode`, encoded as kube-scheduler would send it;
    with `profile`, the Pod asks for that profile (the `extract.io/policy` annotation).

    The Pod's name and uid hold `SEQ_MARKER`: `fill` the body before sending it.
    """
    pod = copy.deepcopy(recorded.pod)
    meta = pod.setdefault("metadata", {})
    if profile is not None:
        meta["annotations"] = {**(meta.get("annotations") or {}), "extract.io/policy": profile}
    meta["name"] = f"{meta.get('name', 'pod')}-{SEQ_MARKER}"
    meta["uid"] = f"00000000-0000-4000-8000-{SEQ_MARKER}"
    if mode == "names":
        body: dict[str, Any] = {"Pod": pod, "Nodes": None, "NodeNames": list(names)}
    elif mode == "nodes":
        items = [recorded.node_named(name, i) for i, name in enumerate(names)]
        body = {"Pod": pod, "Nodes": {"items": items}, "NodeNames": None}
    else:
        raise ValueError(f"unknown mode {mode!r}: expected one of {MODES}")
    return json.dumps(body, separators=(",", ":")).encode()


def fill(body: bytes, seq: int) -> bytes:
    """`body` about pod number `seq` (as the load generators do it, per request)."""
    return body.replace(SEQ_MARKER.encode(), b"%012d" % seq)
