"""The metrics-aware policy: threshold filters and a weighted, normalised score.

Formula (per candidate node i, per catalog metric j of the profile):

    v_ij  = value, plus the pending load of recent placements (see hotspot.py) for CPU and memory
    g_ij  = clip((v_ij - min_j) / (max_j - min_j), 0, 1), flipped (1 - g) when lower is better
    w_j   = the profile's weight (0 for GPU-only metrics when the pod asks for no GPU)
    score = round(10 * sum_j w_j g_ij / sum_j w_j)

Scores are proportional to the normalised values, never ranks (with 500 candidates a rank scale
collapses). A term whose value is missing or older than `max_staleness_s` is imputed by its
policy (`on_missing` of the catalog entry, default `cache.missing_data`): `worst` (g = 0),
`neutral` (the median of the table's fresh values), `reject` (g = 0 and the filter fails the
node). Weights are never renormalised over the terms a node happens to have, so a node whose
exporter is down never outranks an otherwise equal node that reports. A term that no node of the
table reports is dropped for all alike; a node with no fresh weighted term at all gets
`cache.missing_score`.

Derived terms (`gpu_fragmentation`) are computed from the table's allocation state, when present.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from extender.policies.hotspot import Pending
from extender.policies.model import FloatArray, IntArray, NodeTable, PodDemand
from extender.settings import DERIVED_TERMS, LEARNED_TERM, FilterRule, Profile, Settings

BoolArray = npt.NDArray[np.bool_]
MAX_SCORE = 10  # k8s.io/kube-scheduler/extender/v1 MaxExtenderPriority

DerivedTerm = Callable[[PodDemand, NodeTable, IntArray], FloatArray | None]
"""(pod, table, rows) -> goodness 0..1 per row, or None when it does not apply."""


@dataclass(frozen=True, eq=False)
class RuleChecks:
    """Filter rules as arrays, one entry per rule (in order) whose metric the table has, so that
    every rule is checked on every candidate in a few array operations."""

    rules: tuple[FilterRule, ...]
    columns: IntArray
    above: FloatArray
    """+inf where the rule has no upper limit."""
    below: FloatArray
    """-inf where the rule has no lower limit."""
    reject_missing: BoolArray
    """Whether a missing or stale value fails the rule."""
    units: tuple[str, ...]
    """The unit of each rule's metric, for the reason's text."""
    with_pod: BoolArray
    """Whether the rule checks the value with the pod's own requests added."""

    @classmethod
    def of(cls, rules: Sequence[FilterRule], column: Mapping[str, int],
           settings: Settings) -> RuleChecks:
        """The `rules` whose metric has a column in `column` (metric -> column)."""
        kept = [(rule, column[rule.metric]) for rule in rules if rule.metric in column]
        units = {entry.name: entry.unit for entry in settings.catalog}
        missing_data = settings.cache.missing_data
        return cls(
            rules=tuple(rule for rule, _ in kept),
            units=tuple(units.get(rule.metric, "") for rule, _ in kept),
            columns=np.array([j for _, j in kept], dtype=np.intp),
            above=np.array([np.inf if r.above is None else r.above for r, _ in kept]),
            below=np.array([-np.inf if r.below is None else r.below for r, _ in kept]),
            reject_missing=np.array([(r.on_missing or missing_data) == "reject" for r, _ in kept],
                                    dtype=bool),
            with_pod=np.array([r.with_pod for r, _ in kept], dtype=bool))


