"""Mapping exporter series to Kubernetes node names.

Node identity differs per exporter (node-exporter `instance` as host:port or a relabelled `node`,
kube-state-metrics `node`, dcgm-exporter `Hostname`/`hostname`, Scaphandre only through target
labels). Each catalog entry lists the labels that may carry it; this module turns a series' labels
into a node name, and is pure so the self-check and the tests can use it directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


def strip_port(value: str) -> str:
    """`10.0.0.7:9100` -> `10.0.0.7`; `[fe80::1]:9100` -> `fe80::1`; names are unchanged."""
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return value


@dataclass(frozen=True)
class NodeResolver:
    """Resolves exporter identities to node names.

    `known` is the set of Kubernetes node names (from kube_node_info); when it is empty every
    identity is accepted as is. `aliases` maps other identities (IPs) to node names.
    """

    known: frozenset[str] = frozenset()
    aliases: Mapping[str, str] | None = None
    _memo: dict[str, tuple[str | None, str]] = field(default_factory=dict, compare=False,
                                                     repr=False)
    """Identity -> result: identities are stable across refreshes, and a refresh at 5000 nodes
    resolves ~85k series."""

    def resolve(self, labels: Mapping[str, str], node_labels: Iterable[str]) -> tuple[str | None, str]:
        """(node name or None, the identity found) for one series' labels."""
        identity = ""
        for label in node_labels:
            value = labels.get(label)
            if value:
                identity = value
                break
        if not identity:
            return None, ""
        found = self._memo.get(identity)
        if found is None:
            found = self._memo[identity] = self._resolve(identity)
        return found

    def _resolve(self, identity: str) -> tuple[str | None, str]:
        for candidate in (identity, strip_port(identity)):
            if not self.known or candidate in self.known:
                return (candidate if self.known else strip_port(identity)), identity
            if self.aliases and candidate in self.aliases:
                return self.aliases[candidate], identity
        # Some setups relabel instance to the node's FQDN; accept its first label.
        short = strip_port(identity).split(".", 1)[0]
        if short in self.known:
            return short, identity
        return None, identity
