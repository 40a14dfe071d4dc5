"""Selectors: `node=a,namespace=b,pod=p,container=c,label.app=web,worker=w` -> a PromQL filter.

Pure: no I/O. The only user input that reaches PromQL passes through here, twice guarded: values
must look like Kubernetes names (anything else is a 400 naming the term), and they are still
escaped as PromQL strings (and `$` doubled for label_replace, which expands `$1`).

A term filters on a label the level's series carry (`and on (label) <one-series vector>`), or
joins kube-state-metrics series: `node=` at pod and container level (kube_pod_info) and
`label.<key>=` (kube_pod_labels). `worker=` names a partition worker pod: its node at node level,
the pod itself at pod, container and process level.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from extender.monitoring.catalog import LEVEL_LABELS, Level, SelectorSettings

MAX_TERMS = 8
MAX_VALUE = 253  # a DNS subdomain: the longest Kubernetes object name
NAME_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._:/@+-]*[A-Za-z0-9_])?")
LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
LABEL_KEYS = ("node", "namespace", "pod", "container", "pid", "exe")
KEYS_HELP = ", ".join((*LABEL_KEYS, "worker", "label.<pod label key>"))
POD_LEVELS = ("pod", "container", "process")


class BadSelector(ValueError):
    """The selector cannot be applied; the message says which term and why (HTTP 400)."""


@dataclass(frozen=True)
class Selector:
    """Validated `key=value` terms, in request order."""

    terms: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        return next((value for k, value in self.terms if k == key), None)

    def __bool__(self) -> bool:
        return bool(self.terms)


def parse(text: str | None) -> Selector:
    """Parse a selector string; BadSelector naming the bad term."""
    if not text or not text.strip():
        return Selector()
    terms: list[tuple[str, str]] = []
    for raw in text.split(","):
        term = raw.strip()
        if any(op in term for op in ("!=", "=~", "!~")):
            raise BadSelector(f"selector: {term!r}: only key=value (equality) terms are supported")
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise BadSelector(f"selector: {term!r} is not key=value")
        if key.startswith("label."):
            if not LABEL_KEY.fullmatch(key[6:]) or len(key) > 6 + 316:
                raise BadSelector(f"selector: {key!r}: not a Kubernetes label key")
        elif key not in (*LABEL_KEYS, "worker"):
            raise BadSelector(f"selector: unknown key {key!r} (keys: {KEYS_HELP})")
        if len(value) > MAX_VALUE or not NAME_VALUE.fullmatch(value):
            raise BadSelector(f"selector: {key}={value[:80]!r}: value must be a Kubernetes name "
                              f"(letters, digits and . _ - : / @ +, at most {MAX_VALUE} characters)")
        if key == "pid" and not value.isdigit():
            raise BadSelector(f"selector: pid={value!r}: expected a number")
        if any(k == key for k, _ in terms):
            raise BadSelector(f"selector: duplicate key {key!r}")
        terms.append((key, value))
    if len(terms) > MAX_TERMS:
        raise BadSelector(f"selector: {len(terms)} terms, at most {MAX_TERMS}")
    return Selector(tuple(terms))


def allowed_keys(level: Level) -> tuple[str, ...]:
    """Selector keys that apply at `level` (for messages and the metric listing)."""
    keys = list(LEVEL_LABELS[level])
    if level in ("pod", "container"):
        keys.insert(0, "node")
    if level in POD_LEVELS:
        keys.append("label.<key>")
    if level in ("node", *POD_LEVELS):
        keys.append("worker")
    return tuple(keys)


def resolve_workers(selector: Selector, level: Level, namespace: str,
                    worker_node: Callable[[str], str]) -> Selector:
    """Replace `worker=w` by what it means at `level`: its node, or its pod in `namespace`.

    `worker_node(name)` returns the worker's node (only called at node level; it raises whatever
    the caller maps to an HTTP answer when the worker is unknown).
    """
    worker = selector.get("worker")
    if worker is None:
        return selector
    if level == "node":
        implied: dict[str, str] = {"node": worker_node(worker)}
    elif level in POD_LEVELS:
        implied = {"namespace": namespace, "pod": worker}
    else:
        raise BadSelector(f"selector: worker is not available at level {level} "
                          f"(at this level: {', '.join(allowed_keys(level)) or 'none'})")
    terms = [(k, v) for k, v in selector.terms if k != "worker"]
    for key, value in implied.items():
        given = selector.get(key)
        if given is not None and given != value:
            raise BadSelector(f"selector: worker={worker} means {key}={value}, "
                              f"which contradicts {key}={given}")
        if given is None:
            terms.append((key, value))
    return Selector(tuple(terms))


def apply(query: str, level: Level, selector: Selector, joins: SelectorSettings) -> str:
    """`query` restricted to the series `selector` picks (call resolve_workers first)."""
    if not selector:
        return query
    own: dict[str, str] = {}
    pod_info: dict[str, str] = {}
    pod_labels: dict[str, str] = {}
    for key, value in selector.terms:
        if key in LEVEL_LABELS[level]:
            own[key] = value
        elif key == "node" and level in ("pod", "container"):
            pod_info["node"] = value
        elif key.startswith("label.") and level in POD_LEVELS:
            pod_labels["label_" + re.sub(r"[^A-Za-z0-9_]", "_", key[6:])] = value
        else:
            raise BadSelector(f"selector: {key} is not available at level {level} "
                              f"(at this level: {', '.join(allowed_keys(level)) or 'none'})")
    out = f"({query})"
    if own:
        out += f" and on ({', '.join(own)}) {_one_series(own)}"
    if pod_info:
        out += f" and on (namespace, pod) {joins.pod_info}{{{_matchers(pod_info)}}}"
    if pod_labels:
        out += f" and on (namespace, pod) {joins.pod_labels}{{{_matchers(pod_labels)}}}"
    return out


def promql_string(value: str) -> str:
    """`value` as a double-quoted PromQL string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _matchers(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{name}={promql_string(value)}" for name, value in labels.items())


def _one_series(labels: Mapping[str, str]) -> str:
    # A single series carrying exactly `labels`: label_replace on an empty source label sets the
    # label to the replacement, in which `$` must be doubled (it expands capture groups).
    expr = "vector(1)"
    for name, value in labels.items():
        expr = f'label_replace({expr}, "{name}", {promql_string(value.replace("$", "$$"))}, "", "")'
    return expr
