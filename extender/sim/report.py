"""Results of simulation runs: `summary.csv`, a rich table and matplotlib plots (Agg backend).

One summary row per policy and seed with the columns of `SUMMARY_COLUMNS`; a figure that an
experiment does not measure is empty in the CSV (NaN in memory) rather than zero.
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

SUMMARY_COLUMNS = ("policy", "seed", "unallocated_gpu_share", "gpu_alloc_ratio",
                   "hotspot_node_minutes", "deadline_miss_rate", "energy_kwh", "decision_p99_ms")
NAN = float("nan")


@dataclass(frozen=True)
class SummaryRow:
    policy: str
    seed: int
    unallocated_gpu_share: float
    gpu_alloc_ratio: float
    hotspot_node_minutes: float
    deadline_miss_rate: float
    energy_kwh: float
    decision_p99_ms: float


def summarise(result: SaturationResult | ReplayResult) -> SummaryRow:
    """The summary row of one run."""
    p99 = float(np.percentile(result.decision_ms, 99)) if len(result.decision_ms) else NAN
    if isinstance(result, SaturationResult):
        return SummaryRow(result.policy, result.seed, result.unallocated_gpu_share,
                          result.gpu_alloc_ratio, NAN, NAN, NAN, p99)
    return SummaryRow(result.policy, result.seed, 1.0 - result.gpu_alloc_ratio,
                      result.gpu_alloc_ratio, result.hotspot_node_minutes,
                      result.deadline_miss_rate, result.energy_kwh, p99)


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


def by_policy(rows: Sequence[SummaryRow]) -> dict[str, list[SummaryRow]]:
    """Rows grouped by policy, in first-seen order."""
    out: dict[str, list[SummaryRow]] = {}
    for row in rows:
        out.setdefault(row.policy, []).append(row)
    return out


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


def table_rows(rows: Sequence[SummaryRow]) -> list[list[str]]:
    """Per policy: n seeds, then mean ± spread of each figure (percentages for shares)."""
    out = []
    for policy, group in by_policy(rows).items():
        out.append([policy, str(len(group)),
                    _fmt([r.gpu_alloc_ratio for r in group], 100),
                    _fmt([r.unallocated_gpu_share for r in group], 100),
                    _fmt([r.hotspot_node_minutes for r in group], 1, 0),
                    _fmt([r.deadline_miss_rate for r in group], 100),
                    _fmt([r.energy_kwh for r in group], 1, 0),
                    _fmt([r.decision_p99_ms for r in group], 1, 2)])
    return out


TABLE_HEADERS = ["policy", "seeds", "GPU alloc %", "unallocated GPU %", "hot-spot node-min",
                 "deadline miss %", "energy kWh", "decision p99 ms"]


def print_table(rows: Sequence[SummaryRow], title: str) -> None:
    """A rich table of `table_rows` on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header in TABLE_HEADERS:
        table.add_column(header, justify="left" if header == "policy" else "right")
    for row in table_rows(rows):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # pipes and logs: no wrapping of numbers into two lines
    console.print(table)


def plot(rows: Sequence[SummaryRow], out: Path,
         curves: Sequence[SaturationResult] = ()) -> list[Path]:
    """PNG plots into `out`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
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


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=110)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