@dataclass(frozen=True, eq=False)
class CompiledProfile:
    """A profile resolved against a table's metric columns, ready for vectorised evaluation."""

    name: str
    metrics: tuple[str, ...]
    """The table's metric columns this profile was compiled against."""
    weights: FloatArray
    weights_without_gpu: FloatArray
    """`weights` with GPU-only metrics at 0, for pods that request no GPU."""
    gpu_only: BoolArray
    lower_is_better: FloatArray
    """1.0 where lower is better, else 0.0."""
    low: FloatArray
    span: FloatArray
    derived: Mapping[str, float]
    """Derived term -> weight, for the terms weighted or filtered on (weight 0: filter only)."""
    checks: RuleChecks
    """The filter rules whose metric the table has, as arrays."""
    derived_rules: tuple[FilterRule, ...]
    """The filter rules on derived terms, checked after `checks` (see `FilterRule`)."""
    hotspot_cols: tuple[int, int, int, int] | None
    """cpu, memory, cores, memory-total columns when hot-spot compensation is on."""
    hotspot_window_s: float
    """How long this profile counts a placement, and after how long a sample shows it."""
    hotspot_settle_s: float
    neutral: BoolArray
    """(m,) columns whose missing values take the table's median (else the worst value)."""
    reject_missing: BoolArray
    """(m,) weighted columns whose missing values also fail the filter."""
    notes: Mapping[str, str] = field(default_factory=dict)
    """Metric or derived term -> what its value is, when it is no plain reading (a risk
    aggregate and its parameters, a learned model), for explanations."""
    score_with_pod: bool = False
    """Score the CPU and memory terms with the pod's own requests added (`hotspot_cols` set)."""
    summed: tuple[int, ...] = ()
    """The weighted columns in the order the score adds them up: the hot-spot CPU and memory
    columns last (when set), so that a per-node sum of the others can be completed per pod
    (`WithPodScores`) with the same bits as the whole sum."""

    @property
    def per_pod(self) -> bool:
        """Whether results depend on the pod beyond its GPU flag (no shared baseline then)."""
        return bool(self.derived) or bool(self.checks.with_pod.any()) or self.score_with_pod

    @property
    def per_pod_scores_only(self) -> bool:
        """Whether only the scores depend on the pod (`score_with_pod` without pod-specific
        rules or terms): the verdicts can still come from a shared baseline."""
        return self.score_with_pod and not self.derived and not self.checks.with_pod.any()


