"""The values every policy works on: what a pod asks for, and a columnar table of node metrics.

Design decision: node data is columnar (numpy arrays, one row per node, one column per catalog
metric) rather than one object per node. The extender builds a `NodeTable` once per refresh, off
the request path; a request then selects its candidate rows and every policy step is a handful of
vectorised operations, whether there are 5 candidates or 5000. The simulator builds the same
table from its (lagged) usage model, so both run exactly the same policy code.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from extender.kubeapi import Container, ObjectMeta, Pod, PodSpec, ResourceRequirements

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

GPU_RESOURCE = "nvidia.com/gpu"
GPU_MILLI_ANNOTATION = "alibabacloud.com/gpu-milli"
"""GPU sharing as in the OpenB trace and its scheduler: share of each GPU, 1000 = a whole GPU."""
GPU_COUNT_ANNOTATION = "alibabacloud.com/gpu-count"
GPU_MODEL_ANNOTATION = "alibabacloud.com/gpu-card-model"
"""Accepted GPU models, separated by `|` or `,`."""

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_DIVISOR = {"m": 1e3, "u": 1e6, "n": 1e9}
_SUFFIX = {
    "": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "1Gi", "2", 3) as a float in base units.

    Raises ValueError on anything Kubernetes would not accept.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value.strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"invalid quantity {value!r}")
    number, suffix = float(match.group(1)), match.group(2)
    # Divide for the decimal fractions: 0.001 is inexact, and "300m" should be 300 / 1000 exactly.
    if suffix in _DIVISOR:
        return number / _DIVISOR[suffix]
    return number * _SUFFIX[suffix]


@dataclass(frozen=True, kw_only=True)
class PodDemand:
    """What a pod asks for, as kube-scheduler computes it (max of init containers vs the sum of
    app containers, plus overhead), and its per-pod policy overrides."""

    namespace: str = ""
    name: str = ""
    uid: str = ""
    cpu_cores: float = 0.0
    memory_bytes: float = 0.0
    gpus: int = 0
    gpu_milli: int = 0
    """Share of one GPU (0..1000) for GPU-sharing pods; 1000 * gpus for whole GPUs."""
    gpu_models: tuple[str, ...] = ()
    """Allowed GPU models; empty means any."""
    policy: str | None = None
    """Profile requested by annotation."""
    weights: Mapping[str, float] | None = None
    """Weight overrides requested by annotation."""
    owner_kind: str = ""
    """Kind of the controller owning the pod (ReplicaSet, StatefulSet, Job, ...); empty: none."""
    owner_name: str = ""
    cpu_limit_cores: float = 0.0
    """Sum of the containers' CPU limits; 0 when any container has none (no cap)."""
    memory_limit_bytes: float = 0.0
    estimated_cpu_cores: float | None = None
    """The load the pod is expected to put on its node (`estimate_load`); None: its requests."""
    estimated_memory_bytes: float | None = None
    estimate: str = ""
    """Where the estimate comes from, for the explanation."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> str:
        """The pod's identity in the placement ledger: its UID, else namespace/name (a pod
        re-created under the same name is another pod)."""
        return self.uid or self.key

    @property
    def owner(self) -> OwnerKey | None:
        """(namespace, kind, name) of its controller, the key of its siblings' usage."""
        return (self.namespace, self.owner_kind, self.owner_name) if self.owner_kind else None

    @property
    def load_cpu_cores(self) -> float:
        """CPU cores the pod is expected to use: the estimate, else its requests."""
        return self.cpu_cores if self.estimated_cpu_cores is None else self.estimated_cpu_cores

    @property
    def load_memory_bytes(self) -> float:
        return (self.memory_bytes if self.estimated_memory_bytes is None
                else self.estimated_memory_bytes)

    @property
    def wants_gpu(self) -> bool:
        return self.gpus > 0 or self.gpu_milli > 0


OwnerKey = tuple[str, str, str]
"""(namespace, controller kind, controller name): the pods one controller makes are siblings."""


