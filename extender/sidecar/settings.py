"""The sidecar's settings section and its profile file: the only sidecar module that reads files.

`config/sidecar.yaml` shows every default with a comment. Environment variables override the file
as for the extender, under their own prefix: `EXTENDER_SIDECAR_<KEY>__<KEY>=value`, e.g.
`EXTENDER_SIDECAR_PUSH__INTERVAL_S=5`.

The profile file maps a task type to its expected duration in seconds, as YAML
(`fit: 3.0`) or CSV (`type,seconds` rows, header optional).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from extender.errors import ConfigError
from extender.settings import Struct, convert, env_overrides, load_section, require_positive

ENV_PREFIX = "EXTENDER_SIDECAR_"
JOB = "extract-deadline"
"""Pushgateway job of every sidecar; the grouping key adds `node` and `worker`."""


class JitterSettings(Struct, frozen=True):
    """The margin above the expected duration before a task counts as a miss."""

    relative: float = 0.5
    """A task misses when duration > expected * (1 + relative) + absolute_s."""
    absolute_s: float = 1.0
    """Absorbs scheduling noise of very short tasks, where a relative margin alone is too tight."""


class EstimatorSettings(Struct, frozen=True):
    """The online estimate of a task type's duration (see extender.sidecar.estimate)."""

    alpha: float = 0.1
    """EWMA weight of a new sample of log(duration): about the last 2/alpha - 1 runs count."""
    min_samples: int = 5
    """A learned estimate is used only after this many finished runs of the type."""
    clamp: float = 3.0
    """A sample is clamped to mean +- clamp * deviation (in log space) before it updates the
    estimate, so one hung or instant run moves it by a bounded amount."""
    max_types: int = 1000
    """Task types remembered; the least recently seen type is forgotten beyond this."""


class WindowSettings(Struct, frozen=True):
    """The sliding window of deadline_miss_ratio."""

    seconds: float = 300.0
    """Verdicts older than this no longer count. Longer than the extender's refresh and scrape
    intervals, short enough that a node recovers within minutes."""
    buckets: int = 60
    """The window is kept as this many time buckets of (tasks, misses): memory is fixed whatever
    the task rate, and a verdict leaves the window within seconds / buckets of its age."""


class PushSettings(Struct, frozen=True):
    """Pushes to the Pushgateway, from a background thread."""

    interval_s: float = 10.0
    """Between two pushes. Prometheus sees a change after one push plus one scrape."""
    timeout_s: float = 2.0
    """Per HTTP request (prometheus_client's default of 30 s would stall shutdown)."""
    backoff_initial_s: float = 1.0
    """First retry delay after a failed push; doubles per failure up to backoff_max_s."""
    backoff_max_s: float = 60.0


class SidecarSettings(Struct, frozen=True):
    """The deadline sidecar's whole configuration (CLI flags fill node, worker, URLs and files)."""

    jitter: JitterSettings = JitterSettings()
    estimator: EstimatorSettings = EstimatorSettings()
    window: WindowSettings = WindowSettings()
    push: PushSettings = PushSettings()
    max_running: int = 10000
    """Tasks in flight at once; more starts are rejected as bad events (bounded memory)."""
    lateness_buckets: tuple[float, ...] = (0.0, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
    """Upper bounds (seconds late) of deadline_lateness_seconds; the `le="0"` bucket counts
    tasks that finished in time."""
    source: str = "<defaults>"
    """The file these settings came from (for messages)."""


def load_sidecar_settings(path: Path | str | None = None, *,
                          environ: Mapping[str, str] | None = None) -> SidecarSettings:
    """Sidecar settings from `path` (defaults when None) and `EXTENDER_SIDECAR_*` variables.

    Raises ConfigError naming the file, the key path and the reason.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        settings = convert(env_overrides(environ, ENV_PREFIX, SidecarSettings.__struct_fields__),
                           SidecarSettings, "<defaults>")
    else:
        settings = load_section(path, SidecarSettings, environ=environ, env_prefix=ENV_PREFIX)
    validate(settings)
    return settings


def validate(settings: SidecarSettings) -> None:
    """Range checks that types cannot express; ConfigError on the first problem."""
    src = settings.source
    positive = {
        "estimator.alpha": settings.estimator.alpha,
        "estimator.clamp": settings.estimator.clamp,
        "estimator.max_types": settings.estimator.max_types,
        "window.seconds": settings.window.seconds,
        "window.buckets": settings.window.buckets,
        "push.interval_s": settings.push.interval_s,
        "push.timeout_s": settings.push.timeout_s,
        "push.backoff_initial_s": settings.push.backoff_initial_s,
        "push.backoff_max_s": settings.push.backoff_max_s,
        "max_running": settings.max_running,
    }
    require_positive(src, positive)
    if settings.estimator.alpha > 1:
        raise ConfigError(f"{src}: estimator.alpha: expected 0 < alpha <= 1, got "
                          f"{settings.estimator.alpha}")
    if settings.estimator.min_samples < 1:
        raise ConfigError(f"{src}: estimator.min_samples: expected >= 1, got "
                          f"{settings.estimator.min_samples}")
    for key in ("relative", "absolute_s"):
        value = getattr(settings.jitter, key)
        if not value >= 0:
            raise ConfigError(f"{src}: jitter.{key}: expected a number >= 0, got {value}")
    buckets = settings.lateness_buckets
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 0:
        raise ConfigError(f"{src}: lateness_buckets: expected increasing numbers >= 0, got "
                          f"{list(buckets)}")


def load_profile(path: Path | str) -> dict[str, float]:
    """Expected seconds per task type from a YAML mapping or a CSV file (`.csv`).

    Raises ConfigError naming the file, the entry and the reason (unreadable file, not a
    mapping, a value that is not a positive number).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if path.suffix.lower() == ".csv":
        rows = [row for row in csv.reader(io.StringIO(text)) if row and any(c.strip() for c in row)]
        if rows and rows[0][0].strip().lower() == "type":
            rows = rows[1:]
        entries: dict[str, object] = {}
        for number, row in enumerate(rows, start=1):
            if len(row) != 2:
                raise ConfigError(f"{path}: row {number}: expected `type,seconds`, got {row}")
            entries[row[0].strip()] = row[1].strip()
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of task type -> seconds, "
                              f"got {type(data).__name__}")
        entries = {str(key): value for key, value in data.items()}
    profile: dict[str, float] = {}
    for task_type, raw in entries.items():
        try:
            seconds = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            seconds = math.nan
        if not task_type or not (seconds > 0 and math.isfinite(seconds)):
            raise ConfigError(f"{path}: {task_type or '<empty type>'}: expected seconds > 0, "
                              f"got {raw!r}")
        profile[task_type] = seconds
    return profile
