"""The named-metric catalog: `config/monitoring.yaml` (next to extender.yaml, `monitoring.catalog_file`).

A named metric has a unit, a description and one PromQL template per level. New metrics need no
code: the API, the client and the OpenAPI document read the catalog.

Design decisions:
- A level fixes the labels its series carry (`LEVEL_LABELS`): a template must aggregate to exactly
  those (e.g. `sum by (namespace, pod)`), whatever the exporter called them. Answers keep only these
  labels, so exporters can be swapped behind a metric without breaking orchestrators.
- Templates name parameters as `{{name}}` (rate window, histogram name, the node-exporter join...):
  they are substituted once at load time; an unknown parameter is a load error, not a bad query.
- Selectors are NOT part of templates: `selector.py` appends them as `and on (...)` filters, so
  every metric supports every selector of its level and user input never enters a template.
- Node-level values of metrics that the scoring catalog already refreshes (`cache:`) are served from
  the extender's snapshot; the template still serves history.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Literal, get_args

import msgspec

from extender.errors import ConfigError
from extender.settings import DEFAULT_CONFIG, Settings, Struct, convert, env_overrides, merge, read_yaml

Level = Literal["cluster", "node", "namespace", "pod", "container", "process"]
LEVELS: tuple[Level, ...] = get_args(Level)

LEVEL_LABELS: Mapping[Level, tuple[str, ...]] = {
    "cluster": (),
    "node": ("node",),
    "namespace": ("namespace",),
    "pod": ("namespace", "pod"),
    "container": ("namespace", "pod", "container"),
    # Scaphandre's processes: pid and exe on a node; namespace/pod when the process is in a pod.
    "process": ("node", "pid", "exe", "namespace", "pod"),
}
"""The labels a level's series carry; answers keep only these."""

ENV_PREFIX = "MONITORING_"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class LevelQuery(Struct, frozen=True):
    """How one level of a metric is computed."""

    query: str
    """PromQL (with `{{param}}` placeholders) returning one series per entity of the level."""
    unit: str | None = None
    """Overrides the metric's unit at this level (e.g. `count` at cluster level, `bool` per node)."""
    cache: str | None = None
    """Node level only: the scoring catalog entry whose cached value is the current value."""


class NamedMetric(Struct, frozen=True):
    name: str
    unit: str
    """`ratio` (0..1), `bytes`, `bytes/s`, `cores`, `W`, `J`, `s`, `bool`, `count`, ..."""
    description: str
    levels: dict[str, str | LevelQuery]
    """Level -> PromQL template, or {query, unit, cache}."""

    def level(self, level: str) -> LevelQuery:
        """The level's definition (KeyError if the metric lacks it)."""
        spec = self.levels[level]
        return LevelQuery(query=spec) if isinstance(spec, str) else spec

    def unit_at(self, level: str) -> str:
        return self.level(level).unit or self.unit


class SelectorSettings(Struct, frozen=True):
    """Series used to apply selectors that are not labels of a level's series."""

    pod_info: str = "kube_pod_info"
    """kube-state-metrics series with namespace, pod, node: `node=` at pod/container level."""
    pod_labels: str = "kube_pod_labels"
    """kube-state-metrics series with `label_<key>` labels: `label.<key>=` selectors. Real
    kube-state-metrics exports only the label keys allowed by `--metric-labels-allowlist`."""


class DiscoverySettings(Struct, frozen=True):
    """`GET /api/v1/sd/targets`: the partition's workers and their deadline sidecars."""

    resources_file: str | None = None
    """The partition controller's ConfigMap key `resources.json`, mounted as a file (relative to
    this file or absolute, e.g. /etc/partition/resources.json). Unset: SD answers 404."""
    namespace: str = "extract"
    """Namespace of the worker pods (the partition controller's `namespace`)."""
    worker_port: int | None = None
    """Port of the worker's own metrics endpoint; None lists no worker targets."""
    worker_metrics_path: str = "/metrics"
    sidecar_port: int | None = 9465
    """The deadline sidecar's `--listen` port (it must listen on the pod IP, e.g. 0.0.0.0:9465)."""
    sidecar_metrics_path: str = "/metrics"
    ready_only: bool = False
    """List only workers whose pod is Ready (others are listed with `ready="false"`)."""