@dataclass(frozen=True)
class OwnerUsage:
    """What the running pods of each controller actually use (p90 over the pods and the window),
    from cAdvisor joined with kube-state-metrics' `kube_pod_owner`."""

    cpu_cores: Mapping[OwnerKey, float] = field(default_factory=dict)
    memory_bytes: Mapping[OwnerKey, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EstimateDefaults:
    """The load assumed for a pod without requests and without measured siblings."""

    cpu_cores: float = 0.25
    memory_bytes: float = 200 * 2**20


def estimate_load(pod: PodDemand, usage: OwnerUsage | None, defaults: EstimateDefaults) -> PodDemand:
    """`pod` with the load it is expected to put on its node: per resource the larger of its
    requests and its siblings' measured use, the default when it requests nothing, capped by
    its limits. Requests understate use (10m requested, a core used) more often than not."""
    notes = []
    cpu, memory = pod.cpu_cores, pod.memory_bytes
    if cpu <= 0:
        cpu, memory = defaults.cpu_cores, max(memory, defaults.memory_bytes)
        notes.append("default for a pod without requests")
    owner = pod.owner
    if usage is not None and owner is not None:
        seen_cpu, seen_mem = usage.cpu_cores.get(owner), usage.memory_bytes.get(owner)
        if seen_cpu is not None and seen_cpu > cpu:
            cpu = seen_cpu
            notes.append(f"CPU from its {pod.owner_kind}'s pods")
        if seen_mem is not None and seen_mem > memory:
            memory = seen_mem
            notes.append(f"memory from its {pod.owner_kind}'s pods")
    if pod.cpu_limit_cores > 0 and cpu > pod.cpu_limit_cores:
        cpu = pod.cpu_limit_cores
        notes.append("CPU capped at its limit")
    if pod.memory_limit_bytes > 0 and memory > pod.memory_limit_bytes:
        memory = pod.memory_limit_bytes
        notes.append("memory capped at its limit")
    if not notes:
        return pod
    text = (f"expected load {cpu:.3g} cores, {memory / 2**20:.0f} MiB "
            f"(requests {pod.cpu_cores:.3g} cores, {pod.memory_bytes / 2**20:.0f} MiB; "
            f"{'; '.join(notes)})")
    return replace(pod, estimated_cpu_cores=cpu, estimated_memory_bytes=memory, estimate=text)


def _limits(pod: Pod) -> tuple[float, float]:
    """Summed CPU and memory limits of the app containers; 0 for a resource some container
    leaves unlimited (the pod then has no cap)."""
    cpu = memory = 0.0
    cpu_capped = memory_capped = bool(pod.spec.containers)
    for container in pod.spec.containers:
        limits = (container.resources.limits if container.resources else None) or {}
        if "cpu" in limits:
            cpu += parse_quantity(limits["cpu"])
        else:
            cpu_capped = False
        if "memory" in limits:
            memory += parse_quantity(limits["memory"])
        else:
            memory_capped = False
    return (cpu if cpu_capped else 0.0), (memory if memory_capped else 0.0)


def _requests(container: Container) -> dict[str, float]:
    res = container.resources
    if res is None:
        return {}
    raw = res.requests if res.requests is not None else (res.limits or {})
    out = {key: parse_quantity(val) for key, val in raw.items()}
    # Extended resources such as GPUs are often given as limits only (requests default to them).
    for key, val in (res.limits or {}).items():
        out.setdefault(key, parse_quantity(val))
    return out


def pod_requests(spec: PodSpec) -> dict[str, float]:
    """A pod's effective requests by resource, in base units, as kube-scheduler counts them: the
    sum over app containers, at least the largest init container's, plus the pod overhead.
    Raises ValueError on unparsable quantities."""
    total: dict[str, float] = {}
    for container in spec.containers:
        for key, val in _requests(container).items():
            total[key] = total.get(key, 0.0) + val
    for container in spec.initContainers or []:
        for key, val in _requests(container).items():
            total[key] = max(total.get(key, 0.0), val)
    for key, raw in (spec.overhead or {}).items():
        total[key] = total.get(key, 0.0) + parse_quantity(raw)
    return total


def pod_demand(pod: Pod, *, policy_annotation: str = "extract.io/policy",
               weights_annotation: str = "extract.io/weights") -> PodDemand:
    """The PodDemand of a wire Pod. Raises ValueError on unparsable quantities or annotations."""
    total = pod_requests(pod.spec)
    annotations = pod.metadata.annotations or {}
    gpus = int(total.get(GPU_RESOURCE, 0.0))
    gpu_milli = 1000 * gpus
    if not gpus and annotations.get(GPU_MILLI_ANNOTATION):
        gpus = int(annotations.get(GPU_COUNT_ANNOTATION) or 1)
        gpu_milli = int(parse_quantity(annotations[GPU_MILLI_ANNOTATION])) * gpus
        if gpus < 1 or not 0 < gpu_milli <= 1000 * gpus:
            raise ValueError(f"invalid GPU share: {GPU_MILLI_ANNOTATION}="
                             f"{annotations[GPU_MILLI_ANNOTATION]!r}, {GPU_COUNT_ANNOTATION}="
                             f"{annotations.get(GPU_COUNT_ANNOTATION)!r}")
    allowed = annotations.get(GPU_MODEL_ANNOTATION)
    models = re.split(r"[|,]", allowed) if allowed else ()
    controller = next((ref for ref in pod.metadata.ownerReferences or () if ref.controller), None)
    cpu_limit, memory_limit = _limits(pod)
    return PodDemand(
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        uid=pod.metadata.uid,
        cpu_cores=total.get("cpu", 0.0),
        memory_bytes=total.get("memory", 0.0),
        gpus=gpus,
        gpu_milli=gpu_milli,
        gpu_models=tuple(m.strip() for m in models if m.strip()),
        policy=annotations.get(policy_annotation) or None,
        weights=parse_weights(annotations[weights_annotation])
        if annotations.get(weights_annotation) else None,
        owner_kind=controller.kind if controller else "",
        owner_name=controller.name if controller else "",
        cpu_limit_cores=cpu_limit,
        memory_limit_bytes=memory_limit,
    )


def request_pod(*, name: str, namespace: str, uid: str, cpu_milli: int, memory_mib: int,
                gpus: int = 0, gpu_milli: int = 0, gpu_models: Sequence[str] = (),
                annotations: Mapping[str, str] | None = None) -> Pod:
    """A wire Pod asking for these resources (the inverse of `pod_demand`): whole GPUs as
    `nvidia.com/gpu`, a share of one GPU (`gpu_milli` < 1000 per GPU) and allowed GPU models as
    OpenB's annotations."""
    requests: dict[str, str | int | float] = {"cpu": f"{cpu_milli}m", "memory": f"{memory_mib}Mi"}
    notes = dict(annotations or {})
    if gpus and gpu_milli < 1000:
        notes[GPU_MILLI_ANNOTATION] = str(gpu_milli)
        notes[GPU_COUNT_ANNOTATION] = str(gpus)
    elif gpus:
        requests[GPU_RESOURCE] = str(gpus)
    if gpu_models:
        notes[GPU_MODEL_ANNOTATION] = "|".join(gpu_models)
    return Pod(metadata=ObjectMeta(name=name, namespace=namespace, uid=uid, annotations=notes),
               spec=PodSpec(containers=[Container(
                   name="main", resources=ResourceRequirements(requests=requests))]))


def parse_weights(text: str) -> dict[str, float]:
    """`"cpu_utilisation=3, gpu_utilisation=0"` -> {name: weight}; ValueError when malformed."""
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or not weight >= 0:
            raise ValueError(f"invalid weight {part.strip()!r}: expected name=number >= 0")
        out[name.strip()] = weight
    return out


ALLOCATION_METRICS = ("cpu_allocatable_cores", "cpu_requested_cores", "memory_allocatable_bytes",
                      "memory_requested_bytes", "gpus_allocatable", "gpus_requested")
"""Catalog entries (kube-state-metrics) the allocation state is built from."""


@dataclass(frozen=True, eq=False, kw_only=True)
class Allocation:
    """Request-based allocation state per node (what kube-scheduler would count).

    Used by allocation-aware score terms such as GPU fragmentation. Arrays are indexed like the
    table's rows; `gpu_free_milli` has one column per GPU slot, -1 where the node has no such GPU.
    """

    cpu_free_milli: FloatArray
    memory_free_mib: FloatArray
    gpu_free_milli: FloatArray
    gpu_model: tuple[str, ...]


@dataclass(frozen=True, eq=False, kw_only=True)
class NodeTable:
    """Per-node metric values, one row per node and one column per catalog metric.

    `values` holds NaN where a node has no sample; `sampled_at` the sample's Unix time (NaN when
    none). Immutable by convention: the cache swaps whole tables and never writes into one.
    """

    names: tuple[str, ...]
    metrics: tuple[str, ...]
    values: FloatArray
    sampled_at: FloatArray
    built_at: float = 0.0
    allocation: Allocation | None = None
    owners: OwnerUsage | None = None
    """Measured use of each controller's pods, for `estimate_load` (None: not in the catalog)."""
    index: Mapping[str, int] = field(default_factory=dict)
    column: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.names), len(self.metrics))
        if self.values.shape != shape or self.sampled_at.shape != shape:
            raise ValueError(f"table arrays must have shape {shape}")
        if not self.index:
            object.__setattr__(self, "index", {name: i for i, name in enumerate(self.names)})
        if not self.column:
            object.__setattr__(self, "column", {name: j for j, name in enumerate(self.metrics)})

    @classmethod
    def empty(cls, metrics: Sequence[str] = (), built_at: float = 0.0) -> NodeTable:
        """A table with no nodes (before the first refresh)."""
        shape = (0, len(metrics))
        return cls(names=(), metrics=tuple(metrics), values=np.full(shape, np.nan),
                   sampled_at=np.full(shape, np.nan), built_at=built_at)

    def rows(self, names: Sequence[str]) -> IntArray:
        """Row index of each name, -1 for names not in the table."""
        return np.fromiter(map(self.index.get, names, itertools.repeat(-1)), dtype=np.intp,
                           count=len(names))

    @functools.cached_property
    def name_ranks(self) -> IntArray:
        """Each row's position in the sorted order of the names (ranks ties by name cheaply)."""
        return name_ranks(self.names)

    def fresh_medians(self, now: float, max_staleness_s: float) -> FloatArray:
        """Per metric, the median of the values that are fresh at `now` over every node of the
        table (NaN where no node has one): what `on_missing: neutral` imputes.

        Cached until the first of those values goes stale, so a request pays for it once per
        refresh at most.
        """
        memo = self.__dict__.get("_fresh_medians")
        if memo is not None:
            at, until, staleness, medians = memo
            if staleness == max_staleness_s and at <= now < until:
                return medians  # type: ignore[no-any-return]
        fresh = ~np.isnan(self.values) & (now - self.sampled_at <= max_staleness_s)
        medians = np.full(len(self.metrics), np.nan)
        have = fresh.any(axis=0)
        if have.any():
            medians[have] = column_medians(self.values[:, have], fresh[:, have])
        expiry = self.sampled_at[fresh] + max_staleness_s
        until = float(expiry.min()) if expiry.size else float("inf")
        self.__dict__["_fresh_medians"] = (now, until, max_staleness_s, medians)
        return medians

    def value(self, node: str, metric: str) -> float:
        """One value (NaN when absent)."""
        i, j = self.index.get(node), self.column.get(metric)
        if i is None or j is None:
            return float("nan")
        return float(self.values[i, j])


def column_medians(values: FloatArray, keep: npt.NDArray[np.bool_]) -> FloatArray:
    """Per column, the median of the `values` (not NaN) where `keep` (at least one per column),
    as `np.nanmedian` gives it: one sort of the whole matrix instead of its per-column loop
    (`apply_along_axis`), which took about a quarter of the simulator's time."""
    ordered = np.sort(np.where(keep, values, np.nan), axis=0)  # kept values first, NaN last
    count = keep.sum(axis=0)
    low = np.take_along_axis(ordered, ((count - 1) // 2)[None, :], axis=0)[0]
    high = np.take_along_axis(ordered, (count // 2)[None, :], axis=0)[0]
    medians: FloatArray = np.where(count % 2 == 1, low, (low + high) / 2)
    return medians


def name_ranks(names: Sequence[str]) -> IntArray:
    """Numbers that sort like `names`: the position of each in their sorted order."""
    ranks = np.empty(len(names), dtype=np.intp)
    ranks[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    return ranks
