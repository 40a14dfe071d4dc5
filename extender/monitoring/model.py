"""The JSON answers of the Monitoring API v1, shared by the server and `extender.client`.

Answers carry labels of the level, values, timestamps (Unix seconds) and units: never raw PromQL
results. The OpenAPI document derives its schemas from these Structs.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from extender.policies.explain import Decision

Source = Literal["cache", "prometheus"]


class LevelInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    unit: str
    labels: list[str]
    """Labels every series of this level carries."""
    selectors: list[str]
    """Selector keys that apply at this level."""
    cached: bool
    """Current values come from the extender's metrics cache (node level only)."""


class MetricInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    unit: str
    description: str
    levels: list[LevelInfo]


class MetricList(msgspec.Struct, frozen=True, kw_only=True):
    metrics: list[MetricInfo]


class Value(msgspec.Struct, frozen=True, kw_only=True):
    labels: dict[str, str]
    value: float
    timestamp: float
    """When the value was sampled (cache) or evaluated (Prometheus), Unix seconds."""
    age_s: float
    """Seconds between `timestamp` and the answer's `time`."""


class CurrentValues(msgspec.Struct, frozen=True, kw_only=True):
    metric: str
    level: str
    unit: str
    source: Source
    time: float
    """When the answer was made, Unix seconds."""
    series: list[Value]


class Series(msgspec.Struct, frozen=True, kw_only=True):
    labels: dict[str, str]
    points: list[tuple[float, float]]
    """(Unix seconds, value) every `step` seconds; gaps where Prometheus had no sample."""


class History(msgspec.Struct, frozen=True, kw_only=True):
    metric: str
    level: str
    unit: str
    start: float
    end: float
    step: float
    series: list[Series]


class TargetGroup(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of Prometheus' HTTP/file service-discovery format."""

    targets: list[str]
    labels: dict[str, str]


class ApiError(msgspec.Struct, frozen=True, kw_only=True):
    error: str
    """What went wrong and what to do about it."""


# --- the extender's own views (/api/v1/nodes, /nodes/<name>, /decisions, /selfcheck) ---------


class Reading(msgspec.Struct, frozen=True):
    value: float | None
    unit: str
    sampled_at: float | None
    age_s: float | None
    fresh: bool


class NodeView(msgspec.Struct, frozen=True):
    name: str
    reference_score: int
    passed: bool
    reason: str | None
    data_age_s: float | None
    metrics: dict[str, Reading]
    pending_placements: int


class CacheView(msgspec.Struct, frozen=True):
    prometheus_up: bool
    age_s: float | None
    refreshes: int
    last_refresh_duration_s: float
    errors: dict[str, str]


class NodesView(msgspec.Struct, frozen=True):
    time: float
    cache: CacheView
    reference_pod: dict[str, float]
    profile: str
    nodes: list[NodeView]


class InformerView(msgspec.Struct, frozen=True):
    """The pod informer's health: while it is down, each process counts only its own
    placements (prioritize's favourite, bind), not the other replicas'."""

    up: bool
    synced: bool
    pods: int
    relists: int
    errors: int
    last_error: str | None


class SelfCheck(msgspec.Struct, frozen=True):
    ok: bool
    prometheus_up: bool
    kubernetes_nodes: int
    """Nodes known from kube_node_info (0: node names cannot be verified)."""
    empty_entries: list[str]
    """Catalog entries whose query returned no series."""
    failed_entries: dict[str, str]
    unmatched_identities: dict[str, list[str]]
    """Per entry, exporter identities that match no Kubernetes node (fix node_labels/relabelling)."""
    nodes_without_data: dict[str, list[str]]
    """Per entry, Kubernetes nodes with no series (exporter missing on those nodes?)."""
    informer: InformerView | None = None
    """None when the informer is off (`informer.enabled: false`)."""
    recorded_entries: list[str] = []
    """Catalog entries read from their recording rule's series (`cache.recording_rules`)."""
    missing_recording_rules: dict[str, str] = {}
    """Per entry, its recorded series that Prometheus lacks (rules not installed, not selected
    by the Prometheus, or failing): read with its raw query (`auto`) or without values
    (`recorded`). A warning, not a failure, while the raw query answers."""


class PlacementView(msgspec.Struct, frozen=True):
    """A recent placement counted as load until the node's metrics show it."""

    pod: str
    at: float
    cpu_cores: float
    memory_bytes: float


class NodeDetail(msgspec.Struct, frozen=True):
    node: NodeView
    cache: CacheView
    placements: list[PlacementView]


class Decisions(msgspec.Struct, frozen=True):
    decisions: list[Decision]
