"""The Monitoring API's Prometheus queries in child processes (`monitoring.queries_in_child`):
the same answers as in-process, from the session's real Prometheus; a dead Prometheus or a dead
child is a PrometheusUnreachable (503 upstream), and the next query starts new children."""

from __future__ import annotations

import os
import signal
import time

import msgspec
import pytest

from extender import localserver
from extender.errors import PrometheusUnreachable
from extender.metrics.prometheus import PrometheusSource
from extender.monitoring import offprocess
from extender.monitoring.offprocess import ChildRangeSource
from extender.monitoring.routes import default_source
from extender.settings import PrometheusSettings
from tests.monitoring.conftest import Stack
from tests.support import settings

pytestmark = pytest.mark.prometheus


def test_children_answer_as_the_in_process_client_does(stack: Stack) -> None:
    prometheus = PrometheusSettings(url=stack.prometheus_url, query_timeout_s=5)
    child, local = ChildRangeSource(prometheus), PrometheusSource(prometheus)
    # Not vacuous: wait until the window, in the past so later scrapes do not change it,
    # holds samples.
    localserver.wait_until(lambda: local.query("up", time.time() - 15), timeout_s=45,
                           what="a scrape")
    end = float(round(time.time()) - 15)  # scrapes still being written have later timestamps

    def key(found: list[object]) -> list[str]:
        return sorted(map(repr, found))

    series = local.query_range("up", end - 30, end, 5)
    assert series and key(child.query_range("up", end - 30, end, 5)) == key(series)
    at = end - 1
    assert key(child.query("up", at)) == key(local.query("up", at))


def test_an_unreachable_prometheus_is_unreachable_from_the_child_too() -> None:
    dead = PrometheusSettings(url=f"http://127.0.0.1:{localserver.free_port()}", retries=0,
                              query_timeout_s=1)
    with pytest.raises(PrometheusUnreachable):
        ChildRangeSource(dead).query_range("up", 0, 60, 15)


def test_a_dead_child_fails_one_query_and_the_next_starts_new_ones(stack: Stack) -> None:
    source = ChildRangeSource(PrometheusSettings(url=stack.prometheus_url, query_timeout_s=5))
    localserver.wait_until(lambda: source.query("up"), timeout_s=30, what="a scrape")
    end = time.time()
    assert source.query_range("up", end - 10, end, 5)
    pool = offprocess._executor()  # noqa: SLF001 - the children to kill
    for pid in list(pool._processes):  # noqa: SLF001
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(PrometheusUnreachable, match="query process died"):
        for _ in range(5):  # the pool notices the death on the next submit or result
            source.query_range("up", end - 10, end, 5)
            time.sleep(0.2)
    assert source.query_range("up", end - 10, end, 5)


def test_the_switch_chooses_the_source() -> None:
    assert isinstance(default_source(settings()), ChildRangeSource)
    local = default_source(settings(monitoring={"queries_in_child": False}))
    assert isinstance(local, PrometheusSource)
    assert msgspec.json.encode(local.settings.query_timeout_s) == b"5.0"
