"""Wire types of `k8s.io/kube-scheduler/extender/v1`, and nothing else.

The Go types have no JSON tags, so the field names on the wire are the Go names (`Pod`, `Nodes`,
`NodeNames`, `FailedNodes`, `Host`, `Score`, ...). Decoding is partial on purpose: of the Pod we
read only what a policy needs (metadata and container resources: `kubeapi.Pod`) and msgspec skips
the rest without building it, which keeps the hot path to "parse names, read a snapshot, write a small
answer".

Full `Nodes.items` (nodeCacheCapable: false) are kept as raw JSON and echoed back verbatim in the
filter answer, so the answer keeps the mode of the request and loses no field.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from extender.errors import BodyTooLarge, ProtocolError
from extender.kubeapi import NodeHeader, RawList, Wire
from extender.kubeapi import Pod as Pod

# The embedded v1.Pod and v1.NodeList are Kubernetes objects: their types live in `kubeapi`.


# --- filter / prioritize ------------------------------------------------------------------------


class ExtenderArgs(Wire, frozen=True):
    """Body of filter and prioritize calls."""

    Pod: Pod | None = None
    Nodes: RawList | None = None
    """Set when nodeCacheCapable is false (a v1.NodeList whose items stay raw JSON, echoed back in
    the answer)."""
    NodeNames: list[str] | None = None
    """Set when nodeCacheCapable is true."""


class ExtenderFilterResult(Wire, frozen=True):
    Nodes: RawList | None = None
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = {}
    FailedAndUnresolvableNodes: dict[str, str] = {}
    Error: str = ""


class HostPriority(Wire, frozen=True, array_like=False):
    Host: str
    Score: int
    """0..10 (MaxExtenderPriority); kube-scheduler multiplies it by the weight and by 10."""


HostPriorityList = list[HostPriority]


# --- bind ---------------------------------------------------------------------------------------


class ExtenderBindingArgs(Wire, frozen=True):
    PodName: str = ""
    PodNamespace: str = ""
    PodUID: str = ""
    Node: str = ""


class ExtenderBindingResult(Wire, frozen=True):
    Error: str = ""


# --- preempt ------------------------------------------------------------------------------------


class MetaPod(Wire, frozen=True):
    UID: str = ""


class MetaVictims(Wire, frozen=True):
    Pods: list[MetaPod] = []
    NumPDBViolations: int = 0


class ExtenderPreemptionArgs(Wire, frozen=True):
    Pod: Pod | None = None
    NodeNameToVictims: dict[str, msgspec.Raw] | None = None
    """Full victims (nodeCacheCapable: false); echoed back as meta victims by UID."""
    NodeNameToMetaVictims: dict[str, MetaVictims] | None = None


class ExtenderPreemptionResult(Wire, frozen=True):
    NodeNameToMetaVictims: dict[str, MetaVictims] | None = None


# --- codec --------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder] = {}  # type: ignore[type-arg]
_header_decoder = msgspec.json.Decoder(NodeHeader)


class _FullVictims(Wire, frozen=True):
    Pods: list[Pod] = []
    NumPDBViolations: int = 0


_victims_decoder = msgspec.json.Decoder(_FullVictims)


T = TypeVar("T")


def decode(body: bytes, type_: type[T], *, max_bytes: int | None = None) -> T:
    """Decode a request body into `type_`; ProtocolError with a readable reason on bad input."""
    if max_bytes is not None and len(body) > max_bytes:
        raise BodyTooLarge(f"request body is {len(body)} bytes, the limit is {max_bytes}")
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"invalid {type_.__name__}: {exc}") from exc


def encode(value: object) -> bytes:
    """Encode a wire value as JSON."""
    return _encoder.encode(value)


def node_names(args: ExtenderArgs) -> list[str]:
    """Candidate node names, whichever mode the request used."""
    if args.NodeNames is not None:
        return args.NodeNames
    if args.Nodes is not None:
        names = []
        for raw in args.Nodes.items:
            try:
                names.append(_header_decoder.decode(raw).metadata.name)
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"invalid Nodes.items entry: {exc}") from exc
        return names
    return []


def filter_result(args: ExtenderArgs, names: list[str], passed: list[str],
                  failed: dict[str, str],
                  unresolvable: dict[str, str] | None = None) -> ExtenderFilterResult:
    """A filter answer in the request's mode: names in, names out; full Nodes in, Nodes out.

    `names` is `node_names(args)` (same order as the request); `passed` a subset of it. Full
    Node objects are echoed back verbatim (kube-scheduler errors on a node it did not offer).
    """
    unresolvable = unresolvable or {}
    if args.Nodes is not None and args.NodeNames is None:
        keep = set(passed)
        items = [raw for name, raw in zip(names, args.Nodes.items, strict=True) if name in keep]
        return ExtenderFilterResult(Nodes=RawList(items=items), FailedNodes=failed,
                                    FailedAndUnresolvableNodes=unresolvable)
    return ExtenderFilterResult(NodeNames=passed, FailedNodes=failed,
                                FailedAndUnresolvableNodes=unresolvable)


def meta_victims(args: ExtenderPreemptionArgs) -> dict[str, MetaVictims]:
    """The candidate victims as meta victims (by UID), whichever form the request used."""
    if args.NodeNameToMetaVictims is not None:
        return dict(args.NodeNameToMetaVictims)
    out: dict[str, MetaVictims] = {}
    for node, raw in (args.NodeNameToVictims or {}).items():
        try:
            victims = _victims_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"invalid NodeNameToVictims[{node!r}]: {exc}") from exc
        out[node] = MetaVictims(Pods=[MetaPod(UID=p.metadata.uid) for p in victims.Pods],
                                NumPDBViolations=victims.NumPDBViolations)
    return out
