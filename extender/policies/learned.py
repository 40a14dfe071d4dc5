"""The `learned` score term: a trained model's estimate that a pod placed on a node misses its
deadline, for every candidate node in one vectorised call.

The model file (written by `extender learn`, see `extender.learning`) is JSON: a format name and
version, the feature list, a summary of the training data, the training and test metrics, and
the model itself as LightGBM's own text format. Loading it never runs code from the file (no
pickle): msgspec decodes the JSON and LightGBM parses its text model. LightGBM's parser is not
hardened against hostile input, so load model files from a trusted source only (the same trust
as the settings file that names it).

Features are named by where they come from, so that the engine can tell whether it can provide
them (`provided_features`) and refuse a model it cannot feed:
- `node.<catalog metric>`: the table's value (NaN when missing or older than max_staleness_s);
- `pod.cpu_cores`, `pod.memory_bytes`, `pod.gpus`, `pod.gpu_milli`: the pod's demand;
- `alloc.*`: request-based allocation of the node (kube-state-metrics, or the simulator's);
- `fit.*`: the node as it would be with this pod (utilisation and free requests after placing).
Training (`extender.learning`) builds its feature rows with `FeatureSet.matrix` too, so training
and serving cannot compute a feature differently.

The goodness is 1 - P(miss) / goodness_scale, clipped to 0..1, with the scale from the model
file (the 99th percentile of the training predictions): misses are rare, so 1 - P(miss) alone
would give nearly every node the top score; scaled, a node with half the riskiest nodes' miss
probability scores five points (of ten) less than a risk-free one.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from extender.errors import ConfigError
from extender.policies.model import ALLOCATION_METRICS, FloatArray, IntArray, NodeTable, PodDemand
from extender.settings import LEARNED_TERM, Profile, Settings

FORMAT = "extract-extender/learned-model"
FORMAT_VERSION = 1
LABEL = "deadline_miss"

POD_FEATURES = ("pod.cpu_cores", "pod.memory_bytes", "pod.gpus", "pod.gpu_milli")
ALLOCATION_FEATURES = ("alloc.cpu_free_cores", "alloc.memory_free_bytes", "alloc.gpus_free",
                       "alloc.gpu_idle_share")
FIT_NEEDS: dict[str, tuple[tuple[str, ...], bool]] = {
    # feature: (catalog metrics it needs, whether it needs allocation state)
    "fit.cpu_utilisation_after": (("cpu_utilisation", "cpu_cores"), False),
    "fit.memory_available_after": (("memory_available_ratio", "memory_total_bytes"), False),
    "fit.cpu_free_after_cores": ((), True),
}
"""The `fit.*` features: what the node would show with the pod's requests added."""
FIT_FEATURES = tuple(FIT_NEEDS)


class ModelError(ConfigError):
    """A model file that cannot be used: unreadable, not a model file, unknown version, or
    features the engine cannot provide."""


# --- the file ---------------------------------------------------------------------------------


class TrainingData(msgspec.Struct, frozen=True, kw_only=True):
    """What the model was trained on."""

    source: str
    """`replay` (the simulator) or `monitoring` (a live cluster's history)."""
    description: str
    samples: int
    positives: int
    """Samples labelled as a deadline miss."""
    split: str
    """How training and test samples were separated (by time)."""


class SplitMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """The model's quality on one part of the data."""

    name: str
    samples: int
    positives: int
    auc: float | None
    """Area under the ROC curve (None when the part has a single class)."""
    logloss: float
    base_rate_logloss: float
    """Log loss of always predicting the part's own miss rate: the model should be below."""


class ModelFile(msgspec.Struct, frozen=True, kw_only=True):
    """The versioned model file."""

    format: str = FORMAT
    version: int = FORMAT_VERSION
    created: str
    library: str
    label: str = LABEL
    features: tuple[str, ...]
    training: TrainingData
    evaluation: tuple[SplitMetrics, ...]
    goodness_scale: float = 1.0
    """P(miss) at which the goodness reaches 0 (the training predictions' 99th percentile):
    misses are rare, so 1 - P(miss) alone would put nearly every node at the top score."""
    model_sha256: str
    """Checksum of `model`: LightGBM aborts the whole process on some damaged model texts, so
    a damaged file must be caught before it gets there."""
    model: str
    """The LightGBM model in its own text format."""


