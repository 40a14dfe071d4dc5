"""Results of simulation runs: `summary.csv`, a rich table and matplotlib plots (Agg backend).

One summary row per policy, load and seed with the columns of `SUMMARY_COLUMNS`; a figure that
an experiment does not measure is empty in the CSV (NaN in memory) rather than zero. A load sweep
(several replay speed-ups) gets one plot per metric against the load, and `comparison` sets each
policy beside a baseline seed by seed (the same arrivals and usage draws on both sides).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from extender.sim.replay import ReplayResult
from extender.sim.saturation import SaturationResult

SUMMARY_COLUMNS = ("policy", "seed", "load", "unallocated_gpu_share", "gpu_alloc_ratio",
                   "hotspot_node_minutes", "deadline_miss_rate", "energy_kwh", "decision_p99_ms",
                   "slowdown_p99", "energy_above_idle_kwh")
NAN = float("nan")


@dataclass(frozen=True)
class SummaryRow:
    policy: str
    seed: int
    load: float
    """Replay arrival speed-up (NaN for the saturation experiment, which has no clock)."""
    unallocated_gpu_share: float
    gpu_alloc_ratio: float
    hotspot_node_minutes: float
    deadline_miss_rate: float
    energy_kwh: float
    decision_p99_ms: float
    slowdown_p99: float = NAN
    """99th percentile of the placed tasks' slowdown (time run / progress made)."""
    energy_above_idle_kwh: float = NAN


def summarise(result: SaturationResult | ReplayResult) -> SummaryRow:
    """The summary row of one run."""
    p99 = float(np.percentile(result.decision_ms, 99)) if len(result.decision_ms) else NAN
    if isinstance(result, SaturationResult):
        return SummaryRow(result.policy, result.seed, NAN, result.unallocated_gpu_share,
                          result.gpu_alloc_ratio, NAN, NAN, NAN, p99)
    return SummaryRow(result.policy, result.seed, result.load, 1.0 - result.gpu_alloc_ratio,
                      result.gpu_alloc_ratio, result.hotspot_node_minutes,
                      result.deadline_miss_rate, result.energy_kwh, p99, result.slowdown_p99,
                      result.energy_above_idle_kwh)


