"""One frozen, validated settings tree: the only module that reads YAML files and the environment.

Design decisions:
- Every section is a frozen msgspec Struct with documented defaults; `config/extender.yaml` shows
  the same defaults with comments. Unknown keys are errors (a typo must not silently fall back to a
  default).
- Environment variables override the file: `EXTENDER_<SECTION>__<KEY>=value`, e.g.
  `EXTENDER_PROMETHEUS__URL=http://prometheus:9090`. Values are parsed as YAML scalars.
- Errors name the file, the key path and the reason, e.g.
  `config/extender.yaml: profiles.metrics-aware.weights.cpu_utilisation: Expected `float`, got `str``.

Other parts (partition controller, sidecar) define their own sections with `load_section()`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import yaml

from extender.errors import ConfigError

T = TypeVar("T")

ENV_PREFIX = "EXTENDER_"
DEFAULT_CONFIG = Path("config/extender.yaml")

Direction = Literal["lower_is_better", "higher_is_better", "info"]
MissingData = Literal["neutral", "reject"]
"""What a filter rule does with a node lacking a fresh value: pass it, or fail it."""
TermMissing = Literal["neutral", "worst", "reject"]
"""What a score term does with a node lacking a fresh value (see `CacheSettings.missing_data`)."""
UnknownNodes = Literal["neutral", "reject"]


class Struct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for settings sections: immutable, keyword-only, unknown keys rejected."""


# --- metrics catalog --------------------------------------------------------------------------


class RiskAggregate(Struct, frozen=True):
    """A pessimistic aggregate of an expression over a trailing window, as Trimaran's
    load-variation-risk balancing (mean + k * standard deviation) and Koordinator's p95/p99
    aggregates do: one PromQL subquery `(EXPR)[window:resolution]`, evaluated per refresh."""

    window: str = "10m"
    """How far back (a PromQL duration)."""
    resolution: str = "30s"
    """Step of the subquery: the expression is evaluated every `resolution` within `window`."""
    k: float | None = None
    """mean + k * stddev (population, as PromQL's stddev_over_time). Set `k` or `quantile`."""
    quantile: float | None = None
    """The q-quantile (0..1) of the values in the window instead."""
    of: str | None = None
    """Another catalog entry whose query is the expression (then this entry's `query` stays
    empty); it also tells the simulator which modelled signal the aggregate is over."""

    def promql(self, expr: str) -> str:
        """The one query computing this aggregate of `expr` (an instant vector)."""
        sub = f"({expr})[{self.window}:{self.resolution}]"
        if self.quantile is not None:
            return f"quantile_over_time({self.quantile:g}, {sub})"
        return f"avg_over_time({sub}) + {self.k:g} * stddev_over_time({sub})"

    def describe(self) -> str:
        """`mean + 1·sd over 10m at 30s` or `p95 over 10m at 30s` (explanations, messages)."""
        what = (f"p{self.quantile * 100:g}" if self.quantile is not None
                else f"mean + {self.k:g}·sd")
        of = f" of {self.of}" if self.of else ""
        return f"risk aggregate: {what}{of} over {self.window} at {self.resolution} resolution"


class CatalogEntry(Struct, frozen=True):
    """One per-node signal: a PromQL instant vector with one series per node."""

    name: str
    query: str = ""
    """PromQL returning one series per node (aggregate per node in the query itself). With
    `risk`, the expression aggregated over time (load_settings replaces it by the aggregate)."""
    risk: RiskAggregate | None = None
    """Score and filter on a risk aggregate of the expression over a window (see RiskAggregate)."""
    node_labels: tuple[str, ...] = ("node", "instance")
    """Labels that may carry the node identity, first present wins. A `host:port` value loses its
    port; a value that is no node name is looked up among the node aliases (kube_node_info IPs)."""
    unit: str = "ratio"
    """`ratio` values are 0..1 and shown as percentages in reasons; other units are shown as is."""
    direction: Direction = "lower_is_better"
    """How the value turns into a score term; `info` values are shown but never scored."""
    range: tuple[float, float] = (0.0, 1.0)
    """Values are normalised linearly from this range to 0..1 (clipped) before weighting."""
    scale: float = 1.0
    """Multiplier applied to raw values (e.g. 1e-6 for microwatts -> watts)."""
    gpu_only: bool = False
    """Scored only for pods that request `nvidia.com/gpu`."""
    on_missing: TermMissing | None = None
    """A node lacking a fresh value of this term (absent, stale, exporter down): `neutral` takes
    the median of the nodes that have it, `worst` the least favourable value, `reject` also fails
    the filter. Default: `cache.missing_data`. `neutral` suits signals only some nodes publish
    (deadline sidecars)."""
    description: str = ""


class OwnerEntry(Struct, frozen=True):
    """What a controller's running pods use: a PromQL vector with one series per
    (namespace, owner_kind, owner_name), for the expected load of its new pods."""

    name: str
    query: str
    resource: Literal["cpu", "memory"]
    """`cpu` in cores, `memory` in bytes."""
    description: str = ""


