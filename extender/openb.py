"""The OpenB trace reader: node and pod lists into columnar arrays (the simulator's and the demo's).

Design decision: a trace is a handful of numpy columns, not a list of objects: every experiment
then resamples, sorts and sums with array operations. Files with fewer columns are accepted (the
trace's own `openb_pod_list_multigpu50.csv` has no `gpu_spec`, `qos` or times): optional columns
take documented defaults, and `Pods.has_times` says whether a replay is possible. A missing required
column or a bad value is a `TraceError` naming the file, the line and the column. Two readings are
lenient, because other exports of the same cluster data write them so: a GPU task with an empty or
zero `gpu_milli` uses whole GPUs, and a QoS class the usage model does not know is modelled as
`DEFAULT_QOS` (with one warning per file naming the classes).
"""

from __future__ import annotations

import collections
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from extender.errors import ExtenderError

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

log = logging.getLogger(__name__)

MILLI = 1000
"""GPU share of a whole GPU, as the GPU-share device plugin counts it."""

NODE_REQUIRED = ("sn", "cpu_milli", "memory_mib", "gpu")
POD_REQUIRED = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
QOS_CLASSES = ("LS", "BE", "Burstable", "Guaranteed")
DEFAULT_QOS = "LS"
"""The trace's most common class; used when the file has no `qos` column or an unknown class."""


class TraceError(ExtenderError):
    """A node or pod list cannot be read (file, line, column, reason)."""


@dataclass(frozen=True, eq=False)
class Nodes:
    """One row per node. `model` is an index into `models` (-1 for a node without GPUs)."""

    names: tuple[str, ...]
    cpu_milli: I64
    memory_mib: I64
    gpus: I64
    model: I64
    models: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def max_gpus(self) -> int:
        return int(self.gpus.max()) if len(self.names) else 0

    def select(self, mask: npt.NDArray[np.bool_]) -> Nodes:
        """The nodes where `mask` is true, in order."""
        idx = np.flatnonzero(mask)
        return Nodes(tuple(self.names[i] for i in idx), self.cpu_milli[idx], self.memory_mib[idx],
                     self.gpus[idx], self.model[idx], self.models)


@dataclass(frozen=True, eq=False)
class Pods:
    """One row per task. `gpu_milli` is per GPU (1000 for whole GPUs, less for a share of one GPU);
    `spec` lists the allowed GPU models (empty: any). Times are seconds, NaN when unknown."""

    names: tuple[str, ...]
    cpu_milli: I64
    memory_mib: I64
    num_gpu: I64
    gpu_milli: I64
    spec: tuple[tuple[str, ...], ...]
    qos: tuple[str, ...]
    creation: F64
    deletion: F64

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_times(self) -> bool:
        return bool(len(self.names)) and not bool(np.isnan(self.creation).any()
                                                  or np.isnan(self.deletion).any())

    @property
    def total_gpu_milli(self) -> I64:
        return self.num_gpu * self.gpu_milli

    def take(self, idx: npt.NDArray[np.intp]) -> Pods:
        """The rows `idx` (repeats allowed), in that order."""
        return Pods(tuple(self.names[i] for i in idx), self.cpu_milli[idx], self.memory_mib[idx],
                    self.num_gpu[idx], self.gpu_milli[idx], tuple(self.spec[i] for i in idx),
                    tuple(self.qos[i] for i in idx), self.creation[idx], self.deletion[idx])


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        # utf-8-sig: spreadsheet exports start with a byte-order mark, which would glue itself
        # to the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = columns
            missing = [c for c in required if c not in columns]
            if missing:
                raise TraceError(f"{path}: missing column(s) {', '.join(missing)} "
                                 f"(has: {', '.join(columns) or 'none'})")
            return list(reader)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _int(path: Path, line: int, column: str, text: str | None, default: int | None = None) -> int:
    if (text is None or text == "") and default is not None:
        return default
    try:
        value = int(float(text or ""))
    except ValueError:
        raise TraceError(f"{path}:{line}: {column}: expected a number, got {text!r}") from None
    if value < 0:
        raise TraceError(f"{path}:{line}: {column}: expected a number >= 0, got {value}")
    return value


