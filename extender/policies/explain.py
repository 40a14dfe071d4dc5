"""Explanations: why each node got its verdict and score, kept in a bounded ring buffer.

Users ask "why this node?". Every decision keeps the filter reason of each rejected node and the
full per-metric breakdown of the best-scored nodes (value, weight, contribution, data age). Only
the top few are broken down, eagerly and compactly, so that a ring of 1000 decisions over
500-node requests stays a few megabytes.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Sequence

import msgspec
import numpy as np

from extender.policies.engine import Outcome
from extender.policies.model import NodeTable

TOP_NODES = 5  # nodes broken down per decision
MAX_REJECTIONS = 200  # reasons kept per decision (the counters on /metrics keep the totals)


class TermExplanation(msgspec.Struct, frozen=True):
    metric: str
    value: float | None
    weight: float
    goodness: float | None
    """Normalised 0..1, 1 = best."""
    contribution: float
    """Points of the 0..10 score this term gave."""
    age_s: float | None
    fresh: bool


class NodeExplanation(msgspec.Struct, frozen=True):
    node: str
    score: int
    passed: bool
    reason: str | None
    data_age_s: float | None
    """Age of the oldest fresh term (None when the cache knows nothing of the node)."""
    pending_cpu_cores: float
    pending_memory_bytes: float
    terms: list[TermExplanation]


class Decision(msgspec.Struct, frozen=True):
    id: int
    time: float
    verb: str
    pod: str
    uid: str
    profile: str
    note: str
    shadow: bool
    candidates: int
    chosen: str | None
    rejected: dict[str, str]
    nodes: list[NodeExplanation]
    duration_ms: float


def explain_nodes(outcome: Outcome, table: NodeTable, indices: Sequence[int]) -> list[NodeExplanation]:
    """Per-metric breakdown of the candidates at `indices` of the outcome."""
    ev = outcome.evaluation
    out = []
    all_weights = ev.weights.tolist()
    for i in indices:
        # Python lists: element access on numpy rows is slow and this runs on every request.
        values, fresh_row = ev.values[i].tolist(), ev.fresh[i].tolist()
        goodness, ages = ev.goodness[i].tolist(), ev.age_s[i].tolist()
        derived_total = sum(w for term, w in ev.derived_weights.items()
                            if not np.isnan(ev.derived[term][i]))
        total = sum(w for w, f in zip(all_weights, fresh_row, strict=True) if f) + derived_total
        terms = []
        for j, metric in enumerate(table.metrics):
            value, fresh, weight = values[j], fresh_row[j], all_weights[j]
            if weight == 0 and value != value:
                continue
            contribution = 10 * weight * goodness[j] / total if total and fresh else 0.0
            terms.append(TermExplanation(
                metric=metric, value=None if value != value else value, weight=weight,
                goodness=goodness[j] if fresh else None, contribution=round(contribution, 3),
                age_s=None if ages[j] != ages[j] else round(ages[j], 1), fresh=fresh))
        for term, weight in ev.derived_weights.items():
            g = ev.derived[term][i]
            terms.append(TermExplanation(
                metric=term, value=None, weight=weight,
                goodness=None if np.isnan(g) else float(g),
                contribution=0.0 if np.isnan(g) or not total else round(10 * weight * g / total, 3),
                age_s=0.0, fresh=not np.isnan(g)))
        fresh_ages = [a for a, f in zip(ages, fresh_row, strict=True) if f]
        name = outcome.names[i]
        rejection = outcome.rejected.get(name)
        pending = ev.pending
        out.append(NodeExplanation(
            node=name, score=int(ev.scores[i]), passed=rejection is None,
            reason=rejection.message if rejection else None,
            data_age_s=round(max(fresh_ages), 1) if fresh_ages else None,
            pending_cpu_cores=float(pending.cpu_cores[i]) if pending is not None else 0.0,
            pending_memory_bytes=float(pending.memory_bytes[i]) if pending is not None else 0.0,
            terms=terms))
    return out


class DecisionLog:
    """A bounded, thread-safe ring buffer of decisions."""

    def __init__(self, size: int) -> None:
        self._ring: deque[Decision] = deque(maxlen=size)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def add(self, decision: Decision) -> None:
        self._ring.append(decision)

    def recent(self, *, pod: str | None = None, limit: int = 50) -> list[Decision]:
        """Newest first; `pod` matches `namespace/name`, a bare name, or the pod UID."""
        out = []
        for decision in reversed(list(self._ring)):
            if pod and pod not in (decision.pod, decision.uid, decision.pod.split("/", 1)[-1]):
                continue
            out.append(decision)
            if len(out) >= limit:
                break
        return out


def rejected_summary(outcome: Outcome) -> dict[str, str]:
    """Reasons by node, bounded."""
    return {node: r.message for node, r in itertools.islice(outcome.rejected.items(), MAX_REJECTIONS)}
