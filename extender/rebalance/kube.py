"""The rebalancer's Kubernetes API edge: list pods and nodes, evict, write Events.

Design decisions:
- One list of pods and one of nodes per cycle, no watches: a cycle runs once a minute, and a
  fresh list is the simplest view that cannot drift. Lists are decoded from raw JSON into
  msgspec Structs holding only the fields read here (`kubeapi.PlacedPod`, `kubeapi.Node`; the
  client's models cost about a millisecond per object).
- A pod's demand is computed by the extender's own `pod_demand`, from the same wire type the
  webhook decodes, so the rebalancer and the extender agree on what a pod asks for.
- Evictions go through the Eviction API, so PodDisruptionBudgets hold: 429 (a budget forbids
  it now) and 404 (the pod is gone) are outcomes, not errors.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import msgspec
from kubernetes.client import CoreV1Api, V1DeleteOptions, V1Eviction, V1ObjectMeta, V1Preconditions
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from extender.kubeapi import Node, PlacedPod, Pod, RawList
from extender.policies.model import GPU_RESOURCE, parse_quantity, pod_demand
from extender.rebalance.choose import NodeRoom, PodView
from extender.settings import PolicySettings

log = logging.getLogger(__name__)

EVENT_SOURCE = "extender-rebalance"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
EvictOutcome = Literal["evicted", "pdb", "gone"]


def _time(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class ClusterSnapshot:
    """One cycle's view of the cluster: bound, non-terminal pods and every node."""

    pods: tuple[PodView, ...]
    nodes: Mapping[str, NodeRoom]
    uids: Mapping[str, str]
    """Node name -> uid (for Events on nodes)."""
    undecodable: tuple[str, ...] = ()
    """Pods whose requests or annotations could not be parsed (left alone, reported)."""


def decode_cluster(pods_json: bytes, nodes_json: bytes, policy: PolicySettings) -> ClusterSnapshot:
    """Decode raw pod and node lists (pure, for tests too): demands, owners, free resources."""
    views: list[PodView] = []
    bad: list[str] = []
    used: dict[str, list[float]] = {}
    for raw in msgspec.json.decode(pods_json, type=RawList).items:
        extra = msgspec.json.decode(raw, type=PlacedPod)
        meta, spec = extra.metadata, extra.spec
        if not spec.nodeName or (extra.status.phase or "") in TERMINAL_PHASES:
            continue
        try:
            demand = pod_demand(msgspec.json.decode(raw, type=Pod),
                                policy_annotation=policy.policy_annotation,
                                weights_annotation=policy.weights_annotation)
        except (ValueError, msgspec.ValidationError) as exc:
            bad.append(f"{meta.namespace}/{meta.name}: {exc}")
            continue
        cell = used.setdefault(spec.nodeName, [0.0, 0.0, 0.0])
        cell[0] += demand.cpu_cores
        cell[1] += demand.memory_bytes
        cell[2] += demand.gpus
        if meta.deletionTimestamp:
            continue  # already leaving: counts as used, never a candidate
        owner = next((o.kind for o in meta.ownerReferences or [] if o.controller), None)
        annotations = meta.annotations or {}
        views.append(PodView(
            namespace=meta.namespace, name=meta.name, uid=meta.uid, node=spec.nodeName,
            demand=demand, created_at=_time(meta.creationTimestamp), priority=spec.priority or 0,
            priority_class=spec.priorityClassName or "", owner_kind=owner,
            mirror=MIRROR_ANNOTATION in annotations,
            local_storage=any(v.emptyDir is not None or v.hostPath is not None
                              for v in spec.volumes or []),
            annotations=annotations, node_selector=spec.nodeSelector or {}))
    nodes: dict[str, NodeRoom] = {}
    uids: dict[str, str] = {}
    for raw in msgspec.json.decode(nodes_json, type=RawList).items:
        node = msgspec.json.decode(raw, type=Node)
        name = node.metadata.name
        alloc = node.status.allocatable or {}
        cpu, mem, gpus = used.get(name, [0.0, 0.0, 0.0])
        tainted = any(t.effect in ("NoSchedule", "NoExecute") for t in node.spec.taints or [])
        nodes[name] = NodeRoom(
            name=name, schedulable=not node.spec.unschedulable and not tainted,
            labels=node.metadata.labels or {},
            cpu_free_cores=_quantity(alloc.get("cpu")) - cpu,
            memory_free_bytes=_quantity(alloc.get("memory")) - mem,
            gpus_free=int(_quantity(alloc.get(GPU_RESOURCE)) - gpus))
        uids[name] = node.metadata.uid
    return ClusterSnapshot(tuple(views), nodes, uids, tuple(bad))


def _quantity(raw: str | None) -> float:
    try:
        return parse_quantity(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0


class ClusterApi:
    """The calls the rebalancer makes, with a timeout each."""

    def __init__(self, core: CoreV1Api, policy: PolicySettings, timeout_s: float,
                 events: bool = True) -> None:
        self.core = core
        self.policy = policy
        self.timeout_s = timeout_s
        self.events = events

    def observe(self) -> ClusterSnapshot:
        """List every pod and node once; ApiException / HTTPError propagate (the cycle fails)."""
        # Raw responses (`_preload_content=False`): urllib3 responses, not the typed models.
        pods: Any = self.core.list_pod_for_all_namespaces(
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
            _preload_content=False, _request_timeout=self.timeout_s)
        nodes: Any = self.core.list_node(_preload_content=False, _request_timeout=self.timeout_s)
        return decode_cluster(pods.data, nodes.data, self.policy)

    def evict(self, pod: PodView) -> EvictOutcome:
        """POST the pod's eviction: `evicted`, `pdb` (429: a disruption budget forbids it now),
        `gone` (404). Other API errors raise ApiException."""
        body = V1Eviction(metadata=V1ObjectMeta(name=pod.name, namespace=pod.namespace),
                          delete_options=V1DeleteOptions(
                              preconditions=V1Preconditions(uid=pod.uid) if pod.uid else None))
        try:
            self.core.create_namespaced_pod_eviction(pod.name, pod.namespace, body,
                                                     _preload_content=False,
                                                     _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status == 429:
                return "pdb"
            if exc.status in (404, 409):  # gone, or replaced by a pod of the same name
                return "gone"
            raise
        return "evicted"

    def event(self, kind: Literal["Pod", "Node"], name: str, namespace: str, uid: str,
              reason: str, message: str) -> None:
        """A Normal Event on the object, best effort (Events never fail a cycle)."""
        if not self.events:
            return
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        where = namespace if kind == "Pod" else "default"
        involved: dict[str, str] = {"kind": kind, "apiVersion": "v1", "name": name}
        if kind == "Pod":
            involved["namespace"] = namespace
        if uid:
            involved["uid"] = uid
        body = {"metadata": {"generateName": f"{name}.", "namespace": where},
                "involvedObject": involved, "reason": reason, "message": message[:1024],
                "type": "Normal", "count": 1, "firstTimestamp": now, "lastTimestamp": now,
                "source": {"component": EVENT_SOURCE}, "reportingComponent": EVENT_SOURCE}
        try:
            self.core.create_namespaced_event(where, cast(Any, body), _preload_content=False,
                                              _request_timeout=self.timeout_s)
        except (ApiException, HTTPError, OSError) as exc:
            log.info("event on %s %s not recorded: %s", kind, name, exc)
