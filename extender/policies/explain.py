"""Explanations: why each node got its verdict and score, kept in a bounded ring buffer.

Users ask "why this node?". Every decision keeps the filter reason of each rejected node and the
raw numbers of its best-scored nodes (value, weight, goodness, data age) as small array slices;
the per-metric explanation objects are built only when /api/v1/decisions is read. The request
path pays for a few array copies, and a ring of 1000 decisions stays small and cheap for the GC.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from extender.policies.engine import Outcome
from extender.policies.model import FloatArray

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


@dataclass(frozen=True, slots=True, eq=False)
class Breakdown:
    """The raw numbers behind the best candidates of one decision: small array slices copied
    from the Evaluation. Explanations are built from them only when someone reads them."""

    nodes: tuple[str, ...]
    scores: tuple[int, ...]
    reasons: tuple[str | None, ...]
    metrics: tuple[str, ...]
    weights: FloatArray
    values: FloatArray
    fresh: npt.NDArray[np.bool_]
    goodness: FloatArray
    age_s: FloatArray
    derived: tuple[tuple[str, float, FloatArray], ...]
    pending_cpu: FloatArray
    pending_mem: FloatArray

    @classmethod
    def of(cls, outcome: Outcome, metrics: tuple[str, ...], indices: Sequence[int]) -> Breakdown:
        """Copy the rows `indices` of the outcome's evaluation."""
        rows = list(indices)
        ev = outcome.detail(rows)
        names = [outcome.names[i] for i in rows]
        empty = np.zeros(len(rows))
        return cls(
            nodes=tuple(names), scores=tuple(ev.scores.tolist()),
            reasons=tuple(r.message if (r := outcome.rejected.get(n)) else None for n in names),
            metrics=metrics, weights=ev.weights, values=ev.values, fresh=ev.fresh,
            goodness=ev.goodness, age_s=ev.age_s,
            derived=tuple((term, w, ev.derived[term]) for term, w in ev.derived_weights.items()),
            pending_cpu=ev.pending.cpu_cores if ev.pending is not None else empty,
            pending_mem=ev.pending.memory_bytes if ev.pending is not None else empty)

    def explain(self) -> list[NodeExplanation]:
        """Per-metric explanation of each node (value, weight, contribution, age)."""
        out = []
        weights = self.weights.tolist()
        for i, name in enumerate(self.nodes):
            values, fresh_row = self.values[i].tolist(), self.fresh[i].tolist()
            goodness, ages = self.goodness[i].tolist(), self.age_s[i].tolist()
            derived = [(term, w, float(g[i])) for term, w, g in self.derived]
            total = sum(w for w, f in zip(weights, fresh_row, strict=True) if f) + sum(
                w for _, w, g in derived if g == g)
            terms = []
            for j, metric in enumerate(self.metrics):
                value, fresh, weight = values[j], fresh_row[j], weights[j]
                if weight == 0 and value != value:
                    continue
                contribution = 10 * weight * goodness[j] / total if total and fresh else 0.0
                terms.append(TermExplanation(
                    metric=metric, value=None if value != value else value, weight=weight,
                    goodness=goodness[j] if fresh else None, contribution=round(contribution, 3),
                    age_s=None if ages[j] != ages[j] else round(ages[j], 1), fresh=fresh))
            for term, weight, g in derived:
                ok = g == g
                terms.append(TermExplanation(
                    metric=term, value=None, weight=weight, goodness=g if ok else None,
                    contribution=round(10 * weight * g / total, 3) if ok and total else 0.0,
                    age_s=0.0, fresh=ok))
            fresh_ages = [a for a, f in zip(ages, fresh_row, strict=True) if f]
            out.append(NodeExplanation(
                node=name, score=self.scores[i], passed=self.reasons[i] is None,
                reason=self.reasons[i],
                data_age_s=round(max(fresh_ages), 1) if fresh_ages else None,
                pending_cpu_cores=float(self.pending_cpu[i]),
                pending_memory_bytes=float(self.pending_mem[i]), terms=terms))
        return out


@dataclass(frozen=True, slots=True, eq=False)
class DecisionRecord:
    """What the ring keeps per decision; `view()` renders the JSON `Decision`."""

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
    breakdown: Breakdown
    duration_ms: float

    def view(self) -> Decision:
        return Decision(id=self.id, time=self.time, verb=self.verb, pod=self.pod, uid=self.uid,
                        profile=self.profile, note=self.note, shadow=self.shadow,
                        candidates=self.candidates, chosen=self.chosen, rejected=self.rejected,
                        nodes=self.breakdown.explain(), duration_ms=self.duration_ms)


class DecisionLog:
    """A bounded, thread-safe ring buffer of decisions."""

    def __init__(self, size: int) -> None:
        self._ring: deque[DecisionRecord] = deque(maxlen=size)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def add(self, decision: DecisionRecord) -> None:
        self._ring.append(decision)

    def recent(self, *, pod: str | None = None, limit: int = 50) -> list[Decision]:
        """Newest first, rendered; `pod` matches `namespace/name`, a bare name, or the pod UID."""
        out = []
        for decision in reversed(list(self._ring)):
            if pod and pod not in (decision.pod, decision.uid, decision.pod.split("/", 1)[-1]):
                continue
            out.append(decision.view())
            if len(out) >= limit:
                break
        return out


def rejected_summary(outcome: Outcome) -> dict[str, str]:
    """Reasons by node, bounded."""
    return {node: r.message for node, r in itertools.islice(outcome.rejected.items(), MAX_REJECTIONS)}
