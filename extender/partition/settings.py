"""Settings of the partition controller, loaded from `config/partition.yaml`.

Design decisions:
- One frozen tree, built once by `load_partition_settings()`, with the cross-field checks that
  types cannot express done here, before anything touches the cluster. In particular the leader
  election timings are checked here because `kubernetes.leaderelection.electionconfig.Config`
  calls `sys.exit` on bad values instead of raising.
- The worker pod template is kept as plain data (a Kubernetes Pod manifest without name): it is
  rendered, not interpreted, so typing every PodSpec field here would only duplicate the API. We
  check the few things the controller relies on (the sized container exists).
- Environment overrides use the prefix `PARTITION_`, e.g. `PARTITION_NAMESPACE=extract`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from extender.errors import ConfigError
from extender.settings import (
    LeaderSettings,
    Struct,
    load_section,
    require_positive,
    validate_leader,
)

ENV_PREFIX = "PARTITION_"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DEFAULT_CONFIG = Path("config/partition.yaml")


class EligibilitySettings(Struct, frozen=True):
    """Which nodes get a worker."""

    node_selector: dict[str, str] = {}
    """Labels a node must carry (all of them, exact values); empty selects every node."""
    exclude_control_plane: bool = True
    control_plane_labels: tuple[str, ...] = (
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
    )
    """A node carrying any of these label keys is a control-plane node."""
    exclude_cordoned: bool = True
    """Nodes with `spec.unschedulable: true` (kubectl cordon) lose their worker."""
    not_ready_grace_s: float = 60.0
    """A NotReady (or Unknown) node keeps its worker this long, measured from the Ready
    condition's lastTransitionTime: short kubelet hiccups must not reshuffle the partition."""
    exclude_taints: tuple[str, ...] = ()
    """Taint keys (NoSchedule or NoExecute effect) that exclude a node, e.g. `maintenance`."""


class SizingSettings(Struct, frozen=True):
    """How big each worker is, as fractions of its node's allocatable resources."""

    container: str = "worker"
    """The template container that receives the computed requests and limits."""
    cpu_fraction: float = 0.8
    memory_fraction: float = 0.8
    """Leave room for the sidecar, DaemonSets and system pods that allocatable does not cover."""
    gpu_fraction: float = 1.0
    """GPUs are whole devices: the result is rounded down."""
    set_limits: bool = True
    """Limits equal to requests (Guaranteed QoS). GPUs always get limit = request."""


class RolloutSettings(Struct, frozen=True):
    """How changes and failures are rolled out."""

    max_unavailable: int = 1
    """Replacements (config or allocatable changed) start only while fewer than this many eligible
    nodes lack a ready worker. Creates for missing workers and deletes are never held back."""
    backoff_initial_s: float = 10.0
    """Delay before recreating a worker that failed or vanished; doubles per consecutive failure."""
    backoff_max_s: float = 300.0
    delete_grace_period_s: int | None = None
    """Grace period for deletions; None keeps the pod's own terminationGracePeriodSeconds."""


class PartitionLeaderSettings(LeaderSettings, frozen=True):
    """The partition controller's Lease (a partial `leader:` section keeps this name)."""

    lease_name: str = "extender-partition"


Membership = Literal["none", "roll", "agents"]
REMOTE_EXECUTION_COMMANDS = ("none", "ssh", "srun", "blaunch", "qrsh")
"""The NIO adaptor's accepted values (COMPSs NIOConfiguration)."""


class AgentSettings(Struct, frozen=True):
    """The COMPSs agents' REST API of the master (`membership: agents`)."""

    url: str = "http://compss-master.extract.svc:46101"
    """Base URL of the master agent's REST interface (`compss_agent_start --rest_port`); the
    calls are `PUT <url>/COMPSs/addResources`, `.../removeResources`, `.../lostNode`."""
    adaptor: str = "es.bsc.compss.agent.comm.CommAgentAdaptor"
    """Adaptor the master uses to reach each worker agent (the agent scripts' `--comm`)."""
    comm_port: int = 46102
    """Each worker agent's `--comm_port`, sent as the adaptor property `Port`."""
    timeout_s: float = 5.0
    """Connect and read timeout of each REST call."""


