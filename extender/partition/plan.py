"""Pure planning: observed nodes and workers + settings -> actions. No I/O.

Design decisions:
- One worker per node under a name derived only from the node's name. The API server refuses a
  second object with the same name, so no race, restart or second replica can ever create two
  workers for one node: the loser of a race gets 409, which the reconciler treats as success.
- A replacement is delete-then-create under that same name, never a surge: a worker sized to a
  fraction of its node would not fit next to its predecessor anyway. `max_unavailable` bounds how
  many ready workers are taken down at once for replacements.
- Change detection without reading pod specs back: each worker carries an annotation with a hash
  of (template digest, node, computed size). A config change alters the digest (every worker is
  replaced, one by one), an allocatable change alters one node's size (that worker is replaced).
- The plan also says when to look again (a NotReady grace period or a recreate backoff expiring),
  so the reconciler needs no timers of its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from extender.partition.settings import (
    EligibilitySettings,
    PartitionSettings,
    RolloutSettings,
    SizingSettings,
)

PARTITION_LABEL = "extract.io/partition"
"""Label selecting the controller's own workers; its value is `settings.partition`."""
NODE_ANNOTATION = "extract.io/partition-node"
"""The node a worker belongs to (an annotation: node names may exceed label-value limits)."""
HASH_ANNOTATION = "extract.io/partition-spec-hash"
GPU_RESOURCE = "nvidia.com/gpu"
MAX_POD_NAME = 63
"""Pod names end up as host names: keep them a valid DNS label length."""
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
WORKER_ENV = ("WORKER_HOSTNAME", "WORKER_CPUS", "WORKER_GPUS", "WORKER_MEMORY_GB")
"""Set in the sized container when COMPSs is enabled: the worker's published name and share,
so that the worker process announces exactly what resources.xml lists."""


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of the three resources the partition is sized on."""

    cpu_millis: int
    memory_bytes: int
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class ObservedNode:
    """What the plan needs to know about a node; equal views mean nothing relevant changed."""

    name: str
    allocatable: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    unschedulable: bool = False
    ready: bool = True
    ready_since: float | None = None
    """Epoch seconds of the Ready condition's last transition (start of a NotReady spell)."""
    taints: tuple[tuple[str, str], ...] = ()
    """(key, effect) pairs."""


@dataclass(frozen=True, slots=True)
class ObservedWorker:
    """What the plan needs to know about one of the controller's worker pods."""

    name: str
    node: str
    spec_hash: str
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    ip: str | None = None


ActionKind = Literal["create", "delete", "replace"]


@dataclass(frozen=True, slots=True)
class Action:
    """One change to make. `replace` deletes now; the create follows once the old pod is gone."""

    kind: ActionKind
    node: str
    pod: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The actions to take now, those held back (budget or backoff), and when to look again."""

    actions: tuple[Action, ...]
    held: tuple[Action, ...]
    eligible: frozenset[str]
    excluded: Mapping[str, str]
    """Node -> why it gets no worker."""
    wake_at: float | None
    """Epoch seconds at which a grace period or backoff ends (re-plan then), or None."""


@dataclass(frozen=True, slots=True)
class PartitionEntry:
    """One line of the published partition."""

    node: str
    pod: str
    ip: str | None
    cpu_millis: int
    memory_bytes: int
    gpus: int
    ready: bool


def worker_name(node: str, prefix: str) -> str:
    """The one pod name a node's worker may have: `<prefix>-<node>`, hashed when too long."""
    name = f"{prefix}-{node}"
    if len(name) <= MAX_POD_NAME:
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:10]
    return f"{name[: MAX_POD_NAME - 11].rstrip('.-')}-{digest}"


def worker_hostname(pod: str) -> str:
    """The pod's `hostname`: its name when that is a DNS label, else a label derived from it.

    Node names may contain dots (`ip-10-0-0-1.ec2.internal`), pod host names may not; the hash of
    the full name keeps two such names apart.
    """
    if _DNS_LABEL.fullmatch(pod):
        return pod
    digest = hashlib.sha256(pod.encode()).hexdigest()[:10]
    label = re.sub(r"[^a-z0-9-]", "-", pod.lower())[: MAX_POD_NAME - 11].strip("-")
    return f"{label}-{digest}"


def compute_node_name(pod: str, settings: PartitionSettings) -> str:
    """The worker's DNS name through the headless Service: COMPSs's `ComputeNode Name`."""
    name = f"{worker_hostname(pod)}.{settings.compss.service}.{settings.namespace}.svc"
    domain = settings.compss.cluster_domain.strip(".")
    return f"{name}.{domain}" if domain else name


