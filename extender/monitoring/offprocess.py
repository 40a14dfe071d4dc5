"""The Monitoring API's Prometheus queries in a child process, off the verbs' GIL.

The monitoring listener has threads of its own, but one process has one GIL: decoding a heavy
range answer holds it without a break (json.loads of a 0.76 MB matrix, 200 series x 121 points:
~40 ms on the benchmark machine, then ~9 ms turning it into points), and a verb thread waiting
for the GIL meanwhile waits that long. Here `query_range` and `query` run in a child process
(two per process, spawned on the first query, restarted if they die); only the decoded series come back,
pickled (~3 ms to unpickle for that answer). The same reasoning as the refresher's child
(`extender.metrics.cache`, `cache.refresh_in_child`); switch: `monitoring.queries_in_child`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
from typing import Any

import msgspec

from extender.errors import PrometheusUnreachable
from extender.metrics.prometheus import PrometheusSource, RangeSeries, Sample
from extender.settings import PrometheusSettings

PROCESSES = 2
"""Child processes per process (worker): two history queries decode at once, more wait."""

_child_sources: dict[bytes, PrometheusSource] = {}


def _source(key: bytes) -> PrometheusSource:
    """The child's client for these settings (kept: its connection pool is reused)."""
    source = _child_sources.get(key)
    if source is None:
        if len(_child_sources) > 8:  # tests use many Prometheus servers; production one
            _child_sources.clear()
        source = _child_sources[key] = PrometheusSource(
            msgspec.json.decode(key, type=PrometheusSettings))
    return source


def _child_query_range(key: bytes, promql: str, start: float, end: float,
                       step: float) -> list[RangeSeries]:
    return _source(key).query_range(promql, start, end, step)


def _child_query(key: bytes, promql: str, at: float | None) -> list[Sample]:
    return _source(key).query(promql, at)


_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> concurrent.futures.ProcessPoolExecutor:
    """This process's children, shared by every ChildRangeSource in it (started on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn, not fork: the parent has threads (gunicorn, cheroot, the refresher).
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=PROCESSES, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _discard(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            pool.shutdown(wait=False, cancel_futures=True)
            _pool = None  # the next query starts new children


class ChildRangeSource:
    """A `RangeSource` whose queries a `PrometheusSource` with `settings` answers in this
    process's child processes (spawned on first use: a worker that never serves history pays
    nothing; shared by every source of the process)."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        self._key = msgspec.json.encode(settings)

    def _call(self, fn: Any, *args: Any) -> Any:
        pool = _executor()
        try:
            return pool.submit(fn, self._key, *args).result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            _discard(pool)
            raise PrometheusUnreachable(f"the Monitoring API's query process died: {exc}") from exc

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[RangeSeries]:
        """Evaluate a range query in a child."""
        result: list[RangeSeries] = self._call(_child_query_range, promql, start, end, step)
        return result

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Evaluate an instant query in a child."""
        result: list[Sample] = self._call(_child_query, promql, at)
        return result