def write_summary(rows: Sequence[SummaryRow], path: Path) -> Path:
    """Write `summary.csv` (NaN as an empty cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_COLUMNS)
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else
                             (f"{v:.6g}" if isinstance(v, float) else v) for v in astuple(row)])
    return path


def read_summary(path: Path) -> list[SummaryRow]:
    """The rows `write_summary` wrote (empty cells back to NaN)."""
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            num = [float(row[k]) if row.get(k) else NAN for k in SUMMARY_COLUMNS[2:]]
            out.append(SummaryRow(row["policy"], int(row["seed"]), *num))
    return out


def by_policy(rows: Sequence[SummaryRow]) -> dict[str, list[SummaryRow]]:
    """Rows grouped by policy, in first-seen order."""
    out: dict[str, list[SummaryRow]] = {}
    for row in rows:
        out.setdefault(row.policy, []).append(row)
    return out


def by_policy_and_load(rows: Sequence[SummaryRow]) -> dict[tuple[str, float], list[SummaryRow]]:
    """Rows grouped by (policy, load), in first-seen order."""
    out: dict[tuple[str, float], list[SummaryRow]] = {}
    for row in rows:
        out.setdefault((row.policy, row.load), []).append(row)
    return out


def loads_of(rows: Sequence[SummaryRow]) -> list[float]:
    """The distinct loads of `rows` (NaN excluded), ascending."""
    return sorted({r.load for r in rows if not math.isnan(r.load)})


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), ignoring NaN; NaN when empty."""
    arr = np.array([v for v in values if not math.isnan(v)], np.float64)
    if len(arr) == 0:
        return NAN, NAN
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _fmt(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    mean, spread = mean_spread([v * scale for v in values])
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _load(load: float) -> str:
    return "-" if math.isnan(load) else f"{load:g}"


def table_rows(rows: Sequence[SummaryRow]) -> list[list[str]]:
    """Per policy and load: n seeds, then mean ± spread of each figure (percentages for
    shares)."""
    out = []
    for (policy, load), group in by_policy_and_load(rows).items():
        out.append([policy, _load(load), str(len(group)),
                    _fmt([r.gpu_alloc_ratio for r in group], 100),
                    _fmt([r.unallocated_gpu_share for r in group], 100),
                    _fmt([r.hotspot_node_minutes for r in group], 1, 0),
                    _fmt([r.deadline_miss_rate for r in group], 100),
                    _fmt([r.slowdown_p99 for r in group], 1, 3),
                    _fmt([r.energy_kwh for r in group], 1, 0),
                    _fmt([r.energy_above_idle_kwh for r in group], 1, 0),
                    _fmt([r.decision_p99_ms for r in group], 1, 2)])
    return out


TABLE_HEADERS = ["policy", "load", "seeds", "GPU alloc %", "unallocated GPU %",
                 "hot-spot node-min", "deadline miss %", "slowdown p99", "energy kWh",
                 "energy above idle kWh", "decision p99 ms"]


@dataclass(frozen=True)
class Metric:
    """A figure of the comparison: summary field, heading, scale and decimals as shown."""

    field: str
    label: str
    scale: float = 1.0
    digits: int = 0
    filename: str = ""


SWEEP_METRICS = (
    Metric("hotspot_node_minutes", "hot-spot node-min", 1.0, 0, "hotspot_vs_load.png"),
    Metric("deadline_miss_rate", "deadline miss %", 100.0, 3, "deadline_miss_vs_load.png"),
    Metric("slowdown_p99", "slowdown p99", 1.0, 3, "slowdown_p99_vs_load.png"),
    Metric("energy_above_idle_kwh", "energy above idle kWh", 1.0, 0,
           "energy_above_idle_vs_load.png"),
    Metric("gpu_alloc_ratio", "GPU alloc %", 100.0, 3, "gpu_alloc_vs_load.png"),
)
"""What the load sweep reports per load, in its table's order."""


def paired(rows: Sequence[SummaryRow], policy: str, load: float, baseline: str,
           metric: Metric) -> tuple[float, float, int]:
    """Mean and sd of `policy` minus `baseline` in `metric` (scaled) over the seeds both ran at
    `load`, and how many seeds that is (NaN, NaN, 0 when none)."""
    base = {r.seed: getattr(r, metric.field) for r in rows
            if r.policy == baseline and _same(r.load, load)}
    diffs = [(getattr(r, metric.field) - base[r.seed]) * metric.scale for r in rows
             if r.policy == policy and _same(r.load, load) and r.seed in base]
    mean, spread = mean_spread(diffs)
    return mean, spread, len(diffs)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def comparison(rows: Sequence[SummaryRow], baseline: str = "kube-default",
               kinds: dict[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the comparison table: per load, then policy, each figure of
    `SWEEP_METRICS` as mean ± sd over seeds and, for policies other than `baseline`, the paired
    (same seed) difference to it as `Δ mean ± sd`. `kinds` names each policy's family."""
    headers = ["load", "policy", *(["kind"] if kinds else []), "seeds",
               *(m.label for m in SWEEP_METRICS)]
    groups = by_policy_and_load(rows)
    out = []
    for load in [*loads_of(rows), *([NAN] if any(math.isnan(r.load) for r in rows) else [])]:
        for (policy, at), group in groups.items():
            if not _same(at, load):
                continue
            cells = []
            for m in SWEEP_METRICS:
                cell = _fmt([getattr(r, m.field) for r in group], m.scale, m.digits)
                if policy != baseline and cell != "-":
                    mean, spread, n = paired(rows, policy, load, baseline, m)
                    if n:
                        cell += f" (Δ {mean:+.{m.digits}f} ± {spread:.{m.digits}f})"
                cells.append(cell)
            kind = [kinds.get(policy, "")] if kinds else []
            out.append([_load(load), policy, *kind, str(len(group)), *cells])
    return headers, out


def print_table(rows: Sequence[SummaryRow], title: str,
                cells: tuple[list[str], list[list[str]]] | None = None) -> None:
    """A rich table on stdout: `table_rows` of `rows`, or `cells` (headers, rows) when given."""
    from rich.console import Console
    from rich.table import Table

    headers, body = cells if cells is not None else (TABLE_HEADERS, table_rows(rows))
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header in ("policy", "kind") else "right")
    for row in body:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # pipes and logs: no wrapping of numbers into two lines
    console.print(table)


def plot(rows: Sequence[SummaryRow], out: Path,
         curves: Sequence[SaturationResult] = ()) -> list[Path]:
    """PNG plots into `out`; returns the files written. Rows of several loads (a sweep) get one
    plot per metric against the load instead of one bar per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    if len(loads_of(rows)) > 1:
        return plot_sweep(rows, out)
    written: list[Path] = []
    groups = by_policy(rows)
    names = list(groups)

    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        grid = np.linspace(0.0, max(max(r.curve.arrived) for r in curves), 200)
        for policy in dict.fromkeys(r.policy for r in curves):
            ys = np.array([np.interp(grid, r.curve.arrived, r.curve.unallocated)
                           for r in curves if r.policy == policy]) * 100
            mean, spread = ys.mean(axis=0), ys.std(axis=0)
            ax.plot(grid * 100, mean, label=policy)
            ax.fill_between(grid * 100, mean - spread, mean + spread, alpha=0.2)
        ax.set_xlabel("arrived GPU demand (% of GPU capacity)")
        ax.set_ylabel("unallocated GPUs (% of capacity)")
        ax.set_title("Unallocated GPU share vs arrived load (mean ± sd over seeds)")
        ax.set_xlim(60, grid[-1] * 100)
        ax.set_ylim(0, 45)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / "unallocated_gpu_vs_arrived.png"))

    metrics = [("gpu_alloc_ratio", "GPU allocation ratio (%)", 100.0, "gpu_alloc_ratio.png"),
               ("hotspot_node_minutes", "hot-spot node-minutes (usage > 90%)", 1.0,
                "hotspot_node_minutes.png"),
               ("deadline_miss_rate", "deadline-miss rate (%)", 100.0, "deadline_miss_rate.png"),
               ("energy_kwh", "energy (kWh)", 1.0, "energy_kwh.png"),
               ("decision_p99_ms", "scheduling decision p99 (ms)", 1.0, "decision_latency.png")]
    for field, label, scale, filename in metrics:
        stats = [mean_spread([getattr(r, field) * scale for r in groups[p]]) for p in names]
        if all(math.isnan(m) for m, _ in stats):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        means = [0.0 if math.isnan(m) else m for m, _ in stats]
        spreads = [0.0 if math.isnan(s) else s for _, s in stats]
        ax.bar(names, means, yerr=spreads, capsize=4, color="#4c72b0")
        if field == "gpu_alloc_ratio":
            low = min(m for m in means if m > 0) if any(means) else 0.0
            ax.set_ylim(max(0.0, low - 5), 100)
        if field == "energy_kwh":
            low, high = min(means), max(means)
            pad = max(high - low, 1.0)
            ax.set_ylim(max(0.0, low - pad), high + pad)
        ax.set_ylabel(label)
        ax.set_title(f"{label}, mean ± sd over seeds")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
        written.append(_save(fig, out / filename))
    return written


def plot_sweep(rows: Sequence[SummaryRow], out: Path) -> list[Path]:
    """One PNG per metric of `SWEEP_METRICS` against the load, a line per policy (mean ± sd
    over seeds as error bars); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    groups = by_policy_and_load(rows)
    policies = list(dict.fromkeys(r.policy for r in rows))
    written: list[Path] = []
    for m in SWEEP_METRICS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for policy in policies:
            points = [(load, *mean_spread([getattr(r, m.field) * m.scale for r in group]))
                      for (name, load), group in groups.items()
                      if name == policy and not math.isnan(load)]
            points = sorted(p for p in points if not math.isnan(p[1]))
            if points:
                xs, ys, sds = zip(*points, strict=True)
                ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=policy)
        ax.set_xscale("log")
        ax.set_xlabel("load (arrival speed-up of the trace)")
        ax.set_ylabel(m.label)
        ax.set_title(f"{m.label} against load, mean ± sd over seeds")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / m.filename))
    return written


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
