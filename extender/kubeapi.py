"""Wire types of the Kubernetes objects we read (core/v1 JSON, Go field names), and nothing else.

One home for every user: the webhook (`protocol.ExtenderArgs` carries a `Pod`), the pod informer,
the partition controller and the rebalancer decode raw API JSON (`_preload_content=False`) with
msgspec into these Structs. No I/O here.

Design decisions:
- Partial on purpose: a Struct holds only fields somebody reads, and msgspec skips the rest
  without building it. The client's models cost about a millisecond per object; these a few
  microseconds.
- Small shared parts (`OwnerReference`, `Condition`, `Taint`, `NodeSpec`, `PodStatus`, `ListMeta`,
  ...) are composed into one object type per reader where the readers differ, rather than one big
  type per kind: the informer decodes pages of 500 pods on the hot path of a relist and must not
  pay for labels and annotations it never reads (`WatchedMeta`), and the webhook decodes a pod per
  verb (`ObjectMeta`, `Pod`). Each object type says who reads it.
- Unknown fields are ignored, as Go's decoder does; missing ones take the API's zero value.
"""

from __future__ import annotations

import msgspec


class Wire(msgspec.Struct, frozen=True):
    """Base of the wire types (immutable; unknown fields are ignored, as Go's decoder does)."""


# --- metadata ---------------------------------------------------------------------------------------


class OwnerReference(Wire, frozen=True):
    kind: str = ""
    name: str = ""
    controller: bool | None = None


class ObjectMeta(Wire, frozen=True):
    """What the webhook reads of a pod's metadata: identity, labels, annotations, owners."""

    name: str = ""
    namespace: str = ""
    uid: str = ""
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    ownerReferences: list[OwnerReference] | None = None  # noqa: N815 - Kubernetes field name


class LiveObjectMeta(ObjectMeta, frozen=True):
    """ObjectMeta plus version and lifecycle: listed and watched objects of the partition
    controller and the rebalancer."""

    resourceVersion: str | None = None  # noqa: N815
    creationTimestamp: str | None = None  # noqa: N815
    deletionTimestamp: str | None = None  # noqa: N815


class WatchedMeta(Wire, frozen=True):
    """What the pod informer reads of a pod's metadata: identity, version, lifecycle, owners. No
    labels or annotations: never read, and decoding them would cost on every list page."""

    uid: str = ""
    name: str = ""
    namespace: str = ""
    resourceVersion: str = ""  # noqa: N815
    creationTimestamp: str | None = None  # noqa: N815
    deletionTimestamp: str | None = None  # noqa: N815
    ownerReferences: list[OwnerReference] | None = None  # noqa: N815


class ListMeta(Wire, frozen=True):
    """A list's metadata (also a bookmark event's object metadata: only resourceVersion)."""

    resourceVersion: str = ""  # noqa: N815
    continue_: str | None = msgspec.field(default=None, name="continue")


class RawList(Wire, frozen=True):
    """Any list whose items stay raw JSON until each is decoded (or echoed back) by its reader."""

    items: list[msgspec.Raw] = []


class Status(Wire, frozen=True):
    """An API `Status` (an ERROR watch event's object)."""

    code: int = 0
    reason: str = ""
    message: str = ""


class WatchEvent(Wire, frozen=True):
    """One line of a watch stream; `object` stays raw JSON until its type is known."""

    type: str
    object: msgspec.Raw


class Bookmark(Wire, frozen=True):
    """A BOOKMARK event's object: only its resourceVersion matters."""

    metadata: ListMeta = ListMeta()


class Condition(Wire, frozen=True):
    """A pod or node condition (Ready, PodScheduled, ...)."""

    type: str = ""
    status: str = ""
    lastTransitionTime: str | None = None  # noqa: N815


# --- pods -------------------------------------------------------------------------------------------


class ResourceRequirements(Wire, frozen=True):
    requests: dict[str, str | int | float] | None = None
    limits: dict[str, str | int | float] | None = None


class Container(Wire, frozen=True):
    name: str = ""
    resources: ResourceRequirements | None = None