def compss_units(share: Resources) -> tuple[int, int, str]:
    """(ComputingUnits, GPUs, memory in GB) that COMPSs is told for a worker of this share.

    COMPSs counts whole cores: the share is rounded down, but never below one core (the pod's
    CPU limit throttles a fractional share). Memory is in GiB, rounded to three decimals (at most
    half a MiB off; "0.000" for a share below half a MiB, which the COMPSs rules then reject).
    """
    cpus = max(1, share.cpu_millis // 1000)
    mebibytes = (share.memory_bytes * 1000 + 2**29) // 2**30
    return cpus, share.gpus, f"{mebibytes // 1000}.{mebibytes % 1000:03d}"


def size(allocatable: Resources, sizing: SizingSettings) -> Resources:
    """The worker's share of a node's allocatable resources (rounded down)."""
    return Resources(
        cpu_millis=int(allocatable.cpu_millis * sizing.cpu_fraction),
        memory_bytes=int(allocatable.memory_bytes * sizing.memory_fraction),
        gpus=int(allocatable.gpus * sizing.gpu_fraction),
    )


def template_digest(settings: PartitionSettings) -> str:
    """A digest of everything in the settings that shapes a worker pod."""
    shaping = {
        "template": settings.pod_template,
        "sizing": [settings.sizing.container, settings.sizing.set_limits],
        "namespace": settings.namespace,
        "partition": settings.partition,
        # hostname/subdomain and the WORKER_* names (render_worker) depend on these.
        "compss": [settings.compss.enabled, settings.compss.service, settings.compss.cluster_domain],
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def spec_hash(digest: str, node: str, resources: Resources) -> str:
    """The annotation value a worker for `node` must carry to be current."""
    key = f"{digest}|{node}|{resources.cpu_millis}|{resources.memory_bytes}|{resources.gpus}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def exclusion(node: ObservedNode, rules: EligibilitySettings, now: float) -> tuple[str | None, float | None]:
    """Why `node` gets no worker (None if it does), and when that answer may change by itself.

    The second value is the end of a running NotReady grace period, else None.
    """
    for key, value in rules.node_selector.items():
        if node.labels.get(key) != value:
            return f"label {key}={value} missing", None
    if rules.exclude_control_plane and any(k in node.labels for k in rules.control_plane_labels):
        return "control-plane node", None
    if rules.exclude_cordoned and node.unschedulable:
        return "cordoned", None
    for key, effect in node.taints:
        if key in rules.exclude_taints and effect in ("NoSchedule", "NoExecute"):
            return f"tainted {key}:{effect}", None
    if not node.ready:
        since = node.ready_since if node.ready_since is not None else now
        grace_end = since + rules.not_ready_grace_s
        if now >= grace_end:
            return f"NotReady for {now - since:.0f}s", None
        return None, grace_end
    return None, None


def plan(
    nodes: Mapping[str, ObservedNode],
    workers: Iterable[ObservedWorker],
    settings: PartitionSettings,
    *,
    now: float,
    not_before: Mapping[str, float] | None = None,
) -> Plan:
    """Compare the observed cluster with the desired partition.

    `nodes` maps node name -> view; `workers` are the controller's pods (label-selected);
    `not_before` maps node -> epoch seconds before which its worker must not be recreated
    (backoff after a failure). Runs in O(nodes + workers); touches nothing.
    """
    not_before = not_before or {}
    digest = template_digest(settings)
    prefix = settings.name_prefix
    wakes: list[float] = []
    expected: dict[str, str] = {}
    excluded: dict[str, str] = {}
    for node in nodes.values():
        reason, until = exclusion(node, settings.eligibility, now)
        if until is not None:
            wakes.append(until)
        if reason is None:
            expected[node.name] = spec_hash(digest, node.name, size(node.allocatable, settings.sizing))
        else:
            excluded[node.name] = reason

    actions: list[Action] = []
    held: list[Action] = []
    present: set[str] = set()
    available: set[str] = set()
    stale: list[ObservedWorker] = []
    for worker in workers:
        own_name = worker.name == worker_name(worker.node, prefix)
        # Any pod of ours on the node, even one about to go, blocks a create: never two workers.
        present.add(worker.node)
        if worker.deleting:
            continue
        if worker.node not in expected:
            reason = excluded.get(worker.node, "node removed")
            actions.append(Action("delete", worker.node, worker.name, reason))
        elif not own_name:
            actions.append(Action("delete", worker.node, worker.name, "not the node's worker name"))
        elif worker.phase in ("Failed", "Succeeded"):
            actions.append(Action("delete", worker.node, worker.name, f"worker {worker.phase}"))
        elif worker.spec_hash != expected[worker.node]:
            stale.append(worker)
        elif worker.ready:
            available.add(worker.node)

    for node_name in sorted(expected.keys() - present):
        pod = worker_name(node_name, prefix)
        ready_at = not_before.get(node_name)
        if ready_at is not None and ready_at > now:
            held.append(Action("create", node_name, pod, f"backoff for {ready_at - now:.0f}s"))
            wakes.append(ready_at)
        else:
            actions.append(Action("create", node_name, pod, "no worker"))

    # Stale workers that are not ready cost no availability; ready ones share the budget.
    budget = settings.rollout.max_unavailable - (
        len(expected) - len(available) - sum(1 for w in stale if w.ready)
    )
    for worker in sorted(stale, key=lambda w: w.node):
        action = Action("replace", worker.node, worker.name, "spec or allocatable changed")
        if not worker.ready:
            actions.append(action)
        elif budget > 0:
            actions.append(action)
            budget -= 1
        else:
            held.append(action)

    return Plan(
        actions=tuple(actions),
        held=tuple(held),
        eligible=frozenset(expected),
        excluded=excluded,
        wake_at=min(wakes) if wakes else None,
    )


def backoff_delay(failures: int, rollout: RolloutSettings) -> float:
    """Seconds to wait before recreating after `failures` consecutive failures (>= 1)."""
    delay: float = rollout.backoff_initial_s * 2 ** max(failures - 1, 0)
    return min(delay, rollout.backoff_max_s)


def render_worker(node: ObservedNode, settings: PartitionSettings) -> dict[str, Any]:
    """The Pod manifest of `node`'s worker: the template, named, labelled, pinned and sized."""
    resources = size(node.allocatable, settings.sizing)
    manifest = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(settings.pod_template)}
    meta = manifest.setdefault("metadata", {})
    meta["name"] = worker_name(node.name, settings.name_prefix)
    meta["namespace"] = settings.namespace
    meta.setdefault("labels", {})[PARTITION_LABEL] = settings.partition
    meta.setdefault("annotations", {}).update(
        {
            NODE_ANNOTATION: node.name,
            HASH_ANNOTATION: spec_hash(template_digest(settings), node.name, resources),
        }
    )
    spec = manifest["spec"]
    compss = settings.compss
    if compss.enabled:
        # With `subdomain` matching the headless Service, <hostname>.<service>.<ns>.svc resolves.
        spec["hostname"] = worker_hostname(meta["name"])
        spec["subdomain"] = compss.service
    # matchFields on metadata.name is exact; the hostname label can differ from the node name.
    spec.setdefault("affinity", {})["nodeAffinity"] = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node.name]}]}
            ]
        }
    }
    amounts = {"cpu": f"{resources.cpu_millis}m", "memory": str(resources.memory_bytes)}
    gpus = {GPU_RESOURCE: str(resources.gpus)} if resources.gpus else {}
    for container in spec["containers"]:
        if container.get("name") != settings.sizing.container:
            continue
        block = container.setdefault("resources", {})
        block.setdefault("requests", {}).update(amounts | gpus)
        # Extended resources such as GPUs must have limit == request.
        block.setdefault("limits", {}).update((amounts if settings.sizing.set_limits else {}) | gpus)
        if compss.enabled:
            cpus, gpu_units, memory_gb = compss_units(resources)
            values = (compute_node_name(meta["name"], settings), str(cpus), str(gpu_units), memory_gb)
            env = [e for e in container.get("env", []) if e.get("name") not in WORKER_ENV]
            env += [{"name": k, "value": v} for k, v in zip(WORKER_ENV, values, strict=True)]
            container["env"] = env
    return manifest