def compile_profile(settings: Settings, name: str, profile: Profile, metrics: Sequence[str],
                    weights: Mapping[str, float] | None = None) -> CompiledProfile:
    """Resolve `profile` (with optional weight overrides) against the metric columns."""
    column = {metric: j for j, metric in enumerate(metrics)}
    merged = dict(profile.weights)
    if weights:
        merged.update(weights)
    m = len(metrics)
    w, gpu_only, lower = np.zeros(m), np.zeros(m, bool), np.zeros(m, bool)
    low, span = np.zeros(m), np.ones(m)
    neutral, reject = np.zeros(m, bool), np.zeros(m, bool)
    for entry in settings.catalog:
        j = column.get(entry.name)
        if j is None:
            continue
        policy = entry.on_missing or settings.cache.missing_data
        neutral[j], reject[j] = policy == "neutral", policy == "reject"
        low[j], span[j] = entry.range[0], entry.range[1] - entry.range[0]
        gpu_only[j] = entry.gpu_only
        lower[j] = entry.direction == "lower_is_better"
        if entry.direction != "info":
            w[j] = merged.get(entry.name, 0.0)
    derived_rules = tuple(rule for rule in profile.filters if rule.metric in DERIVED_TERMS)
    derived = {term: merged.get(term, 0.0) for term in DERIVED_TERMS
               if merged.get(term, 0.0) > 0 or any(r.metric == term for r in derived_rules)}
    hot = profile.hotspot
    hot_cols = None
    if hot.enabled:
        cols = tuple(column.get(n, -1) for n in
                     (hot.cpu_metric, hot.memory_metric, hot.cores_metric, hot.memory_total_metric))
        if min(cols) >= 0:
            hot_cols = (cols[0], cols[1], cols[2], cols[3])
    notes = {entry.name: entry.risk.describe() for entry in settings.catalog
             if entry.risk is not None and entry.name in column}
    if LEARNED_TERM in derived and settings.policy.learned_model:
        notes[LEARNED_TERM] = (f"learned model {Path(settings.policy.learned_model).name}: "
                               "1 - P(deadline miss) of this pod on the node, over the model's scale")
    score_with_pod = hot.score_with_pod and hot_cols is not None
    if score_with_pod:
        for metric in (hot.cpu_metric, hot.memory_metric):
            note = "with this pod's requests added (score_with_pod)"
            notes[metric] = f"{notes[metric]}; {note}" if metric in notes else note
    last = () if hot_cols is None else (hot_cols[0], hot_cols[1])
    summed = (*(j for j in np.flatnonzero(w > 0).tolist() if j not in last), *last)
    return CompiledProfile(name, tuple(metrics), w, np.where(gpu_only, 0.0, w), gpu_only,
                           lower.astype(float),
                           low, span, derived, RuleChecks.of(profile.filters, column, settings),
                           derived_rules, hot_cols, hot.window_s, hot.settle_s, neutral,
                           reject & (w > 0), notes, score_with_pod=score_with_pod, summed=summed)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Everything computed for one pod against its candidate rows (kept for explanations)."""

    rows: IntArray
    """Row of each candidate in the table, -1 for nodes the table does not know."""
    values: FloatArray
    """(k, m) values after hot-spot compensation (and with the pod's own requests when
    `own_included`)."""
    age_s: FloatArray
    """(k, m) seconds since the sample (NaN when none)."""
    fresh: BoolArray
    imputed: BoolArray
    """(k, m) weighted terms a node lacked, counted by their `on_missing` policy."""
    goodness: FloatArray
    weights: FloatArray
    """(m,) effective weights for this pod."""
    derived: Mapping[str, FloatArray]
    """Derived term -> goodness per candidate."""
    derived_weights: Mapping[str, float]
    scores: npt.NDArray[np.int64]
    pending: Pending | None
    own: FloatArray | None = None
    """(k, m) change the pod's own expected load would make to the values (hot-spot CPU and
    memory columns; zero elsewhere), for `with_pod` rules and `score_with_pod`; None when
    neither needs it."""
    own_included: bool = False
    """Whether `values` already include `own` (the profile scores with the pod): rules without
    `with_pod` then take it out again."""

    def take(self, indices: Sequence[int]) -> Evaluation:
        """The evaluation of the candidates at `indices` only, in that order."""
        i = np.asarray(indices, dtype=np.intp)
        pending = None if self.pending is None else Pending(self.pending.cpu_cores[i],
                                                            self.pending.memory_bytes[i])
        return Evaluation(self.rows[i], self.values[i], self.age_s[i], self.fresh[i],
                          self.imputed[i], self.goodness[i], self.weights,
                          {term: g[i] for term, g in self.derived.items()}, self.derived_weights,
                          self.scores[i], pending, None if self.own is None else self.own[i],
                          self.own_included)


def _shares(cpu_cores: float | FloatArray, memory_bytes: float | FloatArray, values: FloatArray,
            hotspot_cols: tuple[int, int, int, int]) -> tuple[FloatArray, FloatArray]:
    """CPU cores and memory bytes as shares of each row's cores and memory total (0 where those
    are unknown): the change a load makes to the CPU utilisation and available-memory ratio."""
    _, _, cores, total = hotspot_cols
    # np.divide(where=) instead of np.errstate: the context manager costs ~10 us a call.
    k = len(values)
    return (np.divide(cpu_cores, values[:, cores], out=np.zeros(k), where=values[:, cores] > 0),
            np.divide(memory_bytes, values[:, total], out=np.zeros(k), where=values[:, total] > 0))


def evaluate(pod: PodDemand, table: NodeTable, rows: IntArray, compiled: CompiledProfile, *,
             now: float, max_staleness_s: float, missing_score: int,
             pending: Pending | None = None,
             derived_terms: Mapping[str, DerivedTerm] | None = None,
             medians: FloatArray | None = None) -> Evaluation:
    """Compute values, freshness, goodness and the 0..10 score of each candidate row.

    `medians` (per metric) are what `neutral` imputes; default: the table's fresh medians. An
    explanation passes the medians of the table the decision was made on.
    """
    known = rows >= 0
    all_known = bool(known.all())
    if len(table.names):
        safe = rows if all_known else np.where(known, rows, 0)
        values = table.values[safe]
        sampled = table.sampled_at[safe]
    else:
        values = np.full((len(rows), len(table.metrics)), np.nan)
        sampled = values.copy()
    if not all_known:
        values[~known] = np.nan
        sampled[~known] = np.nan
    if pending is not None and compiled.hotspot_cols is not None and pending.any:
        cpu, mem, _, _ = compiled.hotspot_cols
        extra_cpu, extra_mem = _shares(pending.cpu_cores, pending.memory_bytes, values,
                                       compiled.hotspot_cols)
        values[:, cpu] += extra_cpu
        values[:, mem] -= extra_mem
    own = None
    if compiled.hotspot_cols is not None and (compiled.score_with_pod
                                              or compiled.checks.with_pod.any()):
        cpu, mem, _, _ = compiled.hotspot_cols
        own = np.zeros_like(values)
        own[:, cpu], own[:, mem] = _shares(pod.load_cpu_cores, pod.load_memory_bytes, values,
                                           compiled.hotspot_cols)
        own[:, mem] *= -1.0
        if compiled.score_with_pod:
            # What the node will look like with the pod: an idle node too small for it is no
            # longer as good as an idle node that fits it easily.
            values = values + own
    age = now - sampled
    fresh = ~np.isnan(values) & (age <= max_staleness_s)
    # |flip - g| is 1 - g where lower is better (flip = 1) and g elsewhere (flip = 0). Clipped
    # with the ufuncs: np.clip's Python wrapper costs more than the arithmetic on a few rows.
    scaled = (values - compiled.low) / compiled.span
    goodness = np.abs(compiled.lower_is_better - np.minimum(np.maximum(scaled, 0.0), 1.0))
    weights = compiled.weights if pod.wants_gpu else compiled.weights_without_gpu
    # A node lacking a weighted term, but not every one of them, has it imputed: the least
    # favourable goodness (0), or for `neutral` terms the goodness of the table's median.
    weighted = weights > 0
    has_any = np.asarray((fresh & weighted).any(axis=1), dtype=bool)
    imputed = ~fresh & weighted & has_any[:, None]
    if imputed.any():
        if medians is None:
            medians = table.fresh_medians(now, max_staleness_s)
        typical = np.abs(compiled.lower_is_better - np.minimum(np.maximum(
            (medians - compiled.low) / compiled.span, 0.0), 1.0))
        fill = np.where(compiled.neutral & ~np.isnan(typical), typical, 0.0)
        goodness = np.where(fresh, goodness, fill)
        # A term no node of the table reports (an exporter the cluster does not run, a dead
        # Prometheus) is dropped for every node alike: it cannot tell nodes apart.
        imputed &= ~np.isnan(typical)
    else:
        goodness = np.where(fresh, goodness, 0.0)  # NaN * 0 would still be NaN in the sums
    numerator, denominator = _metric_sums(fresh, imputed, weights, goodness, compiled.summed)
    derived, derived_weights = derived_goodness(pod, table, rows, compiled, derived_terms)
    scores = scores_with_derived(numerator, denominator, derived, derived_weights, missing_score)
    return Evaluation(rows, values, age, fresh, imputed, goodness, weights, derived,
                      derived_weights, scores, pending, own, compiled.score_with_pod)


def _metric_sums(fresh: BoolArray, imputed: BoolArray, weights: FloatArray, goodness: FloatArray,
                 summed: Sequence[int]) -> tuple[FloatArray, FloatArray]:
    counted = (fresh | imputed) * weights
    return row_sums(counted * goodness, summed), row_sums(counted, summed)


def metric_sums(ev: Evaluation, compiled: CompiledProfile) -> tuple[FloatArray, FloatArray]:
    """Per candidate of `ev` (evaluated with `compiled`), the weighted goodness sum and the
    weight sum of its metric terms: its score before the derived terms, as `evaluate` adds them
    up (`scores_with_derived` completes it)."""
    return _metric_sums(ev.fresh, ev.imputed, ev.weights, ev.goodness, compiled.summed)


def derived_goodness(pod: PodDemand, table: NodeTable, rows: IntArray, compiled: CompiledProfile,
                     derived_terms: Mapping[str, DerivedTerm] | None,
                     ) -> tuple[dict[str, FloatArray], dict[str, float]]:
    """The goodness of each derived term of `compiled` per candidate row (NaN for rows -1),
    and its weight; terms without a function, or whose function gives None, are left out."""
    known = rows >= 0
    derived: dict[str, FloatArray] = {}
    derived_weights: dict[str, float] = {}
    for term, weight in compiled.derived.items():
        fn = (derived_terms or {}).get(term)
        term_goodness = fn(pod, table, rows) if fn is not None else None
        if term_goodness is None:
            continue
        derived[term] = np.where(known, term_goodness, np.nan)
        derived_weights[term] = weight
    return derived, derived_weights


def scores_with_derived(numerator: FloatArray, denominator: FloatArray,
                        derived: Mapping[str, FloatArray], derived_weights: Mapping[str, float],
                        missing_score: int) -> npt.NDArray[np.int64]:
    """The 0..10 scores from the metric terms' sums (`metric_sums`) and the derived terms'
    goodness (NaN: the node lacks the term, which then does not count)."""
    largest = np.finfo(np.float64).max
    for term, term_goodness in derived.items():
        weight = derived_weights[term]
        ok = ~np.isnan(term_goodness)
        # np.nan_to_num's values where `ok` (infinities to the largest float), without its
        # Python wrapper (~15 us a call on the request path).
        bounded = np.minimum(np.maximum(term_goodness, -largest), largest)
        numerator = numerator + np.where(ok, weight * bounded, 0.0)
        denominator = denominator + np.where(ok, weight, 0.0)
    return _scores(numerator, denominator, missing_score)


def row_sums(a: FloatArray, columns: Sequence[int]) -> FloatArray:
    """The sum of `a`'s `columns` in each row, added left to right.

    Not `a.sum(axis=1)`: numpy pairs the terms as it likes, so a partial sum completed later
    could differ in the last bit; here the sum of the first columns plus the rest is the same
    float whichever rows `a` holds (what `WithPodScores` relies on)."""
    out = np.zeros(len(a))
    for j in columns:
        out += a[:, j]
    return out


def _scores(numerator: FloatArray, denominator: FloatArray,
            missing_score: int) -> npt.NDArray[np.int64]:
    """The 0..10 score of each row from its weighted goodness and weight sums."""
    scored = denominator > 0
    ratio = np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=scored)
    return np.where(scored, np.floor(MAX_SCORE * ratio + 0.5), missing_score).astype(np.int64)


@dataclass(frozen=True, eq=False)
class WithPodScores:
    """`evaluate`'s scores with the pod's own load added (`score_with_pod`), for any pod and
    pending load, from what does not depend on them, computed once for the rows of a table.

    Only the CPU and memory columns change when a pod (or a pending placement) is added, and
    only their values: freshness, imputation and the weights counted stay (shares of a known
    capacity are finite, so no value turns NaN). Per row this keeps the weighted goodness sum of
    the other columns (`CompiledProfile.summed` adds the two last, so the completed sum has the
    same bits as `evaluate`'s), the weight sum, and for the two columns the value, capacity,
    freshness, weight counted and the contribution when not fresh (imputed or none). A request
    then costs a gather and a few array operations over its candidates, none per term.
    """

    columns: FloatArray
    """(10, rows): the other columns' goodness sum, the weight sum, then pairs (CPU, memory)
    of: value (0 when not fresh), capacity (cores, memory total; inf when unknown: a share of
    it is 0, as in `_shares`), weight counted (0 when not fresh), contribution when not fresh
    (else 0)."""
    low: FloatArray
    """(2, 1) per column (CPU, memory), as in `CompiledProfile`."""
    span: FloatArray
    lower_is_better: FloatArray
    missing_score: int

    @classmethod
    def of(cls, table: NodeTable, ev: Evaluation, compiled: CompiledProfile,
           missing_score: int) -> WithPodScores | None:
        """From `ev`, `evaluate`'s answer for every row of `table` then -1 (not in it) with no
        pending load, for any pod of the same GPU flag; None when the profile does not score
        with the pod alone, or when a CPU or memory value is infinite (adding to it could give
        NaN)."""
        if not compiled.per_pod_scores_only or compiled.hotspot_cols is None:
            return None
        cpu, mem, cores, total = compiled.hotspot_cols
        if len({cpu, mem, cores, total}) < 4 or compiled.summed[-2:] != (cpu, mem):
            return None
        known = ev.rows >= 0
        raw = np.full((4, len(ev.rows)), np.nan)
        if len(table.names):
            raw[:, known] = table.values[ev.rows[known]][:, [cpu, mem, cores, total]].T
        if np.isinf(raw[:2]).any():
            return None
        every = (ev.fresh | ev.imputed) * ev.weights
        products = every * ev.goodness
        fresh = ev.fresh[:, [cpu, mem]].T
        # Where a value is not fresh its term is what `evaluate` imputed, whatever the load: the
        # weight is 0 there and the value a finite stand-in (0 x goodness adds exactly nothing),
        # so a request adds `counted x goodness + stale` with no mask.
        columns = np.vstack([
            row_sums(products, compiled.summed[:-2]),
            row_sums(every, compiled.summed),
            np.where(fresh, raw[:2], 0.0), np.where(raw[2:] > 0, raw[2:], np.inf),
            np.where(fresh, every[:, [cpu, mem]].T, 0.0),
            np.where(fresh, 0.0, products[:, [cpu, mem]].T)])
        pair = np.array([[cpu], [mem]])
        return cls(columns, compiled.low[pair], compiled.span[pair],
                   compiled.lower_is_better[pair], missing_score)

    def scores(self, pod: PodDemand, rows: IntArray,
               pending: Pending | None) -> npt.NDArray[np.int64] | None:
        """The scores `evaluate` gives `pod` at table `rows` (-1: not in the table) under
        `pending`; None when the pod's load is not finite (`evaluate` decides)."""
        sums = self.sums(pod, rows, pending)
        return None if sums is None else _scores(*sums, self.missing_score)

    def sums(self, pod: PodDemand, rows: IntArray,
             pending: Pending | None) -> tuple[FloatArray, FloatArray] | None:
        """The weighted goodness and weight sums behind `scores`, the same floats as
        `evaluate`'s."""
        load_cpu, load_mem = pod.load_cpu_cores, pod.load_memory_bytes
        if not (math.isfinite(load_cpu) and math.isfinite(load_mem)):
            return None
        at = np.take(self.columns, rows, axis=1)  # a copy, in C order (`columns[:, rows]` is not)
        cpu, mem, cores, total = at[2], at[3], at[4], at[5]
        # The additions of `evaluate`, in its order: pending load, then the pod's (memory
        # available goes down: x - a / b is `evaluate`'s x + -(a / b)).
        if pending is not None:
            cpu += pending.cpu_cores / cores
            mem -= pending.memory_bytes / total
        cpu += load_cpu / cores
        mem -= load_mem / total
        goodness = np.abs(self.lower_is_better - np.minimum(np.maximum(
            (at[2:4] - self.low) / self.span, 0.0), 1.0))
        terms = at[6:8] * goodness + at[8:10]
        return at[0] + terms[0] + terms[1], at[1]


def term_points(ev: Evaluation, metrics: Sequence[str]) -> tuple[tuple[str, ...], FloatArray]:
    """What each weighted term gave each candidate of `ev`, in points of the 0..10 score before
    rounding (a row sums to the unrounded score): `(term names, (k, terms) points)`.

    `metrics` are the columns of the table `ev` was computed on. Metric terms with a weight come
    first, in column order, then the derived terms. A term a node lacked counts what its
    `on_missing` policy imputed; a term dropped for all, or a node with no counted term at all
    (it got `missing_score`), gives 0."""
    counted = (ev.fresh | ev.imputed) * ev.weights
    weighted = np.flatnonzero(ev.weights > 0)
    numerators = [counted[:, weighted] * np.where(counted[:, weighted] > 0,
                                                  ev.goodness[:, weighted], 0.0)]
    denominator = counted.sum(axis=1)
    for term, weight in ev.derived_weights.items():
        goodness = ev.derived[term]
        ok = ~np.isnan(goodness)
        numerators.append(np.where(ok, weight * np.nan_to_num(goodness), 0.0)[:, None])
        denominator = denominator + np.where(ok, weight, 0.0)
    points = np.hstack(numerators) if numerators else np.zeros((len(ev.rows), 0))
    scale = np.divide(MAX_SCORE, denominator, out=np.zeros(len(ev.rows)), where=denominator > 0)
    names = (*(metrics[j] for j in weighted.tolist()), *ev.derived_weights)
    return names, points * scale[:, None]


@dataclass(frozen=True)
class Rejection:
    """Why a node failed the filter: a short code (metric label, `stale`, `missing`, `unknown`)
    for counters, and the sentence kube-scheduler shows in the pod's events."""

    code: str
    message: str


UNKNOWN_NODE = Rejection("unknown", "not in the metrics cache: no exporter series match this node "
                         "(see /api/v1/selfcheck)")


def format_value(value: float | None, unit: str) -> str:
    """A catalog value for people (filter reasons, the demo): `0.93, ratio` -> `93%`, bytes/s as
    MB/s, bytes as GiB, other units keep their name (`1.2e+03 W`); None is `n/a`."""
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value * 100:.0f}%"
    if unit == "bytes/s":
        return f"{value / 1e6:.1f} MB/s"
    if unit == "bytes":
        return f"{value / 2**30:.1f} GiB"
    if unit in ("", "bool", "count"):
        return f"{value:g}"
    return f"{value:.3g} {unit}"