class _Header(msgspec.Struct):
    format: str = ""
    version: int = 0


# --- features ---------------------------------------------------------------------------------


def provided_features(metrics: Collection[str], allocation: bool) -> frozenset[str]:
    """Every feature an engine over these catalog metrics (and allocation state) can provide."""
    out = {f"node.{m}" for m in metrics} | set(POD_FEATURES)
    if allocation:
        out.update(ALLOCATION_FEATURES)
    for name, (needs, needs_alloc) in FIT_NEEDS.items():
        if all(m in metrics for m in needs) and (allocation or not needs_alloc):
            out.add(name)
    return frozenset(out)


def check_features(features: Sequence[str], provided: Collection[str], source: str) -> None:
    """ModelError naming the features of a model that the engine cannot provide."""
    missing = [f for f in features if f not in provided]
    if missing:
        raise ModelError(f"{source}: the model needs features the engine cannot provide: "
                         f"{', '.join(missing)} (known: the catalog's metrics as node.<name>, "
                         f"{', '.join(POD_FEATURES + ALLOCATION_FEATURES + FIT_FEATURES)})")
    if not features:
        raise ModelError(f"{source}: the model has no features")


@dataclass(frozen=True, eq=False)
class NodeColumns:
    """The part of a feature matrix that does not depend on the pod, for some table rows: the
    `node.*` and `alloc.*` columns in place (the `pod.*` and `fit.*` ones still to fill), and
    the values the `fit.*` columns add the pod to. A table's never change (tables are immutable),
    so the term computes them once per table and takes rows from them per request."""

    x: FloatArray
    """(rows, features)."""
    fit_inputs: FloatArray
    """(rows, len(FIT_INPUTS))."""

    def take(self, idx: IntArray) -> NodeColumns:
        """The rows at `idx` (copies: `FeatureSet.with_pod` fills them in place)."""
        return NodeColumns(self.x[idx], self.fit_inputs[idx])


FIT_INPUTS = ("cpu_utilisation", "cpu_cores", "memory_available_ratio", "memory_total_bytes",
              "alloc.cpu")