def partition_entries(
    nodes: Mapping[str, ObservedNode], workers: Iterable[ObservedWorker], settings: PartitionSettings
) -> list[PartitionEntry]:
    """The published partition: one entry per live worker on a known node, sorted by node."""
    entries = []
    for worker in workers:
        node = nodes.get(worker.node)
        if node is None or worker.deleting or worker.name != worker_name(node.name, settings.name_prefix):
            continue
        share = size(node.allocatable, settings.sizing)
        entries.append(
            PartitionEntry(
                node=node.name,
                pod=worker.name,
                ip=worker.ip,
                cpu_millis=share.cpu_millis,
                memory_bytes=share.memory_bytes,
                gpus=share.gpus,
                ready=worker.ready,
            )
        )
    return sorted(entries, key=lambda e: e.node)


def partition_document(entries: Iterable[PartitionEntry], *, max_bytes: int | None = None) -> dict[str, str]:
    """ConfigMap data for the runtime: `partition.yaml` and `resources.json`, same workers.

    `resources.json` is `{"workers": [{node, pod, ip, cpus, memory_bytes, gpus, ready}]}` (read
    by the monitoring API's service discovery). `partition.yaml` is `workers:` then one line per
    worker; each line is compact JSON, which is valid YAML (a flow mapping): milliseconds for
    5000 workers where a YAML emitter takes seconds, about 135 bytes per worker and file.

    When both copies together exceed `max_bytes` (the 1 MiB ConfigMap limit: about 3800 workers
    with short node names), `partition.yaml` only says so and points to `resources.json`, which
    stays complete: the machine-read file must never be truncated.
    """
    lines = [
        json.dumps(
            {
                "node": e.node,
                "pod": e.pod,
                "ip": e.ip,
                "cpus": e.cpu_millis / 1000,
                "memory_bytes": e.memory_bytes,
                "gpus": e.gpus,
                "ready": e.ready,
            },
            separators=(",", ":"),
        )
        for e in entries
    ]
    resources = '{"workers":[' + ",".join(lines) + "]}"
    listing = "workers:\n" + "".join(f"- {line}\n" for line in lines) if lines else "workers: []\n"
    if max_bytes is not None and len(resources.encode()) + len(listing.encode()) > max_bytes:
        listing = (
            f"# {len(lines)} workers do not fit twice in one ConfigMap: see resources.json\n"
            f"workers_file: resources.json\nworker_count: {len(lines)}\n"
        )
    return {"partition.yaml": listing, "resources.json": resources}
