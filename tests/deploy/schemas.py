"""Typed schemas for the objects that the Kubernetes OpenAPI documents do not cover.

- `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1), field for field from
  k8s.io/kube-scheduler/config/v1/types.go and the component-base v1alpha1 types it embeds, plus
  the rules kube-scheduler's own validation applies to the fields we use.
- The Prometheus Operator CRDs we ship (ServiceMonitor, PodMonitor, PrometheusRule), reduced to
  the monitoring.coreos.com/v1 fields we use: an unknown or misspelt field is an error, as it
  would be for a server-side apply with field validation.

msgspec Structs with `forbid_unknown_fields`: a typo fails with the key path, like the project's
own settings.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class SchemaError(ValueError):
    """An object does not match its schema; the message names the object and the key path."""


def camel(**exceptions: str) -> Any:
    """A msgspec rename policy: camelCase, except the given Go JSON names (`enableHTTPS`)."""

    def rename(name: str) -> str:
        head, *rest = name.split("_")
        return exceptions.get(name) or head + "".join(part.title() for part in rest)

    return rename


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, rename=camel()):
    """Base: camelCase JSON names, unknown fields rejected."""


def go_duration_s(value: str) -> float:
    """A Go `time.Duration` string ("500ms", "1m30s") in seconds; ValueError when malformed."""
    if not _DURATION.match(value):
        raise ValueError(f"not a Go duration: {value!r}")
    return sum(float(n) * _UNIT_S[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)",
                                                               value))


# --- kubescheduler.config.k8s.io/v1 -------------------------------------------------------------

class LeaderElectionConfiguration(Strict):
    leader_elect: bool | None = None
    lease_duration: str | None = None
    renew_deadline: str | None = None
    retry_period: str | None = None
    resource_lock: str | None = None
    resource_name: str | None = None
    resource_namespace: str | None = None


class ClientConnectionConfiguration(Strict):
    kubeconfig: str | None = None
    accept_content_types: str | None = None
    content_type: str | None = None
    qps: float | None = None
    burst: int | None = None


class Plugin(Strict):
    name: str
    weight: int | None = None


class PluginSet(Strict):
    enabled: list[Plugin] = []
    disabled: list[Plugin] = []


class Plugins(Strict):
    pre_enqueue: PluginSet | None = None
    queue_sort: PluginSet | None = None
    pre_filter: PluginSet | None = None
    filter: PluginSet | None = None
    post_filter: PluginSet | None = None
    pre_score: PluginSet | None = None
    score: PluginSet | None = None
    reserve: PluginSet | None = None
    permit: PluginSet | None = None
    pre_bind: PluginSet | None = None
    bind: PluginSet | None = None
    post_bind: PluginSet | None = None
    multi_point: PluginSet | None = None


class PluginConfig(Strict):
    name: str
    args: dict[str, Any] | None = None


class KubeSchedulerProfile(Strict):
    scheduler_name: str | None = None
    percentage_of_nodes_to_score: int | None = None
    plugins: Plugins | None = None
    plugin_config: list[PluginConfig] = []


class ExtenderTLSConfig(Strict):
    insecure: bool = False
    server_name: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    cert_data: str | None = None
    key_data: str | None = None
    ca_data: str | None = None


class ExtenderManagedResource(Strict):
    name: str
    ignored_by_scheduler: bool = False


class Extender(Strict, rename=camel(enable_https="enableHTTPS")):
    url_prefix: str
    filter_verb: str | None = None
    preempt_verb: str | None = None
    prioritize_verb: str | None = None
    weight: int | None = None
    bind_verb: str | None = None
    enable_https: bool = False
    tls_config: ExtenderTLSConfig | None = None
    http_timeout: str | None = None
    node_cache_capable: bool = False
    managed_resources: list[ExtenderManagedResource] = []
    ignorable: bool = False


class KubeSchedulerConfiguration(Strict):
    api_version: Literal["kubescheduler.config.k8s.io/v1"]
    kind: Literal["KubeSchedulerConfiguration"]
    parallelism: int | None = None
    leader_election: LeaderElectionConfiguration | None = None
    client_connection: ClientConnectionConfiguration | None = None
    enable_profiling: bool | None = None
    enable_contention_profiling: bool | None = None
    percentage_of_nodes_to_score: int | None = None
    pod_initial_backoff_seconds: int | None = None
    pod_max_backoff_seconds: int | None = None
    profiles: list[KubeSchedulerProfile] = []
    extenders: list[Extender] = []
    delay_cache_until_active: bool = False


def load_scheduler_config(data: Any, source: str) -> KubeSchedulerConfiguration:
    """Type-check `data` and apply kube-scheduler's validation rules; SchemaError on a problem."""
    try:
        config = msgspec.convert(data, KubeSchedulerConfiguration)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{source}: {exc}") from exc
    problems = list(_scheduler_problems(config))
    if problems:
        raise SchemaError(f"{source}: " + "; ".join(problems))
    return config