def _reject_derived(rule: FilterRule, ev: Evaluation, names: Sequence[str],
                    out: dict[str, Rejection]) -> None:
    """Add the candidates failing `rule` (on a derived term) to `out`. The goodness is taken
    relative to the best candidate still passing, so that the metric rules cannot empty the
    band: when they reject the best nodes, the band follows the best of the rest."""
    goodness = ev.derived.get(rule.metric)
    if goodness is None:
        return
    alive = ~np.isnan(goodness)
    if out:
        alive &= np.fromiter((name not in out for name in names), bool, count=len(names))
    best = float(goodness[alive].max()) if alive.any() else 0.0
    if best <= 0:  # the term ranks no passing candidate: nothing to keep a band around
        return
    relative = goodness / best
    above = np.inf if rule.above is None else rule.above
    below = -np.inf if rule.below is None else rule.below
    label = rule.label or rule.metric
    failing = np.flatnonzero(alive & ((relative > above) | (relative < below))).tolist()
    if rule.reason:  # one verdict for all: the same text (frozen, so it can be shared)
        verdict = Rejection(label, rule.reason)
        out.update((names[i], verdict) for i in failing)
        return
    for i in failing:
        out[names[i]] = Rejection(label, (
            f"{label} {relative[i]:.2f} relative to the best node, limit "
            f"{rule.below if rule.below is not None else rule.above:g}"))


