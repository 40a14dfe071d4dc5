"""The policy engine: picks the pod's profile, evaluates candidates, remembers placements.

This is what the webhook and the simulator call. It is pure apart from the placement ledger
(state, no I/O) and a cache of baselines, and takes the time as an argument.

Two paths give the same answers:
- `evaluate()` computes every term for every candidate (the reference; the simulator and the
  tests use it);
- `decide()`, the webhook's, reads each candidate's score and verdict from a baseline computed
  once per table, profile and GPU flag (valid until the next sample goes stale). Candidates with
  recent placements are read from the same baseline's cache of loaded rows, and evaluated again
  only when their pending load changed since (in a burst: the previous pod's node). Pending loads
  come from the ledger's running totals. A request then costs a handful of array operations
  whether it names 10 nodes or 5000, however many placements are pending. A profile whose
  only pod-specific part is derived terms (the `learned` profile) keeps the metric terms' sums
  in the baseline and adds the derived terms of the pod to them (`_derived_only`). A profile
  scoring with the pod's own load (`score_with_pod`) keeps the baseline's verdicts; its scores
  come from per-node sums kept with the baseline, completed per request with the CPU and memory
  terms (`scoring.WithPodScores`), not from a new evaluation.
"""

from __future__ import annotations

import functools
import itertools
import operator
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from extender.policies import fragmentation
from extender.policies.hotspot import Ledger, Pending
from extender.policies.learned import learned_term_for, uses_learned
from extender.policies.model import (
    EstimateDefaults,
    FloatArray,
    IntArray,
    NodeTable,
    PodDemand,
    estimate_load,
    name_ranks,
)
from extender.policies.scoring import (
    CompiledProfile,
    DerivedTerm,
    Evaluation,
    Rejection,
    WithPodScores,
    compile_profile,
    derived_goodness,
    evaluate,
    metric_sums,
    rejections,
    scores_with_derived,
)
from extender.settings import DERIVED_TERMS, LEARNED_TERM, Settings


@dataclass(frozen=True)
class Outcome:
    """One evaluated decision: the profile used, and per-candidate results."""

    profile: str
    names: Sequence[str]
    score_array: npt.NDArray[np.int64]
    rejected: Mapping[str, Rejection]
    note: str = ""
    """E.g. why an annotation was ignored."""
    context: Context | None = None
    """What the candidates were evaluated with (to explain any of them later)."""
    evaluation: Evaluation | None = None
    """Every term of every candidate (from `Engine.evaluate`; None from `Engine.decide`)."""
    rejected_mask: npt.NDArray[np.bool_] | None = None
    """True for candidates in `rejected` (derived from it when not given)."""
    derived: Mapping[str, FloatArray] | None = None
    """Derived term -> goodness per candidate, when `Engine.decide` computed them without a
    full evaluation (`evaluation` has them otherwise)."""

    def __post_init__(self) -> None:
        if self.rejected_mask is None:
            mask = np.zeros(len(self.names), bool)
            if self.rejected:
                mask[[i for i, name in enumerate(self.names) if name in self.rejected]] = True
            object.__setattr__(self, "rejected_mask", mask)

    def detail(self, indices: Sequence[int]) -> Evaluation:
        """The full evaluation of the candidates at `indices`, in that order."""
        if self.evaluation is not None:
            return self.evaluation.take(indices)
        assert self.context is not None
        return self.context.evaluate(indices)

    @property
    def passed(self) -> list[str]:
        if not self.rejected:
            return list(self.names)
        assert self.rejected_mask is not None
        return list(itertools.compress(self.names, (~self.rejected_mask).tolist()))

    @property
    def scores(self) -> list[int]:
        return self.score_array.tolist()  # type: ignore[no-any-return]

    def rejected_indices(self, k: int) -> list[int]:
        """Indices of the first `k` rejected candidates, in the order they were offered."""
        assert self.rejected_mask is not None
        return np.flatnonzero(self.rejected_mask)[:k].tolist()  # type: ignore[no-any-return]

    def ranking(self, k: int) -> list[int]:
        """Indices of the `k` best-scored candidates not rejected, best first; ties by name."""
        scores = self.score_array
        assert self.rejected_mask is not None
        candidates = np.flatnonzero(~self.rejected_mask)
        if candidates.size == 0 or k <= 0:
            return []
        values = scores[candidates]
        # Only candidates scoring at least the k-th best can be in the top k: sort just those.
        threshold = np.partition(values, -min(k, values.size))[-min(k, values.size)]
        top = candidates[values >= threshold]
        order = np.lexsort((self._name_ranks(top), -scores[top]))
        return top[order[:k]].tolist()  # type: ignore[no-any-return]

    def _name_ranks(self, indices: IntArray) -> IntArray:
        """Numbers that sort like the names of the candidates at `indices`."""
        if self.context is not None:
            rows = self.context.rows[indices]
            if rows.size and rows.min() >= 0:
                return self.context.table.name_ranks[rows]
        return name_ranks([self.names[i] for i in indices.tolist()])

    def best(self) -> str | None:
        """The highest-scoring node not rejected; ties go to the first name in sorted order."""
        top = self.ranking(1)
        return self.names[top[0]] if top else None