def _scheduler_problems(config: KubeSchedulerConfiguration) -> Any:
    # The subset of pkg/scheduler/apis/config/validation that concerns the fields we set.
    names = [p.scheduler_name or "default-scheduler" for p in config.profiles]
    if len(set(names)) != len(names):
        yield f"profiles: duplicate schedulerName in {names}"
    le = config.leader_election
    if le is not None and le.leader_elect:
        if le.resource_lock != "leases":
            yield f"leaderElection.resourceLock: must be leases, got {le.resource_lock!r}"
        durations = {}
        for key in ("lease_duration", "renew_deadline", "retry_period"):
            raw = getattr(le, key)
            if raw is None:
                continue
            try:
                durations[key] = go_duration_s(raw)
            except ValueError as exc:
                yield f"leaderElection.{key}: {exc}"
        if {"lease_duration", "renew_deadline"} <= durations.keys() and not (
                durations["lease_duration"] > durations["renew_deadline"] > 0):
            yield "leaderElection: leaseDuration must exceed renewDeadline"
    if sum(1 for e in config.extenders if e.bind_verb) > 1:
        yield "extenders: only one extender may implement bind"
    for i, ext in enumerate(config.extenders):
        where = f"extenders[{i}]"
        if ext.prioritize_verb and not (ext.weight and ext.weight > 0):
            yield f"{where}.weight: must be positive when prioritizeVerb is set"
        if ext.http_timeout is not None:
            try:
                if go_duration_s(ext.http_timeout) <= 0:
                    yield f"{where}.httpTimeout: must be positive"
            except ValueError as exc:
                yield f"{where}.httpTimeout: {exc}"
        scheme = ext.url_prefix.partition("://")[0]
        if scheme not in ("http", "https"):
            yield f"{where}.urlPrefix: expected http:// or https://, got {ext.url_prefix!r}"
        elif (scheme == "https") != ext.enable_https:
            yield f"{where}: enableHTTPS={ext.enable_https} but urlPrefix is {scheme}://"


# --- monitoring.coreos.com/v1 (the fields we use) -----------------------------------------------

class ObjectMeta(Strict):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class LabelSelector(Strict):
    match_labels: dict[str, str] = {}


class NamespaceSelector(Strict):
    match_names: list[str] = []
    any: bool = False


class SecretKeySelector(Strict):
    name: str
    key: str


class SecretOrConfigMap(Strict):
    secret: SecretKeySelector | None = None
    config_map: SecretKeySelector | None = None


class SafeTLSConfig(Strict):
    ca: SecretOrConfigMap | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False


class RelabelConfig(Strict):
    source_labels: list[str] = []
    separator: str | None = None
    target_label: str | None = None
    regex: str | None = None
    replacement: str | None = None
    action: Literal["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep",
                    "hashmod", "lowercase", "uppercase", "keepequal", "dropequal"] | None = None


class Endpoint(Strict):
    port: str
    path: str = "/metrics"
    scheme: Literal["http", "https"] | None = None
    interval: str | None = None
    honor_labels: bool = False
    bearer_token_file: str | None = None
    tls_config: SafeTLSConfig | None = None
    relabelings: list[RelabelConfig] = []
    metric_relabelings: list[RelabelConfig] = []


class ServiceMonitorSpec(Strict):
    selector: LabelSelector
    endpoints: list[Endpoint]
    job_label: str | None = None
    namespace_selector: NamespaceSelector | None = None


class PodMonitorSpec(Strict):
    selector: LabelSelector
    pod_metrics_endpoints: list[Endpoint]
    job_label: str | None = None
    namespace_selector: NamespaceSelector | None = None


class Rule(Strict):
    expr: str
    alert: str | None = None
    record: str | None = None
    for_: str | None = msgspec.field(default=None, name="for")
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class RuleGroup(Strict):
    name: str
    rules: list[Rule]
    interval: str | None = None


class PrometheusRuleSpec(Strict):
    groups: list[RuleGroup]


class _Object(Strict):
    api_version: Literal["monitoring.coreos.com/v1"]
    metadata: ObjectMeta


class ServiceMonitor(_Object, tag_field="kind", tag="ServiceMonitor"):
    spec: ServiceMonitorSpec


class PodMonitor(_Object, tag_field="kind", tag="PodMonitor"):
    spec: PodMonitorSpec


class PrometheusRule(_Object, tag_field="kind", tag="PrometheusRule"):
    spec: PrometheusRuleSpec


CRDS: dict[str, type[_Object]] = {
    "ServiceMonitor": ServiceMonitor,
    "PodMonitor": PodMonitor,
    "PrometheusRule": PrometheusRule,
}


def validate_crd(obj: dict[str, Any]) -> _Object:
    """Validate a monitoring.coreos.com/v1 object we ship; SchemaError names object and key."""
    kind = obj.get("kind", "")
    if kind not in CRDS:
        raise SchemaError(f"{kind}: no schema for this kind")
    try:
        return msgspec.convert(obj, CRDS[kind])
    except msgspec.ValidationError as exc:
        name = obj.get("metadata", {}).get("name", "?")
        raise SchemaError(f"{kind}/{name}: {exc}") from exc