class MonitoringCatalog(Struct, frozen=True):
    """The whole monitoring.yaml."""

    params: dict[str, str] = {}
    """Values of `{{name}}` placeholders in templates."""
    selectors: SelectorSettings = SelectorSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    metrics: tuple[NamedMetric, ...] = ()
    source: str = "<defaults>"

    def metric(self, name: str) -> NamedMetric:
        """The metric called `name` (KeyError if absent)."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)

    def resolve(self, path: str) -> Path:
        """A path from this file, relative to the file's directory."""
        return Path(self.source).parent / path


def catalog_path(settings: Settings) -> Path:
    """Where `settings.monitoring.catalog_file` points (relative to the settings file)."""
    base = DEFAULT_CONFIG if settings.source == "<defaults>" else Path(settings.source)
    return base.parent / settings.monitoring.catalog_file


def load_monitoring_catalog(path: Path | str, *, cache_entries: Collection[str] = (),
                            defaults: Mapping[str, str] | None = None,
                            environ: Mapping[str, str] | None = None) -> MonitoringCatalog:
    """Load, validate and render `path`; ConfigError `file: key: reason` on the first problem.

    `cache_entries` are the scoring catalog's names that `cache:` may refer to; `defaults` are
    parameter values the file's `params` may override. Environment
    variables `MONITORING_<KEY>__<KEY>=value` override the file (e.g.
    `MONITORING_PARAMS__WINDOW=30s`, `MONITORING_DISCOVERY__RESOURCES_FILE=/etc/partition/...`).
    """
    path = Path(path)
    data = merge(read_yaml(path), env_overrides(os.environ if environ is None else environ,
                                                ENV_PREFIX, MonitoringCatalog.__struct_fields__))
    catalog = convert(data, MonitoringCatalog, str(path))
    params = {"partition_namespace": catalog.discovery.namespace, **(defaults or {}),
              **catalog.params}
    catalog = msgspec.structs.replace(catalog, source=str(path), params=params)
    return msgspec.structs.replace(catalog, metrics=tuple(
        _validated(catalog, i, metric, set(cache_entries)) for i, metric in enumerate(catalog.metrics)))


def load_for(settings: Settings) -> MonitoringCatalog:
    """The monitoring catalog of the extender configured by `settings`."""
    return load_monitoring_catalog(catalog_path(settings),
                                   cache_entries={entry.name for entry in settings.catalog},
                                   defaults={"window": settings.cache.rate_window})


def render(template: str, params: Mapping[str, str], where: str) -> str:
    """Substitute `{{name}}` placeholders; ConfigError naming `where` for an unknown one."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ConfigError(f"{where}: unknown parameter {{{{{name}}}}} (params: {known})")
        return params[name]

    out = PLACEHOLDER.sub(value, template)
    if "{{" in out or "}}" in out:
        raise ConfigError(f"{where}: malformed placeholder (expected {{{{name}}}})")
    return " ".join(out.split())


def _validated(catalog: MonitoringCatalog, i: int, metric: NamedMetric,
               cache_entries: set[str]) -> NamedMetric:
    src = catalog.source
    where = f"{src}: metrics.{i}"
    if not re.fullmatch(r"[a-z][a-z0-9_]*", metric.name):
        raise ConfigError(f"{where}.name: expected lower_snake_case, got {metric.name!r}")
    if sum(m.name == metric.name for m in catalog.metrics) > 1:
        raise ConfigError(f"{where}.name: duplicate metric {metric.name!r}")
    if not metric.levels:
        raise ConfigError(f"{where}.levels: declare at least one level")
    levels: dict[str, str | LevelQuery] = {}
    for level in metric.levels:
        key = f"{where}.levels.{level}"
        if level not in LEVELS:
            raise ConfigError(f"{key}: unknown level (levels: {', '.join(LEVELS)})")
        spec = metric.level(level)
        if spec.cache is not None:
            if level != "node":
                raise ConfigError(f"{key}.cache: only the node level is cached")
            if spec.cache not in cache_entries:
                raise ConfigError(f"{key}.cache: {spec.cache!r} is not in the scoring catalog")
        query = render(spec.query, catalog.params, f"{key}.query")
        if not query:
            raise ConfigError(f"{key}.query: empty")
        levels[level] = msgspec.structs.replace(spec, query=query)
    # Keep the YAML order of levels, which is the order the API lists them in.
    return msgspec.structs.replace(metric, levels=levels)
