"""The pusher against a REAL Pushgateway: values arrive, the group goes away, outages."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import push_to_gateway

from extender import localserver
from extender.localserver import wait_until
from extender.sidecar import api as deadline
from extender.sidecar.push import Pusher
from extender.sidecar.series import deadline_registry
from extender.sidecar.settings import PushSettings
from extender.sidecar.tracker import Tracker
from tests.sidecar.support import gateway_values, make_settings, start

pytestmark = pytest.mark.prometheus

FAST = PushSettings(interval_s=0.1, timeout_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.2)


def make_pusher(url: str, worker: str, settings: PushSettings = FAST,
                **kwargs: Any) -> tuple[Tracker, Pusher]:
    tracker = Tracker(make_settings(push=settings))
    pusher = Pusher(deadline_registry(tracker.stats), url, settings=settings,
                    grouping_key={"node": "node-a", "worker": worker}, **kwargs)
    return tracker, pusher


def run_tasks(tracker: Tracker, count: int, *, expected_seconds: float = 60.0) -> None:
    reporter = deadline.LocalReporter(tracker)
    for _ in range(count):
        with deadline.task("fit", expected_seconds=expected_seconds, reporter=reporter):
            pass


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_pushed_values_arrive_in_the_gateway_under_node_and_worker(
        shared_gateway: localserver.LocalServer) -> None:
    tracker, pusher = make_pusher(shared_gateway.url, "w-values")
    pusher.start()
    try:
        run_tasks(tracker, 3)
        tracker.start(deadline.TaskStart(id="hung", type="fit", expected_seconds=60))
        values = wait_until(
            lambda: (v := gateway_values(shared_gateway.url, "node-a", "w-values"))
            and v["deadline_tasks_total"] == 3 and v,
            timeout_s=10, what="the pushed totals")
        assert values["deadline_tasks_running"] == 1
        assert values["deadline_tasks_missed_total"] == 0
        assert values["deadline_miss_ratio"] == 0
        assert values["deadline_lateness_seconds"] == 3  # histogram count
    finally:
        pusher.close()


def test_close_pushes_the_last_state_then_deletes_the_group(
        shared_gateway: localserver.LocalServer) -> None:
    slow = PushSettings(interval_s=3600, timeout_s=2.0)
    tracker, pusher = make_pusher(shared_gateway.url, "w-close", slow)
    pusher.start()
    wait_until(lambda: gateway_values(shared_gateway.url, "node-a", "w-close"),
               timeout_s=10, what="the first push")
    run_tasks(tracker, 2)
    assert pusher.close(delete_group=False)  # only the final push can carry these two
    values = gateway_values(shared_gateway.url, "node-a", "w-close")
    assert values is not None and values["deadline_tasks_total"] == 2
    assert pusher.close()
    assert gateway_values(shared_gateway.url, "node-a", "w-close") is None


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts connections into its backlog and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_hanging_gateway_never_blocks_the_application(black_hole: str) -> None:
    entered, returned = threading.Event(), threading.Event()

    def observed_push(*args: Any, **kwargs: Any) -> None:
        entered.set()
        try:
            push_to_gateway(*args, **kwargs)
        finally:
            returned.set()

    hanging = PushSettings(interval_s=0.1, timeout_s=30.0, backoff_initial_s=0.05,
                           backoff_max_s=0.2)
    tracker, pusher = make_pusher(black_hole, "w-hang", hanging, push=observed_push)
    pusher.start()
    assert entered.wait(timeout=10)
    run_tasks(tracker, 1000)
    assert not returned.is_set(), "the push should still be waiting for the gateway"
    stats = tracker.stats()
    assert (stats.tasks_total, stats.running) == (1000, 0)
    assert pusher.status().pushes == 0


def test_outage_logs_once_counting_continues_and_recovery_is_logged_once(
        own_gateway: localserver.LocalServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="extender.sidecar.push")
    tracker, pusher = make_pusher(own_gateway.url, "w-outage")
    pusher.start()
    try:
        wait_until(lambda: pusher.status().pushes >= 1, timeout_s=10, what="a first push")
        own_gateway.stop()
        run_tasks(tracker, 5)
        wait_until(lambda: pusher.status().consecutive_failures >= 5, timeout_s=20,
                   what="several failed pushes")
        run_tasks(tracker, 5)
        assert len(warnings_about(caplog, "unreachable")) == 1
        assert tracker.stats().tasks_total == 10

        start(own_gateway)
        values = wait_until(
            lambda: (v := gateway_values(own_gateway.url, "node-a", "w-outage"))
            and v["deadline_tasks_total"] == 10 and v,
            timeout_s=20, what="the totals counted during the outage")
        assert values["deadline_tasks_total"] == 10
        # The pusher logs the recovery just after the push lands, on its own thread.
        wait_until(lambda: warnings_about(caplog, "reachable again"), timeout_s=10,
                   what="the recovery log line")
        assert len(warnings_about(caplog, "reachable again")) == 1

        own_gateway.stop()
        wait_until(lambda: pusher.status().consecutive_failures >= 2, timeout_s=20,
                   what="a second outage")
        assert len(warnings_about(caplog, "unreachable")) == 2  # once per outage
    finally:
        pusher.close()


def test_failed_pushes_back_off_exponentially_up_to_the_cap() -> None:
    failing = True

    def push(*args: Any, **kwargs: Any) -> None:
        if failing:
            raise ConnectionRefusedError("refused")

    settings = PushSettings(interval_s=5.0, backoff_initial_s=1.0, backoff_max_s=6.0)
    _, pusher = make_pusher("http://127.0.0.1:1", "w-backoff", settings, push=push)
    delays = []
    for _ in range(5):
        assert not pusher.push_once()
        delays.append(pusher.next_delay())
    assert delays == [1.0, 2.0, 4.0, 6.0, 6.0]
    failing = False
    assert pusher.push_once()
    assert pusher.next_delay() == 5.0
    assert pusher.status().failures == 5


def test_close_with_the_gateway_down_reports_that_the_group_may_linger(
        caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{localserver.free_port()}"
    _, pusher = make_pusher(url, "w-down")
    assert pusher.close() is False
    assert len(warnings_about(caplog, "could not delete")) == 1
    assert len(warnings_about(caplog, "unreachable")) == 1