class PodSpec(Wire, frozen=True):
    """What the webhook and the informer read of a pod's spec: its demand and its node."""

    containers: list[Container] = []
    initContainers: list[Container] | None = None  # noqa: N815 - Kubernetes field name
    overhead: dict[str, str | int | float] | None = None
    nodeName: str | None = None  # noqa: N815
    priority: int | None = None
    schedulerName: str | None = None  # noqa: N815


class PodStatus(Wire, frozen=True):
    phase: str | None = None
    podIP: str | None = None  # noqa: N815
    conditions: list[Condition] | None = None


class Pod(Wire, frozen=True):
    """The pod as the webhook reads it (in ExtenderArgs, or read back at bind); the rebalancer's
    demand too."""

    metadata: ObjectMeta = ObjectMeta()
    spec: PodSpec = PodSpec()


class WatchedPod(Wire, frozen=True):
    """A pod as the pod informer reads it."""

    metadata: WatchedMeta = WatchedMeta()
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()


class WatchedPodList(Wire, frozen=True):
    """One page of the pod informer's list."""

    metadata: ListMeta = ListMeta()
    items: list[WatchedPod] | None = None


class WorkerPod(Wire, frozen=True):
    """A partition worker pod as its controller reads it."""

    metadata: LiveObjectMeta = LiveObjectMeta()
    status: PodStatus = PodStatus()


class WorkerPodList(Wire, frozen=True):
    metadata: ListMeta = ListMeta()
    items: list[WorkerPod] | None = None


class Volume(Wire, frozen=True):
    emptyDir: dict[str, object] | None = None  # noqa: N815
    hostPath: dict[str, object] | None = None  # noqa: N815


class PlacementSpec(Wire, frozen=True):
    """What the rebalancer reads of a pod's spec to choose victims: node, priority, local storage,
    node selector (its demand comes from `Pod`)."""

    nodeName: str | None = None  # noqa: N815
    priority: int | None = None
    priorityClassName: str | None = None  # noqa: N815
    volumes: list[Volume] | None = None
    nodeSelector: dict[str, str] | None = None  # noqa: N815


class PlacedPod(Wire, frozen=True):
    """A pod as the rebalancer reads it."""

    metadata: LiveObjectMeta = LiveObjectMeta()
    spec: PlacementSpec = PlacementSpec()
    status: PodStatus = PodStatus()


# --- nodes ------------------------------------------------------------------------------------------


class NodeMeta(Wire, frozen=True):
    name: str = ""


class NodeHeader(Wire, frozen=True):
    """What the webhook reads of a full Node in ExtenderArgs (nodeCacheCapable: false): its name.
    The rest stays raw and is echoed back."""

    metadata: NodeMeta = NodeMeta()


class Taint(Wire, frozen=True):
    key: str = ""
    effect: str = ""


class NodeSpec(Wire, frozen=True):
    unschedulable: bool | None = None
    taints: list[Taint] | None = None


class NodeStatus(Wire, frozen=True):
    allocatable: dict[str, str] | None = None
    conditions: list[Condition] | None = None


class Node(Wire, frozen=True):
    """A Node as the partition controller and the rebalancer read it."""

    metadata: LiveObjectMeta = LiveObjectMeta()
    spec: NodeSpec = NodeSpec()
    status: NodeStatus = NodeStatus()


class NodeList(Wire, frozen=True):
    """A node list with decoded items (the partition controller's relist)."""

    metadata: ListMeta = ListMeta()
    items: list[Node] | None = None


# --- others -----------------------------------------------------------------------------------------


class ConfigMap(Wire, frozen=True):
    data: dict[str, str] | None = None


class ServicePort(Wire, frozen=True):
    port: int
    name: str | None = None


class ServiceSpec(Wire, frozen=True):
    clusterIP: str | None = None  # noqa: N815
    selector: dict[str, str] | None = None
    publishNotReadyAddresses: bool | None = None  # noqa: N815
    ports: list[ServicePort] | None = None


class Service(Wire, frozen=True):
    metadata: LiveObjectMeta = LiveObjectMeta()
    spec: ServiceSpec = ServiceSpec()
