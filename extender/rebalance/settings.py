"""Settings of the rebalancer, loaded from `config/rebalance.yaml`.

Design decisions:
- The rebalancer reads the metrics with the extender's own catalog, cache and profiles (the file
  named by `extender_config`), so "hot" and "a better node" mean what they mean to the extender.
  Only what is specific to moving work lives here: thresholds, debounce, limits, exclusions.
- Thresholds are keyed by catalog metric and say on which side a value is hot (`hot_above` or
  `hot_below`) and cool (`cool_below` / `cool_above`), so higher-is-better metrics such as
  `memory_available_ratio` need no sign tricks. The cool limit must lie on the safe side of the
  hot one: the gap is the hysteresis that keeps a destination from turning hot.
- Environment overrides use the prefix `REBALANCE_`, e.g. `REBALANCE_DRY_RUN=true`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from extender.errors import ConfigError
from extender.settings import (
    LeaderSettings,
    Settings,
    Struct,
    convert,
    load_section,
    load_settings,
    read_yaml,
    require_positive,
    validate_leader,
)

ENV_PREFIX = "REBALANCE_"
DEFAULT_CONFIG = Path("config/rebalance.yaml")

Load = Literal["cpu", "memory", "gpu", "pods"]


class Threshold(Struct, frozen=True):
    """When one catalog metric makes a node hot, and when it leaves room for more work."""

    hot_above: float | None = None
    """Hot when the value is above this (lower-is-better metrics, e.g. CPU utilisation)."""
    hot_below: float | None = None
    """Hot when the value is below this (higher-is-better metrics, e.g. available memory)."""
    cool_below: float | None = None
    """With `hot_above`: a destination must be below this (default: the hot limit)."""
    cool_above: float | None = None
    """With `hot_below`: a destination must be above this (default: the hot limit)."""
    load: Load = "pods"
    """What a pod adds to the metric: `cpu` (its CPU request over the node's cores), `memory`
    (its memory request over the node's memory), `gpu` (its GPUs over the node's GPUs), `pods`
    (an equal share of the node's value per movable pod, for signals requests do not explain,
    e.g. deadline misses)."""

    @property
    def above(self) -> bool:
        """True when high values are hot."""
        return self.hot_above is not None

    @property
    def hot(self) -> float:
        return self.hot_above if self.hot_above is not None else float(self.hot_below or 0.0)

    @property
    def cool(self) -> float:
        limit = self.cool_below if self.above else self.cool_above
        return self.hot if limit is None else limit


class LimitSettings(Struct, frozen=True):
    """How much one cycle, one node, one namespace and the whole controller may evict."""

    per_cycle: int = 5
    per_node: int = 1
    """Per hot node per cycle (the descheduler's Prometheus mode is fixed at one)."""
    per_namespace: int = 2
    """Per namespace per cycle."""
    rate_per_minute: float = 6.0
    """Token bucket refill: the long-run eviction rate of the whole controller."""
    burst: int = 6
    """Token bucket size: evictions possible at once after a quiet period."""


class ExclusionSettings(Struct, frozen=True):
    """Pods never evicted (each rule can be switched off)."""

    require_controller: bool = True
    """Only pods with a controller owner (ReplicaSet, StatefulSet, Job, ...) that recreates them."""
    mirror_pods: bool = True
    """Static pods (annotation kubernetes.io/config.mirror): the API cannot move them."""
    daemonsets: bool = True
    """DaemonSet pods: they would come back on the same node."""
    critical: bool = True
    """system-node-critical / system-cluster-critical, or priority >= `critical_priority`."""
    critical_priority: int = 2_000_000_000
    local_storage: bool = True
    """Pods with emptyDir or hostPath volumes: their data would be lost."""
    annotation: str = "extract.io/evict"
    """A pod with this annotation set to "false" is never evicted."""
    namespaces: tuple[str, ...] = ("kube-system",)
    """Namespaces whose pods are never evicted."""


class SimulationSettings(Struct, frozen=True):
    """Only for `extender simulate --rebalance`."""

    restart_cost_s: float = 30.0
    """Work lost and time added per eviction (pull, start, warm-up)."""


class RebalanceLeaderSettings(LeaderSettings, frozen=True):
    """The rebalancer's Lease (a partial `leader:` section keeps this name)."""

    lease_name: str = "extender-rebalance"


class RebalanceSettings(Struct, frozen=True):
    """The rebalancer's whole configuration."""

    extender_config: str = "extender.yaml"
    """The extender settings (Prometheus, cache, catalog, profiles), relative to this file."""
    namespace: str = "extract"
    """Where the Lease lives."""
    interval_s: float = 60.0
    """One cycle (metrics refresh, detection, evictions) per interval."""
    debounce_cycles: int = 3
    """A node is hot after this many consecutive cycles over a threshold (fresh data only)."""
    thresholds: dict[str, Threshold] = msgspec.field(default_factory=lambda: {
        "cpu_utilisation": Threshold(hot_above=0.85, cool_below=0.60, load="cpu"),
        "memory_available_ratio": Threshold(hot_below=0.10, cool_above=0.30, load="memory"),
    })
    margin: int = 2
    """Score points (0..10) by which the extender must prefer the destination over the pod's node."""
    min_pod_age_s: float = 300.0
    """Younger pods stay (also what keeps a just-moved pod from moving again at once)."""
    cooldown_s: float = 300.0
    """A node that lost or (expectedly) received a pod is neither source nor destination for
    this long: its metrics need time to show the move."""
    profile: str | None = None
    """The extender profile that ranks destinations (default: the pod's annotation, then
    policy.default)."""
    cores_metric: str = "cpu_cores"
    memory_total_metric: str = "memory_total_bytes"
    gpus_metric: str = "gpus_allocatable"
    """Catalog metrics that turn requests into shares of the node (`load: cpu|memory|gpu`)."""
    limits: LimitSettings = LimitSettings()
    exclude: ExclusionSettings = ExclusionSettings()
    dry_run: bool = False
    """Log and publish what would be evicted; evict nothing, write no Events."""
    events: bool = True
    """Kubernetes Events on the evicted pod and on its node."""
    listen_port: int = 9103
    """/metrics, /api/v1/rebalance, /healthz, /readyz on 0.0.0.0:<port>; 0 disables."""
    history: int = 20
    """Cycles kept for /api/v1/rebalance."""
    api_timeout_s: float = 10.0
    leader: RebalanceLeaderSettings = RebalanceLeaderSettings()
    simulation: SimulationSettings = SimulationSettings()
    source: str = "<defaults>"


def load_rebalance_settings(path: Path | str | None = None, *,
                            environ: Mapping[str, str] | None = None,
                            extender: Settings | None = None) -> tuple[RebalanceSettings, Settings]:
    """Load and validate `path` (default config/rebalance.yaml) and the extender settings it
    names (unless given); ConfigError names file, key and reason."""
    path = Path(path or DEFAULT_CONFIG)
    thresholds = read_yaml(path).get("thresholds")
    if isinstance(thresholds, dict):
        # msgspec reports a bad value inside a mapping as `thresholds[...]`: name the metric.
        for metric, raw in thresholds.items():
            convert(raw, Threshold, f"{path}: thresholds.{metric}")
    settings = load_section(path, RebalanceSettings, environ=environ, env_prefix=ENV_PREFIX)
    if extender is None:
        extender = load_settings(path.parent / settings.extender_config, environ=environ)
    validate(settings, extender)
    return settings, extender


def validate(settings: RebalanceSettings, extender: Settings) -> None:
    """Cross-field checks; ConfigError `file: key: reason` on the first problem."""
    src = settings.source
    known = {entry.name for entry in extender.catalog}
    if not settings.thresholds:
        raise ConfigError(f"{src}: thresholds: name at least one catalog metric")
    for metric, rule in settings.thresholds.items():
        where = f"{src}: thresholds.{metric}"
        if metric not in known:
            raise ConfigError(f"{where}: not in the catalog ({extender.source})")
        if (rule.hot_above is None) == (rule.hot_below is None):
            raise ConfigError(f"{where}: set exactly one of hot_above, hot_below")
        if rule.above and rule.cool_above is not None or not rule.above and rule.cool_below is not None:
            raise ConfigError(f"{where}: use cool_below with hot_above, cool_above with hot_below")
        if rule.above and rule.cool > rule.hot or not rule.above and rule.cool < rule.hot:
            raise ConfigError(f"{where}: the cool limit {rule.cool} must lie on the safe side of "
                              f"the hot limit {rule.hot}")
    for field in ("cores_metric", "memory_total_metric", "gpus_metric"):
        needed = {"cores_metric": "cpu", "memory_total_metric": "memory",
                  "gpus_metric": "gpu"}[field]
        if any(r.load == needed for r in settings.thresholds.values()) and \
                getattr(settings, field) not in known:
            raise ConfigError(f"{src}: {field}: {getattr(settings, field)!r} is not in the "
                              f"catalog (needed by `load: {needed}`)")
    if settings.profile is not None and settings.profile not in extender.policy.profiles:
        raise ConfigError(f"{src}: profile: no profile {settings.profile!r} in {extender.source}")
    require_positive(src, {"interval_s": settings.interval_s,
                           "debounce_cycles": settings.debounce_cycles,
                           "api_timeout_s": settings.api_timeout_s,
                           "history": settings.history,
                           "limits.rate_per_minute": settings.limits.rate_per_minute,
                           "limits.burst": settings.limits.burst})
    nonnegative = {"margin": settings.margin, "min_pod_age_s": settings.min_pod_age_s,
                   "cooldown_s": settings.cooldown_s, "limits.per_cycle": settings.limits.per_cycle,
                   "limits.per_node": settings.limits.per_node,
                   "limits.per_namespace": settings.limits.per_namespace,
                   "simulation.restart_cost_s": settings.simulation.restart_cost_s}
    for key, value in nonnegative.items():
        if not value >= 0:
            raise ConfigError(f"{src}: {key}: expected a number >= 0, got {value}")
    if settings.margin > 10:
        raise ConfigError(f"{src}: margin: expected 0..10 score points, got {settings.margin}")
    if not 0 <= settings.listen_port <= 65535:
        raise ConfigError(f"{src}: listen_port: expected 0..65535, got {settings.listen_port}")
    validate_leader(settings.leader, src)
