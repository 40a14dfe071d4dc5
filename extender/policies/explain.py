"""Explanations: why each node got its verdict and score, kept in a bounded ring buffer.

Users ask "why this node?". Every decision keeps the filter reason of each rejected node and the
raw numbers (value, weight, goodness, data age) of the nodes it explains, as small array slices: a
prioritize decision its best-scored nodes, a filter decision the first nodes it rejected and the
one it placed the pod on when only that one passed. The per-metric explanation objects are built
only when /api/v1/decisions is read. The request path pays for a few array copies, and a ring of
1000 decisions stays small and cheap for the GC.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from extender.policies.engine import Outcome
from extender.policies.hotspot import Pending
from extender.policies.model import FloatArray, IntArray, NodeTable, PodDemand
from extender.policies.scoring import CompiledProfile, DerivedTerm, Evaluation, evaluate

TOP_NODES = 5  # nodes broken down per decision (best-scored, or rejected)
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
    imputed: bool = False
    """The node lacked this term; `goodness` is what its `on_missing` policy counted."""
    note: str | None = None
    """What the value is when it is no plain reading, e.g. `risk aggregate: mean + 1·sd of
    cpu_utilisation over 10m at 30s resolution`, or the learned model that gave the goodness."""


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
    imputed: list[str] = []
    """Weighted terms the node lacked (absent or stale), counted by their `on_missing` policy."""


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
    estimate: str = ""
    """How the pod's expected load differs from its requests (empty: it does not)."""


@dataclass(frozen=True, slots=True, eq=False)
class Breakdown:
    """The inputs behind the best candidates of one decision: their raw values and sample times
    (copied rows of the table), their pending load, and the pod and profile. The explanation is
    computed from them only when someone reads it, by the same `evaluate` that decided."""

    nodes: tuple[str, ...]
    scores: tuple[int, ...]
    reasons: tuple[str | None, ...]
    metrics: tuple[str, ...]
    values: FloatArray
    sampled_at: FloatArray
    pending: Pending | None
    derived: Mapping[str, FloatArray]
    pod: PodDemand
    compiled: CompiledProfile
    now: float
    max_staleness_s: float
    missing_score: int
    medians: FloatArray
    """The decision table's fresh medians (what `neutral` terms imputed)."""

    @classmethod
    def of(cls, outcome: Outcome, indices: Sequence[int]) -> Breakdown:
        """Copy what explaining the candidates at `indices` of `outcome` will need."""
        ctx = outcome.context
        assert ctx is not None
        idx = np.array(indices, dtype=np.intp)
        rows = ctx.rows[idx]
        table = ctx.table
        if rows.size and rows.min() >= 0:
            values, sampled = table.values[rows], table.sampled_at[rows]  # copies
        else:
            values = np.full((len(idx), len(table.metrics)), np.nan)
            sampled = values.copy()
            known = rows >= 0
            if len(table.names):
                values[known] = table.values[rows[known]]
                sampled[known] = table.sampled_at[rows[known]]
        pending = None if ctx.pending is None else Pending(ctx.pending.cpu_cores[idx],
                                                           ctx.pending.memory_bytes[idx])
        computed = (outcome.derived if outcome.evaluation is None
                    else outcome.evaluation.derived) or {}
        derived = {term: g[idx] for term, g in computed.items()}
        names = [outcome.names[i] for i in idx.tolist()]
        return cls(
            nodes=tuple(names), scores=tuple(outcome.score_array[idx].tolist()),
            reasons=tuple(r.message if (r := outcome.rejected.get(n)) else None for n in names),
            metrics=table.metrics, values=values, sampled_at=sampled, pending=pending,
            derived=derived, pod=ctx.pod, compiled=ctx.compiled, now=ctx.now,
            max_staleness_s=ctx.max_staleness_s, missing_score=ctx.missing_score,
            medians=table.fresh_medians(ctx.now, ctx.max_staleness_s))

    def evaluation(self) -> Evaluation:
        """The full evaluation of the explained nodes, recomputed from the copied inputs."""
        table = NodeTable(names=self.nodes, metrics=self.metrics, values=self.values,
                          sampled_at=self.sampled_at)
        derived_terms = {term: _fixed(g) for term, g in self.derived.items()}
        return evaluate(self.pod, table, np.arange(len(self.nodes), dtype=np.intp), self.compiled,
                        now=self.now, max_staleness_s=self.max_staleness_s,
                        missing_score=self.missing_score, pending=self.pending,
                        derived_terms=derived_terms, medians=self.medians)

    def explain(self) -> list[NodeExplanation]:
        """Per-metric explanation of each node (value, weight, contribution, age)."""
        ev = self.evaluation()
        notes = self.compiled.notes
        out = []
        weights = ev.weights.tolist()
        for i, name in enumerate(self.nodes):
            values, fresh_row = ev.values[i].tolist(), ev.fresh[i].tolist()
            imputed_row = ev.imputed[i].tolist()
            goodness, ages = ev.goodness[i].tolist(), ev.age_s[i].tolist()
            derived = [(term, w, float(ev.derived[term][i]))
                       for term, w in ev.derived_weights.items()]
            total = sum(w for w, f, m in zip(weights, fresh_row, imputed_row, strict=True)
                        if f or m) + sum(w for _, w, g in derived if g == g)
            terms = []
            for j, metric in enumerate(self.metrics):
                value, fresh, weight = values[j], fresh_row[j], weights[j]
                counted = fresh or imputed_row[j]
                if weight == 0 and value != value:
                    continue
                contribution = 10 * weight * goodness[j] / total if total and counted else 0.0
                terms.append(TermExplanation(
                    metric=metric, value=None if value != value else value, weight=weight,
                    goodness=goodness[j] if counted else None, contribution=round(contribution, 3),
                    age_s=None if ages[j] != ages[j] else round(ages[j], 1), fresh=fresh,
                    imputed=imputed_row[j], note=notes.get(metric)))
            for term, weight, g in derived:
                ok = g == g
                terms.append(TermExplanation(
                    metric=term, value=None, weight=weight, goodness=g if ok else None,
                    contribution=round(10 * weight * g / total, 3) if ok and total else 0.0,
                    age_s=0.0, fresh=ok, note=notes.get(term)))
            fresh_ages = [a for a, f in zip(ages, fresh_row, strict=True) if f]
            pending_cpu = 0.0 if self.pending is None else float(self.pending.cpu_cores[i])
            pending_mem = 0.0 if self.pending is None else float(self.pending.memory_bytes[i])
            out.append(NodeExplanation(
                node=name, score=self.scores[i], passed=self.reasons[i] is None,
                reason=self.reasons[i],
                data_age_s=round(max(fresh_ages), 1) if fresh_ages else None,
                pending_cpu_cores=pending_cpu, pending_memory_bytes=pending_mem, terms=terms,
                imputed=list(itertools.compress(self.metrics, imputed_row))))
        return out


def _fixed(goodness: FloatArray) -> DerivedTerm:
    """A derived term that returns the goodness computed when the decision was made."""
    def term(pod: PodDemand, table: NodeTable, rows: IntArray) -> FloatArray:
        return goodness

    return term


@dataclass(frozen=True, slots=True, eq=False)
class DecisionRecord:
    """What the ring keeps per decision: the JSON `Decision` without its per-node explanations,
    and the breakdown they are computed from when read."""

    head: Decision
    breakdown: Breakdown

    @property
    def pod(self) -> str:
        return self.head.pod

    @property
    def uid(self) -> str:
        return self.head.uid

    def view(self) -> Decision:
        return msgspec.structs.replace(self.head, nodes=self.breakdown.explain())


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
