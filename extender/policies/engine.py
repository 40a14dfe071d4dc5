"""The policy engine: picks the pod's profile, evaluates candidates, remembers placements.

This is what the webhook and the simulator call. It is pure apart from the placement ledger
(state, no I/O) and takes the time as an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from extender.policies.hotspot import Ledger, Pending
from extender.policies.model import NodeTable, PodDemand
from extender.policies.scoring import (
    CompiledProfile,
    DerivedTerm,
    Evaluation,
    Rejection,
    compile_profile,
    evaluate,
    rejections,
)
from extender.settings import Settings


@dataclass(frozen=True)
class Outcome:
    """One evaluated decision: the profile used, and per-candidate results."""

    profile: str
    names: Sequence[str]
    evaluation: Evaluation
    rejected: Mapping[str, Rejection]
    note: str = ""
    """E.g. why an annotation was ignored."""

    @property
    def passed(self) -> list[str]:
        if not self.rejected:
            return list(self.names)
        return [name for name in self.names if name not in self.rejected]

    @property
    def scores(self) -> list[int]:
        return self.evaluation.scores.tolist()  # type: ignore[no-any-return]

    def ranking(self, k: int) -> list[int]:
        """Indices of the `k` best-scored candidates not rejected, best first; ties by name."""
        scores = self.evaluation.scores
        eligible = np.ones(len(scores), bool)
        if self.rejected:
            eligible = np.array([name not in self.rejected for name in self.names], bool)
        candidates = np.flatnonzero(eligible)
        if candidates.size == 0 or k <= 0:
            return []
        values = scores[candidates]
        # Only candidates scoring at least the k-th best can be in the top k: sort just those.
        threshold = np.partition(values, -min(k, values.size))[-min(k, values.size)]
        top = candidates[values >= threshold].tolist()
        # Two stable C-level sorts (by name, then by score descending) instead of a key lambda.
        top.sort(key=self.names.__getitem__)
        top.sort(key=scores.tolist().__getitem__, reverse=True)
        return top[:k]

    def best(self) -> str | None:
        """The highest-scoring node not rejected; ties go to the first name in sorted order."""
        top = self.ranking(1)
        return self.names[top[0]] if top else None


class Engine:
    """Evaluates pods against a NodeTable under the configured profiles."""

    def __init__(self, settings: Settings, *, derived_terms: Mapping[str, DerivedTerm] | None = None,
                 ledger: Ledger | None = None) -> None:
        self.settings = settings
        hot = settings.profile().hotspot
        self.ledger = ledger or Ledger(hot.window_s, hot.settle_s)
        self.derived_terms = dict(derived_terms or {})
        self._compiled: dict[tuple[object, ...], CompiledProfile] = {}

    def select_profile(self, pod: PodDemand) -> tuple[str, str]:
        """The profile name for `pod` and a note when its annotation could not be honoured."""
        name = pod.policy
        if name and name in self.settings.policy.profiles:
            return name, ""
        if name:
            return self.settings.policy.default, (
                f"unknown policy {name!r} in annotation, used {self.settings.policy.default!r}")
        return self.settings.policy.default, ""

    def compiled(self, profile: str, metrics: tuple[str, ...],
                 weights: Mapping[str, float] | None) -> CompiledProfile:
        """The compiled profile for these columns and overrides (cached)."""
        key = (profile, metrics, tuple(sorted((weights or {}).items())))
        found = self._compiled.get(key)
        if found is None:
            if len(self._compiled) > 256:  # bounded: annotations can carry arbitrary weights
                self._compiled.clear()
            found = compile_profile(self.settings, profile, self.settings.profile(profile),
                                    metrics, weights)
            self._compiled[key] = found
        return found

    def evaluate(self, pod: PodDemand, table: NodeTable, names: Sequence[str], now: float,
                 *, pending: bool = True) -> Outcome:
        """Filter verdicts and scores of `names` for `pod` at time `now`."""
        profile, note = self.select_profile(pod)
        weights = pod.weights
        if weights:
            unknown = sorted(set(weights) - set(table.metrics) - {"gpu_fragmentation"})
            if unknown:
                note = (note + "; " if note else "") + f"ignored unknown weights {unknown}"
                weights = {k: v for k, v in weights.items() if k not in unknown}
        compiled = self.compiled(profile, table.metrics, weights)
        rows = table.rows(names)
        load: Pending | None = None
        if pending and compiled.hotspot_cols is not None and len(self.ledger):
            cpu_col = compiled.hotspot_cols[0]
            known = rows >= 0
            sampled = np.full(len(rows), np.nan)
            sampled[known] = table.sampled_at[rows[known], cpu_col]
            # Candidate index of every table row, so the ledger can look its nodes up by name.
            position = np.full(len(table.names), -1, dtype=np.intp)
            position[rows[known]] = np.flatnonzero(known)
            index = table.index

            def position_of(node: str) -> int | None:
                row = index.get(node)
                return None if row is None else int(position[row])

            load = self.ledger.pending_rows(position_of, len(rows), sampled, now)
        cache = self.settings.cache
        ev = evaluate(pod, table, rows, compiled, now=now, max_staleness_s=cache.max_staleness_s,
                      missing_score=cache.missing_score, pending=load,
                      derived_terms=self.derived_terms)
        rejected = rejections(ev, names, compiled, self.settings, table.metrics)
        return Outcome(profile, names, ev, rejected, note)

    def record_placement(self, node: str, pod: PodDemand, now: float) -> None:
        """Count `pod` as load on `node` until the metrics show it."""
        self.ledger.record(node, pod, now)