class EstimateSettings(Struct, frozen=True):
    """The expected load of a pod not yet measured (hot-spot compensation, `with_pod` rules):
    per resource the larger of its requests and what its siblings (same controller) use, capped
    by its limits; these defaults for a pod without requests (Koordinator uses the same)."""

    enabled: bool = True
    default_cpu_cores: float = 0.25
    default_memory_bytes: float = 209715200.0
    """200 MiB."""
    window: str = "10m"
    """Substituted for `$estimate_window` in the `owners` queries: how far back siblings' use is
    looked at (their p90 over it)."""


class NodeAliasSettings(Struct, frozen=True):
    """Maps exporter identities (IP addresses) to node names, from kube-state-metrics."""

    query: str = "kube_node_info"
    node_label: str = "node"
    alias_labels: tuple[str, ...] = ("internal_ip",)


# --- sections -----------------------------------------------------------------------------------


class ResourceAttributes(Struct, frozen=True):
    """One resource that every protected request is authorised against, instead of its path
    (kube-rbac-proxy's `--resource-attributes`): e.g. `get` on `extenders/api` (group
    `extract.io`: RBAC rules may name resources no API serves) named `extender` in `extract`.
    One SubjectAccessReview then covers every path of a caller."""

    resource: str
    """Plural, lower case (`extenders`)."""
    namespace: str = ""
    """"" = cluster-scoped (or every namespace)."""
    group: str = ""
    """API group ("" = the core group)."""
    version: str = ""
    subresource: str = ""
    name: str = ""


class AuthSettings(Struct, frozen=True):
    """Bearer tokens on the Monitoring API (/api/v1/...) and /metrics, as kube-rbac-proxy and
    controller-runtime's metrics filter check them: a TokenReview authenticates the token, a
    SubjectAccessReview authorises its user. /healthz and /readyz stay open (probes carry no
    token); the scheduler's verbs are not covered (they are answered before this check)."""

    enabled: bool = False
    """Off by default so that local runs and the demo need no API server; the manifests turn it
    on (and grant the extender `system:auth-delegator`)."""
    protect_metrics: bool = True
    """Also require a token for /metrics (Prometheus then scrapes with its ServiceAccount token)."""
    kubeconfig: str | None = None
    """The API server that reviews tokens: None = the in-cluster service account, else this
    kubeconfig file (its user needs `create` on tokenreviews and subjectaccessreviews)."""
    audiences: tuple[str, ...] = ()
    """TokenReview audiences: a token must be meant for one of them. Empty = the API server's
    own audiences (a plain ServiceAccount token)."""
    path_prefix: str = "/extract-extender"
    """Without `resource`, a request is authorised as the non-resource URL `path_prefix` + its
    path (verb from the HTTP method, `get` for GET), as kube-rbac-proxy does with the bare path.
    The prefix is what keeps that safe: every authenticated user may `get` the non-resource
    URLs /api/* (the API server's system:discovery role), which would open /api/v1/... to all."""
    resource: ResourceAttributes | None = None
    """None: authorise the (prefixed) request path. Set: authorise this resource instead, the
    same for every path."""
    token_ttl_s: float = 120.0
    """How long an authenticated token's user is reused without a new TokenReview (a revoked
    token keeps working this long, as behind kube-rbac-proxy's 2 minutes)."""
    allowed_ttl_s: float = 300.0
    """How long an allowed SubjectAccessReview is reused (RBAC revocation takes this long)."""
    denied_ttl_s: float = 30.0
    """How long a refusal (a token not authenticated, or a user not allowed) is reused: short, so
    a new RoleBinding takes effect soon; non-zero, so a caller retrying a bad token costs the API
    server one review per interval."""
    cache_size: int = 1024
    """Entries per cache (tokens; users x paths), least recently used evicted first. Keys are
    SHA-256 digests of the tokens, never the tokens."""
    request_timeout_s: float = 3.0
    """Per TokenReview or SubjectAccessReview (connect and read). A caller waits at most two."""


class ServerSettings(Struct, frozen=True):
    url_prefix: str = ""
    """Path prefix of the verbs, the path part of kube-scheduler's `urlPrefix` (e.g. `/scheduler`)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Larger bodies get 413. A full-Nodes (nodeCacheCapable: false) body is ~4 kB per node."""
    unknown_nodes: UnknownNodes = "neutral"
    """A node missing from the cache: `neutral` passes filter and gets the missing-data score,
    `reject` fails it with a reason. It is never dropped silently."""
    shadow: bool = False
    """Compute and record decisions, but answer neutrally (all nodes pass, equal scores)."""
    bind_enabled: bool = False
    """Serve the bind verb (creates the Binding through the API). `ignorable` does not cover bind."""
    decision_log_size: int = 1000
    """Decisions kept, with their per-node explanation, for /api/v1/decisions."""
    pod_events: bool = False
    """Also write each decision's summary as a Kubernetes Event on the pod (needs RBAC)."""
    tls_cert_file: str | None = None
    """Serve HTTPS with this certificate (kube-scheduler `enableHTTPS: true`)."""
    tls_key_file: str | None = None
    auth: AuthSettings = AuthSettings()
    """Who may call the Monitoring API and /metrics (bearer tokens; the verbs are not covered)."""