def _failures(checks: RuleChecks, ev: Evaluation) -> tuple[FloatArray, BoolArray, BoolArray]:
    """(k, rules) values checked, out-of-limit flags, and failures (incl. missing under reject)."""
    values, ok = ev.values[:, checks.columns], ev.fresh[:, checks.columns]
    if ev.own is not None:
        # Rules with `with_pod` see the pod's requests, the others the node without them.
        values = values + ev.own[:, checks.columns] * (checks.with_pod.astype(float)
                                                       - float(ev.own_included))
    # Comparisons with NaN are False and do not warn.
    bad = ok & ((values > checks.above) | (values < checks.below))
    failed = bad | (~ok & checks.reject_missing & (ev.rows >= 0)[:, None])
    return values, bad, failed


def _reason(checks: RuleChecks, r: int, i: int, values: FloatArray, bad: BoolArray,
            ev: Evaluation, max_staleness_s: float) -> Rejection:
    """Why candidate `i` fails rule `r` of `checks`."""
    rule, value = checks.rules[r], float(values[i, r])
    label = rule.label or rule.metric
    if bad[i, r] and rule.reason:
        return Rejection(label, rule.reason)
    if bad[i, r]:
        if rule.above is not None and value > rule.above:
            limit, op = rule.above, ">"
        else:
            limit, op = rule.below if rule.below is not None else 0.0, "<"
        unit = checks.units[r]
        mine = " with this pod" if rule.with_pod else ""
        return Rejection(label, f"{label} {format_value(value, unit)}{mine} {op} "
                         f"{format_value(limit, unit)}")
    # No age in the text: verdicts are cached until a sample goes stale, and the explanation
    # carries the exact age.
    if value != value or np.isnan(ev.age_s[i, checks.columns[r]]):
        return Rejection("missing", f"no {rule.metric} data")
    return Rejection("stale", f"{rule.metric} data older than {max_staleness_s:.0f}s")


