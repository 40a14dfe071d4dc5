"""The local HTTP endpoint and the Python API that applications use."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import requests
from flask.testing import FlaskClient

from extender import localserver
from extender.sidecar import api as deadline
from extender.sidecar.http import HttpServer, create_sidecar_app
from extender.sidecar.series import deadline_registry
from extender.sidecar.tracker import Tracker
from tests.sidecar.support import ManualClock, make_settings
from tests.support import sample


@pytest.fixture
def client(tracker: Tracker) -> FlaskClient:
    return create_sidecar_app(tracker, deadline_registry(tracker.stats)).test_client()


@pytest.fixture
def served() -> Iterator[tuple[Tracker, str]]:
    """A tracker behind a real HTTP server on loopback."""
    tracker = Tracker(make_settings())
    server = HttpServer(create_sidecar_app(tracker, deadline_registry(tracker.stats)), "127.0.0.1", 0)
    server.start()
    yield tracker, server.url
    server.stop()


def test_start_then_end_returns_the_expectation_and_the_verdict(
        client: FlaskClient, clock: ManualClock) -> None:
    started = client.post("/v1/tasks/start", json={"id": "t1", "type": "fit",
                                                   "expected_seconds": 2})
    assert started.status_code == 200
    assert started.json == {"id": "t1", "expected_seconds": 2.0, "source": "event",
                            "limit_seconds": 4.0}
    clock.advance(5)
    ended = client.post("/v1/tasks/end", json={"id": "t1"})
    assert ended.status_code == 200
    assert ended.json == {"id": "t1", "duration_seconds": 5.0, "missed": True,
                          "limit_seconds": 4.0}


def test_task_without_expectation_has_no_limit(client: FlaskClient) -> None:
    answer = client.post("/v1/tasks/start", json={"id": "t", "type": "new"})
    assert answer.json is not None
    assert (answer.json["source"], answer.json["limit_seconds"]) == ("none", None)


def test_missing_field_is_a_400_with_a_json_error_and_is_counted(
        client: FlaskClient, tracker: Tracker) -> None:
    answer = client.post("/v1/tasks/start", json={"id": "t1"})
    assert answer.status_code == 400
    assert answer.json == {"error": "invalid event: Object missing required field `type`",
                           "reason": "missing_field"}
    assert tracker.stats().bad_events["missing_field"] == 1


def test_non_json_body_is_a_400(client: FlaskClient, tracker: Tracker) -> None:
    answer = client.post("/v1/tasks/end", data=b"id=t1")
    assert answer.status_code == 400 and answer.json is not None
    assert answer.json["reason"] == "malformed"
    assert tracker.stats().bad_events["malformed"] == 1


def test_state_conflicts_are_409_with_their_reason(client: FlaskClient, tracker: Tracker) -> None:
    assert client.post("/v1/tasks/end", json={"id": "nope"}).status_code == 409
    client.post("/v1/tasks/start", json={"id": "a", "type": "fit"})
    duplicate = client.post("/v1/tasks/start", json={"id": "a", "type": "fit"})
    assert duplicate.status_code == 409 and duplicate.json is not None
    assert duplicate.json["reason"] == "duplicate_id"
    bad = tracker.stats().bad_events
    assert (bad["end_without_start"], bad["duplicate_id"]) == (1, 1)


def test_oversized_body_and_unknown_path_get_json_errors(client: FlaskClient) -> None:
    big = client.post("/v1/tasks/start", data=b"x" * 100_000)
    assert big.status_code == 413 and big.json is not None and "error" in big.json
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json is not None


def test_metrics_serves_every_published_name(client: FlaskClient, clock: ManualClock) -> None:
    client.post("/v1/tasks/start", json={"id": "a", "type": "fit", "expected_seconds": 1})
    clock.advance(10)
    client.post("/v1/tasks/end", json={"id": "a"})
    client.post("/v1/tasks/start", json={"id": "b", "type": "fit"})
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    text = answer.get_data(as_text=True)
    for name, labels, value in (
            ("deadline_tasks_total", {}, 1.0), ("deadline_tasks_missed_total", {}, 1.0),
            ("deadline_miss_ratio", {}, 1.0), ("deadline_tasks_running", {}, 1.0),
            ("deadline_window_tasks", {}, 1.0), ("deadline_lateness_seconds_bucket", {"le": "0"}, 0.0),
            ("deadline_lateness_seconds_bucket", {"le": "10"}, 1.0),
            ("deadline_lateness_seconds_count", {}, 1.0), ("deadline_lateness_seconds_sum", {}, 7.5),
            ("deadline_bad_events_total", {"reason": "duplicate_id"}, 0.0)):
        assert sample(text, name, **labels) == value, (name, labels)


def test_healthz_reports_counts(client: FlaskClient) -> None:
    client.post("/v1/tasks/start", json={"id": "a", "type": "fit"})
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json is not None
    assert (answer.json["status"], answer.json["running"], answer.json["push"]) == ("ok", 1, None)


def test_context_manager_reports_a_task_over_real_http(served: tuple[Tracker, str]) -> None:
    tracker, url = served
    reporter = deadline.HttpReporter(url)
    with deadline.task("fit", expected_seconds=30, reporter=reporter) as handle:
        assert tracker.stats().running == 1
        assert handle.id is not None and handle.id.startswith("fit-")
    stats = tracker.stats()
    assert (stats.running, stats.tasks_total, stats.missed_total) == (0, 1, 0)


def test_decorator_reports_one_task_per_call_even_when_it_raises(
        served: tuple[Tracker, str]) -> None:
    tracker, url = served
    deadline.configure(url=url)

    @deadline.task("step", expected_seconds=30)
    def step(fail: bool) -> str:
        if fail:
            raise ValueError("boom")
        return "done"

    try:
        assert step(False) == "done"
        with pytest.raises(ValueError, match="boom"):
            step(True)
    finally:
        deadline.configure(url=deadline.DEFAULT_URL)
    assert step.__name__ == "step"
    stats = tracker.stats()
    assert (stats.running, stats.tasks_total) == (0, 2)


def test_unreachable_sidecar_never_raises_into_the_application_and_logs_once(
        caplog: pytest.LogCaptureFixture) -> None:
    reporter = deadline.HttpReporter(f"http://127.0.0.1:{localserver.free_port()}", timeout_s=0.5)
    caplog.set_level(logging.WARNING, logger="extender.sidecar.api")
    results = []
    for _ in range(5):
        with deadline.task("fit", reporter=reporter):
            results.append("ran")
    assert results == ["ran"] * 5
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1


def test_local_reporter_validates_events_built_in_code(tracker: Tracker) -> None:
    reporter = deadline.LocalReporter(tracker)
    with deadline.task("fit", expected_seconds=-1, reporter=reporter):
        pass
    stats = tracker.stats()
    assert (stats.tasks_total, stats.bad_events["invalid_field"]) == (0, 1)
    with deadline.task("fit", expected_seconds=1, reporter=reporter):
        pass
    assert tracker.stats().tasks_total == 1


def test_requests_to_the_real_server_get_json_errors(served: tuple[Tracker, str]) -> None:
    _, url = served
    answer = requests.post(url + "/v1/tasks/start", data=b"{", timeout=5)
    assert answer.status_code == 400 and answer.json()["reason"] == "malformed"