class CompssSettings(Struct, frozen=True):
    """What the COMPSs runtime needs: stable worker names and its two XML files.

    The controller publishes `resources.xml` and `project.xml` in the partition ConfigMap (ready
    workers only) and keeps a headless Service named `service`, so that each worker's
    `ComputeNode Name` is the DNS name `<hostname>.<service>.<namespace>.svc`.
    """

    enabled: bool = True
    """Publish the XML files and keep the headless Service; False publishes resources.json only."""
    service: str = "partition-workers"
    """The headless Service selecting the workers; the pods get `subdomain: <service>`."""
    cluster_domain: str = ""
    """Appended to the names when set (e.g. `cluster.local`); empty names end in `.svc`, which
    the pods' DNS search path resolves."""
    install_dir: str = "/opt/COMPSs"
    working_dir: str = "/tmp/COMPSsWorker"
    user: str | None = None
    """`User` of each ComputeNode (only used by SSH-started workers); None leaves it out."""
    app_dir: str | None = "/app"
    pythonpath: str | None = "/app"
    limit_of_tasks: int | None = None
    """Tasks at once per worker; None: the worker's ComputingUnits."""
    min_port: int = 43001
    max_port: int = 43002
    """The NIO adaptor's port range on each worker (MaxPort > MinPort, as the runtime requires)."""
    remote_execution_command: str = "none"
    """How the master starts a worker: `none` means already started (by Kubernetes)."""
    membership: Membership = "none"
    """How a running master learns about joins and leaves: `none` (it reads the files at start),
    `roll` (the master Deployment's pod template gets the files' hash: a rolling restart),
    `agents` (REST calls to the master agent)."""
    master_deployment: str = "compss-master"
    """The master's Deployment (`membership: roll`)."""
    master_namespace: str | None = None
    """Namespace of the master's Deployment; None: the controller's namespace."""
    agents: AgentSettings = AgentSettings()


class PartitionSettings(Struct, frozen=True):
    """The partition controller's whole configuration."""

    namespace: str = "extract"
    """Where worker pods, the ConfigMap, the Lease and the Events live (--namespace overrides)."""
    partition: str = "default"
    """Value of the `extract.io/partition` label on the workers: the controller's pod selector.
    Two controllers with different values manage disjoint worker sets."""
    name_prefix: str = "partition-worker"
    """Worker pod names are `<prefix>-<node>` (hashed when longer than 63 characters)."""
    configmap: str = "partition"
    """ConfigMap holding `partition.yaml` and `resources.json` for the workflow runtime."""
    resync_interval_s: float = 300.0
    """Full relist of nodes and workers, on top of the watches."""
    min_reconcile_interval_s: float = 1.0
    """Events arriving closer together are coalesced into one reconcile."""
    api_timeout_s: float = 10.0
    """Timeout of each non-watch API request."""
    metrics_port: int = 9102
    """Prometheus metrics on http://0.0.0.0:<port>/metrics; 0 disables."""
    events: bool = True
    """Write Kubernetes Events on worker pods for creates, deletes and replacements."""
    eligibility: EligibilitySettings = EligibilitySettings()
    sizing: SizingSettings = SizingSettings()
    rollout: RolloutSettings = RolloutSettings()
    leader: PartitionLeaderSettings = PartitionLeaderSettings()
    compss: CompssSettings = CompssSettings()
    pod_template: dict[str, Any] = {}
    """A Pod manifest (metadata.labels/annotations and spec) without name, namespace or node
    affinity: the controller adds those per node."""
    source: str = "<defaults>"
    """The file these settings came from (for messages)."""


def load_partition_settings(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None
) -> PartitionSettings:
    """Load and validate `path` (default config/partition.yaml); ConfigError names file and key."""
    path = Path(path or DEFAULT_CONFIG)
    settings = load_section(path, PartitionSettings, environ=environ, env_prefix=ENV_PREFIX)
    validate(settings)
    return settings