def rejections(ev: Evaluation, names: Sequence[str], compiled: CompiledProfile,
               settings: Settings) -> dict[str, Rejection]:
    """The filter verdict for each candidate that fails, by node name (passing nodes absent)."""
    out: dict[str, Rejection] = {}
    cache = settings.cache
    if settings.server.unknown_nodes == "reject":
        for i in np.flatnonzero(ev.rows < 0).tolist():
            out[names[i]] = UNKNOWN_NODE
    checks = compiled.checks
    if checks.rules:
        values, bad, failed = _failures(checks, ev)
        for i in np.flatnonzero(failed.any(axis=1)).tolist():
            if names[i] not in out:
                r = int(failed[i].argmax())  # the first rule, in configuration order, that fails
                out[names[i]] = _reason(checks, r, i, values, bad, ev, cache.max_staleness_s)
    for rule in compiled.derived_rules:
        _reject_derived(rule, ev, names, out)
    lacking = ~ev.fresh & compiled.reject_missing & (ev.weights > 0)
    if lacking.any():
        for i in np.flatnonzero(lacking.any(axis=1) & (ev.rows >= 0)).tolist():
            if names[i] not in out:
                missing = list(itertools.compress(compiled.metrics, lacking[i].tolist()))
                out[names[i]] = Rejection("missing", f"no fresh data for {', '.join(missing)} "
                                                     f"(exporter down or series missing?)")
    return out