class PrometheusSettings(Struct, frozen=True):
    url: str = "http://prometheus-operated.monitoring:9090"
    query_timeout_s: float = 2.0
    """Per query. Refreshes run off the request path, so this may exceed the scheduler's
    httpTimeout, but it never waits forever (the client library's default)."""
    retries: int = 1
    """Extra attempts per query on connection errors (the library's default is 3 with backoff)."""
    bearer_token_file: str | None = None
    """Sent as `Authorization: Bearer`, read again on every query (projected tokens rotate)."""
    ca_file: str | None = None
    """CA bundle that signed an https Prometheus' certificate (default: the system's)."""
    insecure_skip_verify: bool = False
    client_cert_file: str | None = None
    """Client certificate (PEM) for a Prometheus that requires one (mTLS); with client_key_file."""
    client_key_file: str | None = None
    basic_auth_username: str | None = None
    """HTTP basic auth (Prometheus' `basic_auth_users`); the password comes from a file."""
    basic_auth_password_file: str | None = None
    """Read again on every query, so a rotated Secret needs no restart."""
    headers: dict[str, str] = {}


class CacheSettings(Struct, frozen=True):
    refresh_interval_s: float = 15.0
    """One query per catalog entry per interval, for all nodes at once."""
    max_staleness_s: float = 90.0
    """Older values count as missing: scrape (30 s for dcgm) + refresh + two misses of margin."""
    missing_data: TermMissing = "worst"
    """Default for a weighted term a node lacks (absent, stale, its exporter down), per catalog
    entry `on_missing`: `worst` counts the least favourable value, `neutral` the median of the
    nodes that have a fresh value (all nodes of the table, so a node's score does not depend on
    which other candidates kube-scheduler sampled), `reject` also fails the filter. The weights
    are never renormalised over the terms a node happens to have: missing data never wins. Filter
    rules on a missing value pass unless their `on_missing` (or this) is `reject`."""
    missing_score: int = 0
    """Score of a node with no fresh weighted term at all: never preferred over a known node."""
    rate_window: str = "1m"
    """Substituted for `$rate_window` in catalog queries; at least 4 scrape intervals."""
    push_max_age_s: float = 120.0
    """Substituted for `$push_max_age` in catalog queries: Pushgateway groups whose last push
    (`push_time_seconds`) is older count as absent, so the value of a sidecar killed without
    deleting its group ages out. Several push intervals (sidecar default 10 s) plus a scrape."""
    refresh_in_child: bool = True
    """Run refreshes (HTTP, JSON, table building) in a child process per worker, so they never
    hold the GIL the request threads need (~80 MB more per worker; false: a thread)."""


class FilterRule(Struct, frozen=True):
    """Reject a node when `metric` is above `above` or below `below`.

    `metric` may be a derived term (`gpu_fragmentation`, `gpu_packing`): its goodness (0..1) is
    taken relative to the best candidate that passed the metric rules, so `below: 0.999` on
    `gpu_fragmentation` keeps the nodes at FGD's best score and `below: 0.01` those of its two
    best levels (each level divides the goodness by e^4). Rules on derived terms are checked
    after the metric rules and pass every node when the term does not apply (no allocation
    state)."""

    metric: str
    above: float | None = None
    below: float | None = None
    label: str | None = None
    """Short name used in the reason and the rejection counter (default: the metric name)."""
    reason: str | None = None
    """Fixed sentence instead of `<label> <value> > <limit>` (e.g. for yes/no conditions)."""
    on_missing: MissingData | None = None
    """Missing or stale value: `neutral` passes, `reject` fails (default: `reject` when
    cache.missing_data is `reject`, else `neutral`). Set `neutral` for signals that only some
    nodes publish (e.g. deadline sidecars)."""
    with_pod: bool = False
    """Check the value the node would show with this pod's requests added (its CPU cores over the
    node's cores, its memory over the node's total): "would this pod make the node hot", not
    "is it hot already". Only for the profile's hot-spot CPU and memory metrics."""


