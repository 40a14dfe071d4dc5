"""The Python API for applications: report tasks with a context manager or a decorator.

    from extender.sidecar import api as deadline

    with deadline.task("fit", expected_seconds=3):
        model.fit(batch)

    @deadline.task("preprocess")
    def preprocess(path): ...

By default events go to the sidecar's HTTP endpoint on `http://127.0.0.1:9465` (change it with
`deadline.configure(url=...)`); a process that embeds a Tracker passes `LocalReporter(tracker)`.
Reporting never raises into the application and never waits longer than `timeout_s`: an
unreachable sidecar or a rejected event is logged once until reporting works again, and the
application's own exceptions pass through untouched (a failed task still ends: its duration
counts).
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, Protocol, TypeVar

import msgspec
import requests

from extender.sidecar.events import BadEvent, TaskEnd, TaskStart, decode_line
from extender.sidecar.tracker import Tracker

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:9465"
JSON_HEADERS = {"Content-Type": "application/json"}
P = ParamSpec("P")
R = TypeVar("R")


class Reporter(Protocol):
    """Where task events go. `start` returns False if the event was not accepted."""

    def start(self, event: TaskStart) -> bool: ...

    def end(self, event: TaskEnd) -> bool: ...


class _OnceLog:
    """Logs a problem once, until a success clears it."""

    def __init__(self) -> None:
        self._failing = False
        self._lock = threading.Lock()

    def failed(self, message: str, *args: object) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            log.warning(message + " (logged once until reporting works again)", *args)

    def succeeded(self) -> None:
        with self._lock:
            self._failing = False


class HttpReporter:
    """Sends events to a sidecar's HTTP endpoint, with a small timeout."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._once = _OnceLog()

    def start(self, event: TaskStart) -> bool:
        return self._post("/v1/tasks/start", event)

    def end(self, event: TaskEnd) -> bool:
        return self._post("/v1/tasks/end", event)

    def _post(self, path: str, event: TaskStart | TaskEnd) -> bool:
        try:
            answer = self._session.post(self.url + path, data=msgspec.json.encode(event),
                                        headers=JSON_HEADERS, timeout=self.timeout_s)
        except requests.RequestException as exc:
            self._once.failed("deadline sidecar %s unreachable: %s", self.url, exc)
            return False
        if answer.status_code != 200:
            self._once.failed("deadline sidecar %s rejected %s: %s %s", self.url, path,
                              answer.status_code, answer.text.strip())
            return False
        self._once.succeeded()
        return True


class LocalReporter:
    """Applies events to a Tracker in this process."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._once = _OnceLog()

    def start(self, event: TaskStart) -> bool:
        return self._apply(event)

    def end(self, event: TaskEnd) -> bool:
        return self._apply(event)

    def _apply(self, event: TaskStart | TaskEnd) -> bool:
        try:
            # Round trip through the wire decoder: Structs built in code skip its validation.
            self._tracker.apply(self._validated(event))
        except BadEvent as exc:
            self._once.failed("deadline event rejected: %s", exc)
            return False
        self._once.succeeded()
        return True

    def _validated(self, event: TaskStart | TaskEnd) -> TaskStart | TaskEnd:
        try:
            return decode_line(msgspec.json.encode(event))
        except BadEvent as exc:
            self._tracker.reject(exc)
            raise


_default: Reporter | None = None
_default_lock = threading.Lock()


def configure(*, url: str | None = None, reporter: Reporter | None = None,
              timeout_s: float = 0.5) -> Reporter:
    """Set the reporter used by `task()` when none is given: a `reporter`, or HTTP to `url`."""
    global _default
    with _default_lock:
        _default = reporter or HttpReporter(url or DEFAULT_URL, timeout_s=timeout_s)
        return _default


def _default_reporter() -> Reporter:
    with _default_lock:
        current = _default
    return current if current is not None else configure()


class task:  # lower case: reads as a function at the call site, `with deadline.task(...)`
    """One task of `task_type`: a context manager, or a decorator (one task per call).

    `expected_seconds` is the caller's expectation (a profile entry wins over it); without it
    the sidecar uses its learned estimate. Each use gets a fresh id.
    """

    def __init__(self, task_type: str, *, expected_seconds: float | None = None,
                 reporter: Reporter | None = None) -> None:
        self.task_type = task_type
        self.expected_seconds = expected_seconds
        self._reporter = reporter
        self.id: str | None = None
        self._started = False

    def __enter__(self) -> task:
        reporter = self._reporter or _default_reporter()
        self.id = f"{self.task_type}-{uuid.uuid4().hex[:16]}"
        self._started = reporter.start(TaskStart(id=self.id, type=self.task_type,
                                                 expected_seconds=self.expected_seconds))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._started and self.id is not None:
            (self._reporter or _default_reporter()).end(TaskEnd(id=self.id))
        self._started = False

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with task(self.task_type, expected_seconds=self.expected_seconds,
                      reporter=self._reporter):
                return func(*args, **kwargs)

        return wrapper