@dataclass(frozen=True, eq=False)
class Context:
    """The inputs of one evaluation: enough to evaluate any of its candidates again."""

    pod: PodDemand
    table: NodeTable
    rows: IntArray
    compiled: CompiledProfile
    now: float
    pending: Pending | None
    max_staleness_s: float
    missing_score: int
    derived_terms: Mapping[str, DerivedTerm]

    def evaluate(self, indices: Sequence[int]) -> Evaluation:
        """The full evaluation of the candidates at `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.intp)
        part = None if self.pending is None else Pending(self.pending.cpu_cores[idx],
                                                         self.pending.memory_bytes[idx])
        return evaluate(self.pod, self.table, self.rows[idx], self.compiled, now=self.now,
                        max_staleness_s=self.max_staleness_s, missing_score=self.missing_score,
                        pending=part, derived_terms=self.derived_terms)


def _derived_only(compiled: CompiledProfile) -> bool:
    """Whether only derived terms make the profile's answers depend on the pod (no filter rule
    on them, no `with_pod` rule, not `score_with_pod`): its verdicts and the metric terms' part
    of its scores then come from the baseline, and `decide` adds the derived terms per pod."""
    return (bool(compiled.derived) and not compiled.derived_rules
            and not compiled.checks.with_pod.any() and not compiled.score_with_pod)


class _Baseline:
    """Scores and verdicts of every table row for a pod without overrides (`template`), and of
    rows with pending load (`loaded`), valid for one table until a fresh sample goes stale.

    Row `len(table)` (index -1) holds the answer for candidates not in the table.
    """

    def __init__(self, table: NodeTable, compiled: CompiledProfile, template: PodDemand,
                 computed_at: float, valid_until: float, scores: npt.NDArray[np.int64],
                 verdicts: list[Rejection | None], with_pod: WithPodScores | None = None,
                 sums: FloatArray | None = None) -> None:
        self.table, self.compiled, self.template = table, compiled, template
        self.computed_at, self.valid_until = computed_at, valid_until
        self.scores = scores
        self.with_pod = with_pod
        """Scores with each pod's own load (`score_with_pod`), None when not or not exact."""
        self.verdicts = verdicts
        self.sums = sums
        """(2, rows + 1) the metric terms' sums (`metric_sums`) of a profile whose derived
        terms are added per pod (`_derived_only`); None for the others."""
        self.rejected_mask = np.fromiter(map(operator.is_not, verdicts, itertools.repeat(None)),
                                         bool, len(verdicts))
        # Rows with pending load: the load they were evaluated with (NaN: not yet), and the result.
        # Placements change one node at a time, so most calls find every loaded row here.
        n = len(verdicts)
        self._load_cpu = np.full(n, np.nan)
        self._load_mem = np.full(n, np.nan)
        self._loaded_scores = np.zeros(n, np.int64)
        self._loaded_sums = None if sums is None else np.zeros((2, n))
        self._loaded_mask = np.zeros(n, bool)
        self._loaded_verdicts: dict[int, Rejection] = {}
        self._lock = threading.Lock()

    def loaded(self, rows: IntArray, load: Pending,
               evaluate: Callable[[IntArray, Pending], tuple[Evaluation, list[Rejection | None]]],
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], dict[int, Rejection],
                          FloatArray | None]:
        """Scores and rejected flags of `rows` under `load`, the verdicts of the rejected by
        row, and their metric sums (when the baseline keeps them); rows whose load changed
        since they were last seen are evaluated again."""
        with self._lock:
            changed = np.flatnonzero((self._load_cpu[rows] != load.cpu_cores)
                                     | (self._load_mem[rows] != load.memory_bytes))
            if changed.size:
                again = rows[changed]
                part = Pending(load.cpu_cores[changed], load.memory_bytes[changed])
                ev, verdicts = evaluate(again, part)
                self._load_cpu[again] = part.cpu_cores
                self._load_mem[again] = part.memory_bytes
                self._loaded_scores[again] = ev.scores
                if self._loaded_sums is not None:
                    self._loaded_sums[:, again] = metric_sums(ev, self.compiled)
                for row, verdict in zip(again.tolist(), verdicts, strict=True):
                    self._loaded_mask[row] = verdict is not None
                    if verdict is None:
                        self._loaded_verdicts.pop(row, None)
                    else:
                        self._loaded_verdicts[row] = verdict
            mask = self._loaded_mask[rows]
            found = self._loaded_verdicts
            return (self._loaded_scores[rows], mask,
                    {row: found[row] for row in rows[mask].tolist()},
                    None if self._loaded_sums is None else self._loaded_sums[:, rows])