class HotspotSettings(Struct, frozen=True):
    """Counts recent placements as load until the node's metrics can show them."""

    enabled: bool = True
    window_s: float = 60.0
    """A placement is forgotten after this long, whatever the metrics say."""
    settle_s: float = 30.0
    """A sample taken this long after a placement is assumed to include it (scrape + rate window)."""
    cpu_metric: str = "cpu_utilisation"
    memory_metric: str = "memory_available_ratio"
    cores_metric: str = "cpu_cores"
    memory_total_metric: str = "memory_total_bytes"
    score_with_pod: bool = False
    """Score the CPU and memory terms on the node's usage plus this pod's requests (what the
    node will look like with it, as Trimaran's TargetLoadPacking predicts), not on its usage
    alone. Filter rules keep their own `with_pod` choice."""


class Profile(Struct, frozen=True):
    """A named policy: filter thresholds and score weights."""

    description: str = ""
    filters: tuple[FilterRule, ...] = ()
    weights: dict[str, float] = {}
    """Catalog metric (or derived term) -> weight >= 0. GPU-only metrics count for GPU pods only."""
    hotspot: HotspotSettings = HotspotSettings()


class PolicySettings(Struct, frozen=True):
    default: str = "metrics-aware"
    learned_model: str | None = None
    """Model file of the `learned` score term (written by `extender learn`), relative to the
    settings file; loaded at start-up, required when a profile weights or filters on `learned`."""
    policy_annotation: str = "extract.io/policy"
    """Pod annotation naming a profile for that pod."""
    weights_annotation: str = "extract.io/weights"
    """Pod annotation overriding weights, e.g. `cpu_utilisation=3,gpu_utilisation=0`."""
    profiles: dict[str, Profile] = {}


class ReferencePod(Struct, frozen=True):
    """The pod whose score /api/v1/nodes shows for every node."""

    cpu_cores: float = 1.0
    memory_bytes: float = 2.0**30
    gpus: int = 0


class MonitoringSettings(Struct, frozen=True):
    """The Monitoring API (/api/v1)."""

    reference_pod: ReferencePod = ReferencePod()
    catalog_file: str = "monitoring.yaml"
    """Named metrics by level (cluster, node, namespace, pod, container, process), relative to
    the settings file."""
    query_timeout_s: float = 5.0
    """Per Prometheus query of the Monitoring API (history, pod-level); never on the scheduling path."""
    max_points_per_series: int = 11000
    """Range queries asking for more points per series get 400 (Prometheus' own limit is 11000)."""
    max_series: int = 1000
    """Answers with more series get 422: narrow the selector."""
    result_cache_ttl_s: float = 10.0
    result_cache_size: int = 256
    term_telemetry: bool = True
    """Serve `extender_node_score_term{node,term}` on /metrics: the points each score term gave
    the reference pod on each node, from the same evaluation as `extender_node_score`."""
    term_telemetry_max_nodes: int = 200
    """Above this many nodes the per-term series are not served (nodes x terms series: 200 nodes
    of the default profile are ~1800); `extender_node_score` stays."""


class InformerSettings(Struct, frozen=True):
    """The pod informer: every pod bound to a node, from the API server (list + watch)."""

    enabled: bool = False
    """Off by default so that local runs need no cluster; the manifests turn it on."""
    kubeconfig: str | None = None
    """None: the in-cluster service account, else $KUBECONFIG or ~/.kube/config. A path: that file."""
    namespace: str = ""
    """Watch one namespace only ("" = all namespaces, which needs a ClusterRole)."""
    label_selector: str = ""
    """Only pods matching this label selector (e.g. `team=ml,tier!=batch`); "" = all."""
    field_selector: str = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
    """Server-side filter. The default sends only bound, unfinished pods: pods that finish or
    are deleted arrive as DELETED events, and pending pods cost nothing."""
    page_size: int = 500
    """Pods per list page: a relist of 50 000 pods is 100 requests of bounded size."""
    watch_timeout_s: float = 300.0
    """The API server ends each watch after this long; the informer resumes from the last
    resourceVersion (no relist)."""
    resync_interval_s: float = 0.0
    """Relist everything this often to repair any drift (0 = only after 410 Gone)."""
    request_timeout_s: float = 10.0
    """Connect timeout, and read timeout of one list page."""
    backoff_min_s: float = 0.5
    """First wait after a failed list or watch; doubled per consecutive failure (with jitter)."""
    backoff_max_s: float = 30.0
    """Longest wait between attempts while the API server is unreachable."""


class Settings(Struct, frozen=True):
    """The extender's whole configuration."""

    server: ServerSettings = ServerSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    cache: CacheSettings = CacheSettings()
    node_aliases: NodeAliasSettings = NodeAliasSettings()
    catalog_file: str = "catalog.yaml"
    """Relative to the settings file."""
    catalog: tuple[CatalogEntry, ...] = ()
    """Filled from `catalog_file` by load_settings()."""
    owner_catalog: tuple[OwnerEntry, ...] = ()
    """The catalog file's `owners` entries, filled by load_settings()."""
    estimate: EstimateSettings = EstimateSettings()
    policy: PolicySettings = PolicySettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    informer: InformerSettings = InformerSettings()
    source: str = "<defaults>"
    """The file these settings came from (for messages)."""

    def metric(self, name: str) -> CatalogEntry:
        """The catalog entry called `name` (KeyError if absent)."""
        for entry in self.catalog:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def profile(self, name: str | None = None) -> Profile:
        """The profile called `name`, or the default one."""
        return self.policy.profiles[name or self.policy.default]