def _time(path: Path, line: int, column: str, text: str | None) -> float:
    if text is None or text == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise TraceError(f"{path}:{line}: {column}: expected seconds, got {text!r}") from None


def load_nodes(path: Path | str) -> Nodes:
    """Read a node list (`sn, cpu_milli, memory_mib, gpu[, model]`); a GPU node without a model
    has the model `unknown`. Names must be unique and non-empty."""
    path = Path(path)
    rows = _rows(path, NODE_REQUIRED)
    if not rows:
        raise TraceError(f"{path}: no nodes")
    models: dict[str, int] = {}
    cpu, mem, gpus, model = [], [], [], []
    for line, row in enumerate(rows, start=2):
        cpu.append(_int(path, line, "cpu_milli", row["cpu_milli"]))
        mem.append(_int(path, line, "memory_mib", row["memory_mib"]))
        count = _int(path, line, "gpu", row["gpu"])
        gpus.append(count)
        name = (row.get("model") or "").strip()
        if count and not name:
            name = "unknown"
        model.append(models.setdefault(name, len(models)) if count else -1)
    names = tuple((r.get("sn") or "").strip() for r in rows)
    for line, name in enumerate(names, start=2):
        if not name:
            raise TraceError(f"{path}:{line}: sn: empty node name")
    if len(set(names)) != len(names):
        seen: collections.Counter[str] = collections.Counter(names)
        dupes = sorted(name for name, count in seen.items() if count > 1)
        raise TraceError(f"{path}: duplicate node names {', '.join(dupes[:5])}")
    return Nodes(names, np.array(cpu, np.int64), np.array(mem, np.int64),
                 np.array(gpus, np.int64), np.array(model, np.int64), tuple(models))


def load_pods(path: Path | str) -> Pods:
    """Read a pod list; `gpu_spec`, `qos`, `creation_time` and `deletion_time` are optional."""
    path = Path(path)
    rows = _rows(path, POD_REQUIRED)
    if not rows:
        raise TraceError(f"{path}: no pods")
    cpu, mem, num, milli, spec, qos, created, deleted = [], [], [], [], [], [], [], []
    unknown: collections.Counter[str] = collections.Counter()
    for line, row in enumerate(rows, start=2):
        cpu.append(_int(path, line, "cpu_milli", row["cpu_milli"]))
        mem.append(_int(path, line, "memory_mib", row["memory_mib"]))
        n = _int(path, line, "num_gpu", row["num_gpu"])
        m = _int(path, line, "gpu_milli", row["gpu_milli"], default=0)
        if n and m == 0:
            m = MILLI
        if n and not 0 < m <= MILLI:
            raise TraceError(f"{path}:{line}: gpu_milli: expected 1..{MILLI} for a GPU task, got {m}")
        if n > 1 and m != MILLI:
            raise TraceError(f"{path}:{line}: gpu_milli: a task with num_gpu > 1 must use whole "
                             f"GPUs ({MILLI}), got {m}")
        num.append(n)
        milli.append(m if n else 0)
        spec.append(tuple(s for s in (row.get("gpu_spec") or "").split("|") if s))
        q = (row.get("qos") or "").strip() or DEFAULT_QOS
        if q not in QOS_CLASSES:
            unknown[q] += 1
            q = DEFAULT_QOS
        qos.append(q)
        created.append(_time(path, line, "creation_time", row.get("creation_time")))
        deleted.append(_time(path, line, "deletion_time", row.get("deletion_time")))
    if unknown:
        log.warning("%s: QoS class(es) %s not in the usage model (%s): modelled as %s", path,
                    ", ".join(f"{q} ({count} tasks)" for q, count in unknown.most_common()),
                    ", ".join(QOS_CLASSES), DEFAULT_QOS)
    return Pods(tuple(r["name"] for r in rows), np.array(cpu, np.int64), np.array(mem, np.int64),
                np.array(num, np.int64), np.array(milli, np.int64), tuple(spec), tuple(qos),
                np.array(created, np.float64), np.array(deleted, np.float64))