class Engine:
    """Evaluates pods against a NodeTable under the configured profiles."""

    def __init__(self, settings: Settings, *, derived_terms: Mapping[str, DerivedTerm] | None = None,
                 ledger: Ledger | None = None) -> None:
        self.settings = settings
        hot = settings.profile().hotspot
        # One ledger for every profile: it keeps placements for the longest window, and each
        # profile reads it with its own window and settle time.
        longest = max(p.hotspot.window_s for p in settings.policy.profiles.values())
        self.ledger = ledger or Ledger(max(longest, hot.window_s), hot.settle_s)
        # The one place the default is decided: the webhook and `extender nodes` take it, the
        # simulator passes the terms of its own trace's workload.
        self.derived_terms = dict(fragmentation.DERIVED_TERMS if derived_terms is None
                                  else derived_terms)
        if LEARNED_TERM not in self.derived_terms and uses_learned(settings):
            self.derived_terms[LEARNED_TERM] = learned_term_for(settings)
        self._compiled: dict[tuple[object, ...], CompiledProfile] = {}
        self._baselines: dict[tuple[str, bool], _Baseline] = {}

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

    def _resolve(self, pod: PodDemand, table: NodeTable) -> tuple[str, str, CompiledProfile,
                                                                  bool]:
        """Profile name, note, compiled profile, and whether the pod carries weight overrides."""
        profile, note = self.select_profile(pod)
        weights = pod.weights
        if weights:
            unknown = sorted(set(weights) - set(table.metrics) - DERIVED_TERMS)
            if unknown:
                note = (note + "; " if note else "") + f"ignored unknown weights {unknown}"
                weights = {k: v for k, v in weights.items() if k not in unknown}
        return profile, note, self.compiled(profile, table.metrics, weights), bool(weights)

    def _pending(self, table: NodeTable, rows: IntArray, compiled: CompiledProfile,
                 now: float) -> Pending | None:
        if compiled.hotspot_cols is None or not len(self.ledger):
            return None
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

        return self.ledger.pending_rows(position_of, len(rows), sampled, now,
                                        window_s=compiled.hotspot_window_s,
                                        settle_s=compiled.hotspot_settle_s)

    def _context(self, pod: PodDemand, table: NodeTable, rows: IntArray,
                 compiled: CompiledProfile, now: float, load: Pending | None, *,
                 derived: bool = True) -> Context:
        cache = self.settings.cache
        return Context(pod, table, rows, compiled, now, load, cache.max_staleness_s,
                       cache.missing_score, self.derived_terms if derived else {})

    def _evaluate_rows(self, pod: PodDemand, table: NodeTable, rows: IntArray,
                       compiled: CompiledProfile, now: float, load: Pending | None, *,
                       derived: bool = True) -> Evaluation:
        return self._context(pod, table, rows, compiled, now, load,
                             derived=derived).evaluate(range(len(rows)))

    def _verdicts(self, pod: PodDemand, table: NodeTable, compiled: CompiledProfile, now: float,
                  rows: IntArray, load: Pending) -> tuple[Evaluation, list[Rejection | None]]:
        """The evaluation and filter verdicts (None: passed) of table `rows` under `load`; the
        derived terms left out when they are added per pod (`_derived_only`)."""
        ev = self._evaluate_rows(pod, table, rows, compiled, now, load,
                                 derived=not _derived_only(compiled))
        names = [table.names[r] for r in rows.tolist()]
        found = rejections(ev, names, compiled, self.settings)
        return ev, [found.get(name) for name in names]

    def evaluate(self, pod: PodDemand, table: NodeTable, names: Sequence[str], now: float,
                 *, pending: bool = True) -> Outcome:
        """Filter verdicts and scores of `names` for `pod` at time `now`, every term computed."""
        profile, note, compiled, _ = self._resolve(pod, table)
        rows = table.rows(names)
        load = self._pending(table, rows, compiled, now) if pending else None
        context = self._context(pod, table, rows, compiled, now, load)
        ev = context.evaluate(range(len(rows)))
        rejected = rejections(ev, names, compiled, self.settings)
        return Outcome(profile, names, ev.scores, rejected, note, context=context, evaluation=ev)

    def decide(self, pod: PodDemand, table: NodeTable, names: Sequence[str], now: float) -> Outcome:
        """The same answer as `evaluate()`, from a cached per-table baseline (see the module doc)."""
        profile, note, compiled, overridden = self._resolve(pod, table)
        derived_only = _derived_only(compiled)
        if overridden or (compiled.per_pod and not compiled.per_pod_scores_only
                          and not derived_only):
            return self.evaluate(pod, table, names, now)  # pod-specific terms: no baseline
        base = self._baseline(table, profile, compiled, pod.wants_gpu, now)
        rows = table.rows(names)
        scores = base.scores[rows]
        mask = base.rejected_mask[rows]
        found: dict[int, Rejection] = {}  # verdicts of loaded rows, by row
        sums = None if base.sums is None else base.sums[:, rows]
        load = None
        if compiled.hotspot_cols is not None:
            load = self.ledger.pending_for(table, compiled.hotspot_cols[0], rows, now,
                                           window_s=compiled.hotspot_window_s,
                                           settle_s=compiled.hotspot_settle_s)
        if load is not None:
            loaded = np.flatnonzero((load.cpu_cores > 0) | (load.memory_bytes > 0))
            if loaded.size:
                # Nodes with recent placements: their values differ from the baseline's.
                scores[loaded], mask[loaded], found, loaded_sums = base.loaded(
                    rows[loaded], Pending(load.cpu_cores[loaded], load.memory_bytes[loaded]),
                    functools.partial(self._verdicts, base.template, table, compiled, now))
                if sums is not None and loaded_sums is not None:
                    sums[:, loaded] = loaded_sums
        if compiled.per_pod_scores_only:
            # Verdicts as the baseline has them (rules see the node without the pod); scores
            # with the pod's own requests: the baseline's per-node sums completed with the CPU
            # and memory terms, else one vectorised evaluation without any reason text.
            with_pod = None if base.with_pod is None else base.with_pod.scores(pod, rows, load)
            scores = (self._evaluate_rows(pod, table, rows, compiled, now, load).scores
                      if with_pod is None else with_pod)
        derived = None
        if sums is not None:
            # The metric terms as the baseline has them, the derived ones for this pod.
            derived, weights = derived_goodness(pod, table, rows, compiled, self.derived_terms)
            scores = scores_with_derived(sums[0], sums[1], derived, weights,
                                         self.settings.cache.missing_score)
        verdicts = base.verdicts
        rejected = {names[i]: found.get(row) or verdicts[row]
                    for i, row in zip(np.flatnonzero(mask).tolist(), rows[mask].tolist(),
                                      strict=True)}
        return Outcome(profile, names, scores, rejected, note,
                       context=self._context(pod, table, rows, compiled, now, load),
                       rejected_mask=mask, derived=derived)

    def _baseline(self, table: NodeTable, profile: str, compiled: CompiledProfile,
                  gpu: bool, now: float) -> _Baseline:
        key = (profile, gpu)
        cached = self._baselines.get(key)
        if (cached is not None and cached.table is table and cached.compiled is compiled
                and cached.computed_at <= now < cached.valid_until):
            return cached
        template = PodDemand(name="<baseline>", gpus=int(gpu), gpu_milli=1000 * int(gpu))
        # Every row, then -1 for the candidates not in the table (an empty name stands for them).
        rows = np.append(np.arange(len(table.names), dtype=np.intp), -1)
        derived_only = _derived_only(compiled)
        ev = self._evaluate_rows(template, table, rows, compiled, now, None,
                                 derived=not derived_only)
        names = (*table.names, "")
        found = rejections(ev, names, compiled, self.settings)
        # Filled from the (few) rejected rows: a pass over every name per table costs the
        # simulator, which builds a baseline per decision, about a tenth of its time.
        verdicts: list[Rejection | None] = [None] * len(names)
        index = table.index
        for name, verdict in found.items():
            verdicts[index[name] if name else len(table.names)] = verdict
        # Valid until the next fresh sample turns stale (then scores and verdicts may change).
        expiry = table.sampled_at + self.settings.cache.max_staleness_s
        upcoming = expiry[ev.fresh[:-1]]
        valid_until = float(upcoming.min()) if upcoming.size else float("inf")
        with_pod = WithPodScores.of(table, ev, compiled, self.settings.cache.missing_score)
        base = _Baseline(table, compiled, template, now, valid_until, ev.scores, verdicts,
                         with_pod, np.vstack(metric_sums(ev, compiled)) if derived_only else None)
        if len(self._baselines) > 64:
            self._baselines.clear()
        self._baselines[key] = base
        return base

    def record_placement(self, node: str, pod: PodDemand, now: float, *,
                         confirmed: bool = False) -> bool:
        """Count `pod` (its expected load) on `node` until the metrics show it; `confirmed` when
        the pod is known to be bound there. False when the ledger already knew better."""
        return self.ledger.record(node, pod, now, confirmed=confirmed)

    def estimate(self, pod: PodDemand, table: NodeTable) -> PodDemand:
        """`pod` with its expected load (requests, its siblings' measured use, the defaults)."""
        est = self.settings.estimate
        if not est.enabled:
            return pod
        return estimate_load(pod, table.owners, EstimateDefaults(est.default_cpu_cores,
                                                                 est.default_memory_bytes))