# --- shared by the controllers ------------------------------------------------------------------


class LeaderSettings(Struct, frozen=True):
    """Leader election on a coordination.k8s.io/v1 Lease in the controller's namespace (the
    partition controller and the rebalancer each name their own Lease)."""

    enabled: bool = True
    lease_name: str = ""
    lease_duration_s: int = 15
    """A follower takes over this long after the leader's last renewal."""
    renew_deadline_s: int = 10
    retry_period_s: int = 2
    identity: str | None = None
    """Default: $POD_NAME, then the host name."""


def validate_leader(leader: LeaderSettings, src: str) -> None:
    """ConfigError unless the Lease is named and the election timings are valid."""
    # The same rules as kubernetes.leaderelection.electionconfig.Config, which exits the process.
    if not leader.lease_name:
        raise ConfigError(f"{src}: leader.lease_name: must name the Lease")
    if leader.retry_period_s < 1:
        raise ConfigError(f"{src}: leader.retry_period_s: expected >= 1")
    if leader.renew_deadline_s <= 1.2 * leader.retry_period_s:
        raise ConfigError(f"{src}: leader.renew_deadline_s: must exceed 1.2 x retry_period_s")
    if leader.lease_duration_s <= leader.renew_deadline_s:
        raise ConfigError(f"{src}: leader.lease_duration_s: must exceed renew_deadline_s")


# --- loading ------------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping from `path`; ConfigError on I/O or syntax errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str], prefix: str = ENV_PREFIX,
                  sections: Collection[str] | None = None) -> dict[str, Any]:
    """Nested overrides from `PREFIX<SECTION>__<KEY>=value` variables (keys lower-cased).

    Only variables whose first part names a field of `sections` (when given; else a section
    and a key) are read: Kubernetes' service links inject `EXTENDER_SERVICE_HOST`,
    `EXTENDER_PORT_8888_TCP`, ... for a Service called `extender`, and those are no settings.
    """
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix):
            continue
        path = [part.lower() for part in key[len(prefix) :].split("__") if part]
        if not path or (sections is not None and path[0] not in sections) or (
                sections is None and len(path) < 2):
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            node[path[-1]] = raw
    return tree


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def convert(data: Any, type_: type[T], source: str) -> T:
    """Validate plain data into `type_`; ConfigError naming `source` and the key path."""
    try:
        return msgspec.convert(data, type=type_, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_readable(str(exc))}") from exc


def _readable(message: str) -> str:
    # msgspec says "Expected `float`, got `str` - at `$.cache.max_staleness_s`"; put the key first.
    if " - at `$" in message:
        reason, _, where = message.partition(" - at `$")
        key = where.rstrip("`").lstrip(".")
        key = key.replace("[", ".").replace("]", "")
        return f"{key}: {reason}"
    return message


def load_section(path: Path | str, type_: type[T], *, environ: Mapping[str, str] | None = None,
                 env_prefix: str | None = None) -> T:
    """Load one YAML file into a settings Struct, with optional env overrides under `env_prefix`.
    A `source` field of the Struct records the file, for error messages of later checks."""
    path = Path(path)
    data = read_yaml(path)
    if env_prefix:
        data = merge(data, env_overrides(os.environ if environ is None else environ, env_prefix,
                                         getattr(type_, "__struct_fields__", None)))
    loaded = convert(data, type_, str(path))
    if "source" in getattr(type_, "__struct_fields__", ()):
        loaded = msgspec.structs.replace(loaded, source=str(path))  # type: ignore[type-var]
    return loaded