"""What the `fit.*` features add the pod's requests to: catalog metrics, and `alloc.cpu` (the
node's free CPU requests in cores)."""


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """How to compute a model's feature columns from a table, the candidate rows and a pod."""

    names: tuple[str, ...]
    max_staleness_s: float

    @functools.cached_property
    def _metrics(self) -> tuple[str, ...]:
        """The catalog metrics the features read (directly or for `fit.*`)."""
        needed = [n[5:] for n in self.names if n.startswith("node.")]
        needed += [m for n in self.names for m in FIT_NEEDS.get(n, ((), False))[0]]
        return tuple(dict.fromkeys(needed))

    @functools.cached_property
    def _pod_columns(self) -> tuple[IntArray, tuple[str, ...]]:
        """The `pod.*` columns and their names."""
        found = [(c, name) for c, name in enumerate(self.names) if name in POD_FEATURES]
        return np.array([c for c, _ in found], dtype=np.intp), tuple(n for _, n in found)

    def matrix(self, pod: PodDemand, table: NodeTable, rows: IntArray) -> FloatArray:
        """(len(rows), features) values; NaN where a value is unknown (rows -1 included)."""
        return self.with_pod(pod, self.node_columns(table, rows))

    def node_columns(self, table: NodeTable, rows: IntArray) -> NodeColumns:
        """What `matrix` computes from the table alone, for `rows` (-1: unknown, all NaN)."""
        k = len(rows)
        known = rows >= 0
        safe = np.where(known, rows, 0) if len(table.names) else np.zeros(k, np.intp)
        alloc = table.allocation if len(table.names) else None
        # Every metric column needed, in one gather and one staleness check (per-column work
        # costs ~10 us a column at 500 rows, the budget of the whole term is 200 us).
        wanted = [m for m in self._metrics if m in table.column and len(table.names)]
        cols = np.array([table.column[m] for m in wanted], dtype=np.intp)
        grid = np.ix_(safe, cols)
        fresh = (table.built_at - table.sampled_at[grid] <= self.max_staleness_s) & known[:, None]
        gathered = np.where(fresh, table.values[grid], np.nan)
        cache = {m: gathered[:, c] for c, m in enumerate(wanted)}
        absent = np.full(k, np.nan)

        def allocation(name: str) -> FloatArray:
            if alloc is None:
                return absent
            if name == "alloc.cpu":
                return np.where(known, alloc.cpu_free_milli[safe] / 1000.0, np.nan)
            if name == "alloc.memory_free_bytes":
                return np.where(known, alloc.memory_free_mib[safe] * 2.0**20, np.nan)
            gpu = alloc.gpu_free_milli[safe]
            slots = gpu >= 0
            if name == "alloc.gpus_free":
                return np.where(known, (gpu >= 1000).sum(axis=1).astype(float), np.nan)
            count = slots.sum(axis=1)
            idle = np.where(slots, gpu, 0.0).sum(axis=1)
            share = np.divide(idle, count * 1000.0, out=np.zeros(k), where=count > 0)
            return np.where(known, share, np.nan)

        def node(name: str) -> FloatArray:
            if name.startswith("node."):
                return cache.get(name[5:], absent)
            return allocation("alloc.cpu" if name == "alloc.cpu_free_cores" else name)

        x = np.zeros((k, len(self.names)))
        for c, name in enumerate(self.names):
            if name.startswith(("node.", "alloc.")):
                x[:, c] = node(name)
            elif name not in POD_FEATURES and name not in FIT_NEEDS:
                # load_model refuses such models; a FeatureSet built by hand may not
                raise KeyError(f"unknown feature {name!r}")
        fit_inputs = np.empty((k, len(FIT_INPUTS)))
        for c, name in enumerate(FIT_INPUTS):
            fit_inputs[:, c] = allocation(name) if name == "alloc.cpu" else cache.get(name, absent)
        return NodeColumns(x, fit_inputs)

    def with_pod(self, pod: PodDemand, columns: NodeColumns) -> FloatArray:
        """The feature matrix: `columns.x` with the pod's columns filled in (in place)."""
        x = columns.x
        k = len(x)
        util, cores, available, total, cpu_free = columns.fit_inputs.T
        pod_cols, pod_names = self._pod_columns
        if len(pod_cols):
            values = {"pod.cpu_cores": pod.cpu_cores, "pod.memory_bytes": pod.memory_bytes,
                      "pod.gpus": float(pod.gpus), "pod.gpu_milli": float(pod.gpu_milli)}
            x[:, pod_cols] = np.array([values[n] for n in pod_names])
        for c, name in enumerate(self.names):
            if name == "fit.cpu_utilisation_after":
                x[:, c] = util + np.divide(pod.cpu_cores, cores, out=np.full(k, np.nan),
                                           where=cores > 0)
            elif name == "fit.memory_available_after":
                x[:, c] = available - np.divide(pod.memory_bytes, total, out=np.full(k, np.nan),
                                                where=total > 0)
            elif name == "fit.cpu_free_after_cores":
                x[:, c] = cpu_free - pod.cpu_cores
        return x


# --- loading and the term -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LearnedModel:
    """A loaded model file: its header and the LightGBM booster."""

    path: str
    file: ModelFile
    booster: Any
    """lightgbm.Booster (untyped library)."""

    @property
    def features(self) -> tuple[str, ...]:
        return self.file.features

    def predict(self, x: FloatArray) -> FloatArray:
        """P(deadline miss) per row of `x`, in one call; one thread, so that a request never
        waits for an OpenMP team on a busy machine."""
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)

    def describe(self) -> str:
        """One line for explanations: which model, trained on what."""
        t = self.file.training
        return (f"learned model {Path(self.path).name} (format {self.file.version}, "
                f"{self.file.created}): 1 - P(deadline miss) / {self.file.goodness_scale:.3g} from "
                f"{len(self.features)} "
                f"features, trained on {t.samples} {t.source} samples")