def validate(settings: PartitionSettings) -> None:
    """Cross-field checks; ConfigError `file: key: reason` on the first problem."""
    src = settings.source
    fractions = {
        "sizing.cpu_fraction": settings.sizing.cpu_fraction,
        "sizing.memory_fraction": settings.sizing.memory_fraction,
        "sizing.gpu_fraction": settings.sizing.gpu_fraction,
    }
    for key, value in fractions.items():
        if not 0 < value <= 1:
            raise ConfigError(f"{src}: {key}: expected a fraction in (0, 1], got {value}")
    positive = {
        "resync_interval_s": settings.resync_interval_s,
        "api_timeout_s": settings.api_timeout_s,
        "rollout.backoff_initial_s": settings.rollout.backoff_initial_s,
        "rollout.max_unavailable": settings.rollout.max_unavailable,
    }
    require_positive(src, positive)
    if settings.rollout.backoff_max_s < settings.rollout.backoff_initial_s:
        raise ConfigError(f"{src}: rollout.backoff_max_s: must be >= rollout.backoff_initial_s")
    if settings.min_reconcile_interval_s < 0 or settings.eligibility.not_ready_grace_s < 0:
        raise ConfigError(f"{src}: min_reconcile_interval_s and eligibility.not_ready_grace_s must be >= 0")
    if not 0 <= settings.metrics_port <= 65535:
        raise ConfigError(f"{src}: metrics_port: expected 0..65535, got {settings.metrics_port}")
    if not settings.name_prefix or len(settings.name_prefix) > 40:
        raise ConfigError(f"{src}: name_prefix: expected 1..40 characters")
    validate_leader(settings.leader, src)
    _validate_compss(settings.compss, src)
    _validate_template(settings.pod_template, settings.sizing.container, src)


def _validate_template(template: Mapping[str, Any], container: str, src: str) -> None:
    spec = template.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError(f"{src}: pod_template.spec: required (a Kubernetes PodSpec)")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ConfigError(f"{src}: pod_template.spec.containers: expected a non-empty list")
    names = [c.get("name") for c in containers if isinstance(c, dict)]
    if container not in names:
        raise ConfigError(
            f"{src}: sizing.container: no container {container!r} in "
            f"pod_template.spec.containers (have: {', '.join(map(str, names))})"
        )
    meta = template.get("metadata", {})
    if not isinstance(meta, dict) or {"name", "namespace", "generateName"} & set(meta):
        raise ConfigError(f"{src}: pod_template.metadata: name and namespace are set per node")


def _validate_compss(compss: CompssSettings, src: str) -> None:
    # The COMPSs runtime's own checks (its Validator classes), so a bad value fails here, not in
    # a master reading the published files.
    if not 0 <= compss.min_port < compss.max_port <= 65535:
        raise ConfigError(f"{src}: compss.min_port/max_port: need 0 <= min_port < max_port <= 65535")
    if compss.remote_execution_command not in REMOTE_EXECUTION_COMMANDS:
        raise ConfigError(f"{src}: compss.remote_execution_command: expected one of "
                          f"{', '.join(REMOTE_EXECUTION_COMMANDS)}")
    if compss.limit_of_tasks is not None and compss.limit_of_tasks < 1:
        raise ConfigError(f"{src}: compss.limit_of_tasks: expected >= 1 or null")
    if not compss.install_dir or not compss.working_dir:
        raise ConfigError(f"{src}: compss.install_dir and compss.working_dir: required")
    if not _DNS_LABEL.fullmatch(compss.service):
        raise ConfigError(f"{src}: compss.service: expected a DNS label, got {compss.service!r}")
    require_positive(src, {"compss.agents.timeout_s": compss.agents.timeout_s})
    if not compss.agents.url.startswith(("http://", "https://")):
        raise ConfigError(f"{src}: compss.agents.url: expected an http(s) URL")