def load_settings(path: Path | str | None = None, *, environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Load and validate the extender settings.

    `path` defaults to `$EXTENDER_CONFIG`, then `config/extender.yaml`. The catalog is read from
    `catalog_file` next to it. `overrides` (e.g. from CLI flags) win over the environment, which
    wins over the file. Raises ConfigError with file, key and reason.
    """
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG)
    data = merge(read_yaml(path), env_overrides(environ, ENV_PREFIX, Settings.__struct_fields__))
    if overrides:
        data = merge(data, overrides)
    if "catalog" in data or "owner_catalog" in data or "source" in data:
        raise ConfigError(f"{path}: catalog: set `catalog_file` to a catalog YAML, not `catalog`")
    settings = convert(data, Settings, str(path))
    catalog_path = (path.parent / settings.catalog_file).resolve()
    if not _DURATION.match(settings.cache.rate_window):
        raise ConfigError(f"{path}: cache.rate_window: expected a PromQL duration such as 1m or "
                          f"30s, got {settings.cache.rate_window!r}")
    if not _DURATION.match(settings.estimate.window):
        raise ConfigError(f"{path}: estimate.window: expected a PromQL duration such as 10m, got "
                          f"{settings.estimate.window!r}")
    params = {"$rate_window": settings.cache.rate_window,
              "$push_max_age": f"{settings.cache.push_max_age_s:g}",
              "$estimate_window": settings.estimate.window}
    metrics, owners = _load_catalog(catalog_path)
    catalog = tuple(msgspec.structs.replace(e, query=_substitute(e.query, params))
                    for e in metrics)
    owner_catalog = tuple(msgspec.structs.replace(e, query=_substitute(e.query, params))
                          for e in owners)
    catalog = _with_risk_queries(catalog, catalog_path)
    settings = msgspec.structs.replace(settings, catalog=catalog, owner_catalog=owner_catalog,
                                       source=str(path))
    if settings.policy.learned_model is not None:
        model = (path.parent / settings.policy.learned_model).resolve()
        settings = msgspec.structs.replace(settings, policy=msgspec.structs.replace(
            settings.policy, learned_model=str(model)))
    validate(settings)
    return settings


def _substitute(query: str, params: Mapping[str, str]) -> str:
    for name, value in params.items():
        query = query.replace(name, value)
    return query


class _CatalogFile(Struct, frozen=True):
    metrics: tuple[CatalogEntry, ...]
    owners: tuple[OwnerEntry, ...] = ()


def _load_catalog(path: Path) -> tuple[tuple[CatalogEntry, ...], tuple[OwnerEntry, ...]]:
    data = read_yaml(path)
    # The monitoring API reads its own sections of the same file.
    data = {"metrics": data.get("metrics", []), "owners": data.get("owners", [])}
    parsed = convert(data, _CatalogFile, str(path))
    catalog, owners = parsed.metrics, parsed.owners
    names = [entry.name for entry in catalog] + [entry.name for entry in owners]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{path}: metrics: duplicate names {', '.join(duplicates)}")
    for i, entry in enumerate(catalog):
        low, high = entry.range
        if not high > low:
            raise ConfigError(f"{path}: metrics.{i}.range: expected min < max, got {entry.range}")
        if not entry.node_labels:
            raise ConfigError(f"{path}: metrics.{i}.node_labels: must name at least one label")
    return catalog, owners


_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
           "y": 31536000.0}


def duration_s(text: str) -> float:
    """Seconds of a PromQL duration (`1m30s` -> 90.0); ValueError when it is none."""
    if not _DURATION.match(text):
        raise ValueError(f"expected a PromQL duration such as 10m or 30s, got {text!r}")
    return sum(float(n) * _UNIT_S[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text))


def _with_risk_queries(catalog: tuple[CatalogEntry, ...], path: Path) -> tuple[CatalogEntry, ...]:
    """Validate each entry's `risk` and replace its query by the aggregate's PromQL."""
    by_name = {entry.name: entry for entry in catalog}
    out = []
    for i, entry in enumerate(catalog):
        risk = entry.risk
        where = f"{path}: metrics.{i}"
        if risk is None:
            if not entry.query:
                raise ConfigError(f"{where}.query: required (or set risk.of)")
            out.append(entry)
            continue
        if (risk.k is None) == (risk.quantile is None):
            raise ConfigError(f"{where}.risk: set exactly one of `k` (mean + k·sd) or `quantile`")
        if risk.k is not None and not (risk.k >= 0 and risk.k < float("inf")):
            raise ConfigError(f"{where}.risk.k: expected a number >= 0, got {risk.k}")
        if risk.quantile is not None and not 0 <= risk.quantile <= 1:
            raise ConfigError(f"{where}.risk.quantile: expected 0..1, got {risk.quantile}")
        try:
            window, step = duration_s(risk.window), duration_s(risk.resolution)
        except ValueError as exc:
            raise ConfigError(f"{where}.risk: {exc}") from exc
        if not 0 < step < window:
            raise ConfigError(f"{where}.risk: resolution ({risk.resolution}) must be shorter "
                              f"than window ({risk.window})")
        expr = entry.query
        if risk.of is not None:
            base = by_name.get(risk.of)
            if base is None or base.risk is not None or base is entry:
                raise ConfigError(f"{where}.risk.of: {risk.of!r} is not a catalog entry "
                                  "without risk")
            if expr:
                raise ConfigError(f"{where}: set `query` or `risk.of`, not both")
            expr = base.query
        elif not expr:
            raise ConfigError(f"{where}.query: required (or set risk.of)")
        out.append(msgspec.structs.replace(entry, query=risk.promql(expr)))
    return tuple(out)


ALLOCATION_TERMS = frozenset({"gpu_fragmentation", "gpu_packing"})
"""Score terms computed from allocation state rather than read from the catalog."""
LEARNED_TERM = "learned"
"""The score term of a trained model (`policy.learned_model`)."""
DERIVED_TERMS = ALLOCATION_TERMS | {LEARNED_TERM}
"""Every score term that is computed rather than read from the catalog."""


def require_positive(source: str, values: Mapping[str, float]) -> None:
    """ConfigError `source: key: expected a number > 0` for the first value that is not."""
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"{source}: {key}: expected a number > 0, got {value}")


def validate(settings: Settings) -> None:
    """Cross-field checks that types alone cannot express; ConfigError on the first problem."""
    src = settings.source
    known = {entry.name for entry in settings.catalog}
    require_positive(src, {"estimate.default_cpu_cores": settings.estimate.default_cpu_cores,
                           "estimate.default_memory_bytes": settings.estimate.default_memory_bytes,
                           "cache.push_max_age_s": settings.cache.push_max_age_s})
    profiles = settings.policy.profiles
    if settings.policy.default not in profiles:
        raise ConfigError(
            f"{src}: policy.default: no profile named {settings.policy.default!r} "
            f"(profiles: {', '.join(sorted(profiles)) or 'none'})"
        )
    for pname, profile in profiles.items():
        where = f"{src}: policy.profiles.{pname}"
        for metric, weight in profile.weights.items():
            if metric not in known and metric not in DERIVED_TERMS:
                raise ConfigError(f"{where}.weights.{metric}: not in the catalog")
            if not weight >= 0:
                raise ConfigError(f"{where}.weights.{metric}: expected a number >= 0, got {weight}")
        for i, rule in enumerate(profile.filters):
            if rule.metric not in known and rule.metric not in DERIVED_TERMS:
                raise ConfigError(f"{where}.filters.{i}.metric: {rule.metric!r} is not in the catalog")
            if rule.above is None and rule.below is None:
                raise ConfigError(f"{where}.filters.{i}: set `above` or `below`")
            if rule.with_pod and not (profile.hotspot.enabled and rule.metric in (
                    profile.hotspot.cpu_metric, profile.hotspot.memory_metric)):
                raise ConfigError(f"{where}.filters.{i}.with_pod: only for the hot-spot CPU and "
                                  "memory metrics, with hotspot.enabled")
        hot = profile.hotspot
        if hot.enabled:
            for field in ("cpu_metric", "memory_metric", "cores_metric", "memory_total_metric"):
                if getattr(hot, field) not in known:
                    raise ConfigError(
                        f"{where}.hotspot.{field}: {getattr(hot, field)!r} is not in the catalog"
                    )
    uses_learned = [name for name, profile in profiles.items()
                    if LEARNED_TERM in profile.weights
                    or any(rule.metric == LEARNED_TERM for rule in profile.filters)]
    if uses_learned and settings.policy.learned_model is None:
        raise ConfigError(f"{src}: policy.learned_model: required by profile(s) "
                          f"{', '.join(uses_learned)} (they use the `learned` term)")
    positive = {
        "cache.refresh_interval_s": settings.cache.refresh_interval_s,
        "cache.max_staleness_s": settings.cache.max_staleness_s,
        "prometheus.query_timeout_s": settings.prometheus.query_timeout_s,
        "server.max_body_bytes": settings.server.max_body_bytes,
        "server.decision_log_size": settings.server.decision_log_size,
        "monitoring.term_telemetry_max_nodes": settings.monitoring.term_telemetry_max_nodes,
    }
    require_positive(src, positive)
    if not 0 <= settings.cache.missing_score <= 10:
        raise ConfigError(f"{src}: cache.missing_score: expected 0..10, got {settings.cache.missing_score}")
    if settings.prometheus.retries < 0:
        raise ConfigError(f"{src}: prometheus.retries: expected >= 0")
    prom = settings.prometheus
    for first, second in (("client_cert_file", "client_key_file"),
                          ("basic_auth_username", "basic_auth_password_file")):
        if (getattr(prom, first) is None) != (getattr(prom, second) is None):
            raise ConfigError(f"{src}: prometheus.{first}, {second}: set both or neither")
    if prom.bearer_token_file and prom.basic_auth_username:
        raise ConfigError(f"{src}: prometheus.bearer_token_file, basic_auth_username: both set "
                          "the Authorization header; choose one")
    tls = (settings.server.tls_cert_file, settings.server.tls_key_file)
    if (tls[0] is None) != (tls[1] is None):
        raise ConfigError(f"{src}: server.tls_cert_file, tls_key_file: set both or neither")
    prefix = settings.server.url_prefix
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigError(f"{src}: server.url_prefix: expected '' or '/path' without a trailing '/'")
    validate_informer(src, settings.informer)
    validate_auth(src, settings.server.auth)


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_FIELD_TERM = re.compile(r"^[A-Za-z0-9.]+(=|==|!=)[^,=!]*$")
_LABEL_KEY = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_LABEL_TERM = re.compile(
    rf"^\s*(!?{_LABEL_KEY}|{_LABEL_KEY}\s*(=|==|!=)\s*{_LABEL_VALUE}"
    rf"|{_LABEL_KEY}\s+(in|notin)\s+\(\s*{_LABEL_VALUE}(\s*,\s*{_LABEL_VALUE})*\s*\))\s*$")


def _selector_terms(selector: str) -> list[str]:
    """Split a selector at the commas outside `in (...)` sets."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(selector):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return terms


def validate_informer(src: str, informer: InformerSettings) -> None:
    """The informer's keys: positive durations, ordered backoff, selectors the API server accepts.

    Selectors are checked here so that a typo fails at startup, not as a 400 on every relist."""
    where = f"{src}: informer"
    require_positive(src, {
        "informer.watch_timeout_s": informer.watch_timeout_s,
        "informer.request_timeout_s": informer.request_timeout_s,
        "informer.backoff_min_s": informer.backoff_min_s,
        "informer.page_size": informer.page_size,
    })
    if informer.backoff_max_s < informer.backoff_min_s:
        raise ConfigError(f"{where}.backoff_max_s: expected >= backoff_min_s ({informer.backoff_min_s}), "
                          f"got {informer.backoff_max_s}")
    if informer.resync_interval_s < 0:
        raise ConfigError(f"{where}.resync_interval_s: expected >= 0 (0 = never), got "
                          f"{informer.resync_interval_s}")
    if informer.namespace and not _DNS_LABEL.match(informer.namespace):
        raise ConfigError(f"{where}.namespace: {informer.namespace!r} is not a namespace name")
    if informer.field_selector:
        for term in _selector_terms(informer.field_selector):
            if not _FIELD_TERM.match(term.strip()):
                raise ConfigError(f"{where}.field_selector: {term!r} is not `field=value`, "
                                  f"`field==value` or `field!=value`")
    if informer.label_selector:
        for term in _selector_terms(informer.label_selector):
            if not _LABEL_TERM.match(term):
                raise ConfigError(f"{where}.label_selector: {term!r} is not a label selector term "
                                  f"(key, !key, key=value, key!=value, key in (a,b), key notin (a,b))")


_GRANTED_URLS = frozenset({"api", "apis", "openapi", "version", "healthz", "livez", "readyz",
                           ".well-known", "openid"})
"""First segments of the non-resource URLs that the bootstrap ClusterRoles system:discovery and
system:public-info-viewer (and system:service-account-issuer-discovery) grant to everyone."""
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def validate_auth(src: str, auth: AuthSettings) -> None:
    """`server.auth`: positive timeout and cache size, TTLs >= 0, named audiences, a resource
    attribute the API server can evaluate."""
    where = f"{src}: server.auth"
    require_positive(src, {"server.auth.request_timeout_s": auth.request_timeout_s,
                           "server.auth.cache_size": auth.cache_size})
    for key in ("token_ttl_s", "allowed_ttl_s", "denied_ttl_s"):
        value = getattr(auth, key)
        if not 0 <= value < float("inf"):
            raise ConfigError(f"{where}.{key}: expected seconds >= 0 (0 = not cached), got {value}")
    for i, audience in enumerate(auth.audiences):
        if not audience.strip():
            raise ConfigError(f"{where}.audiences.{i}: expected an audience, got {audience!r}")
    prefix = auth.path_prefix
    if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise ConfigError(f"{where}.path_prefix: expected '/name' without a trailing '/', got "
                          f"{prefix!r}")
    if prefix.split("/")[1] in _GRANTED_URLS:
        raise ConfigError(
            f"{where}.path_prefix: {prefix!r}: the API server's default roles let every "
            f"(authenticated) user get the non-resource URLs under /{prefix.split('/')[1]}; "
            f"choose another prefix (default /extract-extender)")
    if auth.kubeconfig is not None and not auth.kubeconfig.strip():
        raise ConfigError(f"{where}.kubeconfig: expected a file path or null (in-cluster)")
    resource = auth.resource
    if resource is None:
        return
    for key in ("resource", "subresource", "group"):
        value = getattr(resource, key)
        if (value or key == "resource") and not _RESOURCE.match(value):
            raise ConfigError(f"{where}.resource.{key}: {value!r} is not a lower-case API name")
    if resource.namespace and not _DNS_LABEL.match(resource.namespace):
        raise ConfigError(f"{where}.resource.namespace: {resource.namespace!r} is not a "
                          f"namespace name")


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with secrets replaced (for /api/v1/config)."""
    data: dict[str, Any] = msgspec.to_builtins(settings)
    prom = data["prometheus"]
    prom["headers"] = {key: "<redacted>" for key in prom.get("headers", {})}
    # Credentials may sit in the URL (`https://user:pass@host`); the token file is only a path.
    scheme, sep, rest = prom["url"].partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        prom["url"] = f"{scheme}://<redacted>@{rest.split('@', 1)[1]}"
    return data