def read_model(path: str | Path) -> LearnedModel:
    """Load and check a model file; ModelError with the path and the reason."""
    import lightgbm

    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ModelError(f"{where}: cannot read the model file: {exc.strerror or exc}") from exc
    try:
        header = msgspec.json.decode(raw, type=_Header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(f"{where}: not a model file (expected JSON from `extender learn`): "
                         f"{exc}") from exc
    if header.format != FORMAT:
        raise ModelError(f"{where}: not a model file: format {header.format!r}, expected "
                         f"{FORMAT!r}")
    if header.version != FORMAT_VERSION:
        raise ModelError(f"{where}: model format version {header.version} is not supported "
                         f"(this extender reads version {FORMAT_VERSION}; retrain with "
                         "`extender learn`)")
    try:
        file = msgspec.json.decode(raw, type=ModelFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(f"{where}: corrupt model file: {exc}") from exc
    if file.label != LABEL:
        raise ModelError(f"{where}: the model predicts {file.label!r}, expected {LABEL!r}")
    unknown = [f for f in file.features if f not in POD_FEATURES + ALLOCATION_FEATURES
               + FIT_FEATURES and not f.startswith("node.")]
    if unknown:
        raise ModelError(f"{where}: unknown features {', '.join(unknown)}")
    if hashlib.sha256(file.model.encode()).hexdigest() != file.model_sha256:
        raise ModelError(f"{where}: corrupt model file: the model text does not match its "
                         "checksum (model_sha256)")
    try:
        booster = lightgbm.Booster(model_str=file.model)
    except lightgbm.basic.LightGBMError as exc:
        raise ModelError(f"{where}: corrupt model: LightGBM cannot parse it: {exc}") from exc
    if not 0 < file.goodness_scale <= 1:
        raise ModelError(f"{where}: corrupt model file: goodness_scale {file.goodness_scale} "
                         "is not in (0, 1]")
    if tuple(booster.feature_name()) != file.features:
        raise ModelError(f"{where}: corrupt model file: the model's features "
                         f"{booster.feature_name()} differ from the file's {list(file.features)}")
    return LearnedModel(where, file, booster)


_loaded: dict[tuple[str, int], LearnedModel] = {}
_lock = threading.Lock()


def load_model(path: str | Path, provided: Collection[str]) -> LearnedModel:
    """`read_model`, then refuse a model needing features outside `provided`. Loads are cached
    by path and modification time (every engine of a process shares one booster)."""
    where = str(path)
    try:
        key = (os.path.abspath(where), os.stat(where).st_mtime_ns)
    except OSError as exc:
        raise ModelError(f"{where}: cannot read the model file: {exc.strerror or exc}") from exc
    with _lock:
        model = _loaded.get(key)
        if model is None:
            model = _loaded[key] = read_model(where)
    check_features(model.features, provided, where)
    return model


SHAPES_PER_TABLE = 64
"""Pod shapes whose predictions the term keeps per table (least recently used dropped first):
pods of one Job or ReplicaSet share their requests, so a burst of them is one shape. At most
64 x 9 bytes per node (5000 nodes: 2.9 MB per worker)."""


def _shape(pod: PodDemand) -> tuple[float, float, int, int]:
    """What the pod's features are made of (`pod.*` and the `fit.*` additions)."""
    return (pod.cpu_cores, pod.memory_bytes, pod.gpus, pod.gpu_milli)


@dataclass(eq=False)
class _Predictions:
    """P(miss) of one pod shape on the rows of one table, filled in as rows are asked for."""

    p: FloatArray
    done: npt.NDArray[np.bool_]


@dataclass(eq=False)
class _TableCache:
    """What the term keeps about the table it last saw: the node columns of the rows asked for
    so far (`have`), and the predictions per pod shape."""

    table: NodeTable
    columns: NodeColumns
    have: npt.NDArray[np.bool_]
    shapes: collections.OrderedDict[tuple[float, float, int, int], _Predictions] = field(
        default_factory=collections.OrderedDict)

    @classmethod
    def of(cls, table: NodeTable, features: int) -> _TableCache:
        n = len(table.names)
        return cls(table, NodeColumns(np.empty((n, features)), np.empty((n, len(FIT_INPUTS)))),
                   np.zeros(n, bool))


class LearnedTerm:
    """The `learned` derived term over a model: 1 - P(miss) / scale per candidate row, NaN for
    rows the table does not know; one model call per evaluation at most, whatever the number of
    rows.

    The model's answer for a node depends only on the table (immutable, swapped whole on a
    refresh) and the pod's shape (`_shape`). So the term keeps, for the table it last saw, the
    pod-independent feature columns of the rows asked for and the predictions made so far per
    shape, and asks the model only about rows it has not answered for this shape yet: in a
    burst of pods of one Job the first request pays the model call, the others a gather. Every
    cost stays proportional to the candidates (a table seen once, as in the simulator, costs
    what it did without a cache). A new table starts over.
    """

    def __init__(self, model: LearnedModel, max_staleness_s: float,
                 shapes: int = SHAPES_PER_TABLE) -> None:
        self.model = model
        self.features = FeatureSet(model.features, max_staleness_s)
        self.scale = model.file.goodness_scale
        self.shapes = shapes
        self._cache: _TableCache | None = None
        self._lock = threading.Lock()

    def _predictions(self, table: NodeTable, pod: PodDemand) -> tuple[_TableCache, _Predictions]:
        key = _shape(pod)
        with self._lock:
            cache = self._cache
            if cache is None or cache.table is not table:
                cache = self._cache = _TableCache.of(table, len(self.features.names))
            found = cache.shapes.get(key)
            if found is None:
                n = len(table.names)
                found = cache.shapes[key] = _Predictions(np.zeros(n), np.zeros(n, bool))
                if len(cache.shapes) > self.shapes:
                    cache.shapes.popitem(last=False)
            else:
                cache.shapes.move_to_end(key)
        return cache, found

    def _columns(self, cache: _TableCache, todo: IntArray) -> NodeColumns:
        """The node columns of table rows `todo`, computed for the rows not seen before."""
        lacking = todo[~cache.have[todo]]
        if not lacking.size:
            return cache.columns.take(todo)
        computed = self.features.node_columns(cache.table, lacking)
        # Values first, then the flags: a concurrent call never reads an unset row.
        cache.columns.x[lacking] = computed.x
        cache.columns.fit_inputs[lacking] = computed.fit_inputs
        cache.have[lacking] = True
        return computed if lacking.size == todo.size else cache.columns.take(todo)

    def __call__(self, pod: PodDemand, table: NodeTable, rows: IntArray) -> FloatArray | None:
        if not len(rows):
            return np.zeros(0)
        if not len(table.names):
            return np.full(len(rows), np.nan)
        cache, found = self._predictions(table, pod)
        all_known = bool(rows.min() >= 0)
        safe = rows if all_known else np.where(rows >= 0, rows, 0)
        need = ~found.done[safe]
        if not all_known:
            need &= rows >= 0
        if need.any():
            todo = safe[need]
            x = self.features.with_pod(pod, self._columns(cache, todo))
            # Predictions first, then the flags: a concurrent call never reads an unset value.
            found.p[todo] = self.model.predict(x)
            found.done[todo] = True
        goodness = np.maximum(1.0 - found.p[safe] / self.scale, 0.0)
        return goodness if all_known else np.where(rows >= 0, goodness, np.nan)


def profile_uses_learned(profile: Profile) -> bool:
    """Whether `profile` weights or filters on the `learned` term."""
    return LEARNED_TERM in profile.weights or any(r.metric == LEARNED_TERM
                                                  for r in profile.filters)


def uses_learned(settings: Settings) -> bool:
    """Whether a profile of `settings` uses the `learned` term."""
    return any(map(profile_uses_learned, settings.policy.profiles.values()))


def learned_term_for(settings: Settings) -> LearnedTerm:
    """The `learned` term of `settings.policy.learned_model`, checked against what an engine
    over the settings' catalog can provide; ModelError when the file cannot be used."""
    path = settings.policy.learned_model
    if path is None:
        raise ModelError(f"{settings.source}: policy.learned_model: not set")
    metrics = [entry.name for entry in settings.catalog]
    provided = provided_features(metrics, all(m in metrics for m in ALLOCATION_METRICS))
    return LearnedTerm(load_model(path, provided), settings.cache.max_staleness_s)
