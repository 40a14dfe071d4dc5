"""The Pushgateway edge: a background thread that pushes the deadline registry.

Grouping key: `job="extract-deadline"`, `node=<node>`, `worker=<worker>`, i.e. the group
`/metrics/job/extract-deadline/node/<node>/worker/<worker>`. Each push is a PUT of the whole
registry (it replaces the group), so a restarted sidecar never leaves old series behind in its
group. Prometheus must scrape the gateway with `honor_labels: true`, otherwise `node` and `job`
become `exported_node` and `exported_job`; the extender's catalog reads
`max by (node) (deadline_miss_ratio)` (several workers on one node: the worst one counts).

Design decisions:
- The application is never blocked: events only touch the Tracker; network I/O happens here,
  in a daemon thread, with an explicit timeout per request.
- An outage keeps nothing queued: each push sends the current state, so memory stays bounded and
  counters lose nothing (they are cumulative). Retries back off exponentially from
  `backoff_initial_s` to `backoff_max_s`.
- One warning when an outage starts and one line when it ends, not one per attempt or event.
- `close()` (on SIGTERM) pushes a last time and then deletes the group: pushed metrics never
  expire on a Pushgateway, and a stopped worker must not keep steering the scheduler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from prometheus_client import CollectorRegistry, delete_from_gateway, push_to_gateway

from extender.sidecar.settings import JOB, PushSettings

log = logging.getLogger(__name__)

PushFn = Callable[..., None]
DeleteFn = Callable[..., None]
PUSH_ERRORS = (OSError, HTTPException)
"""What a push can raise: URLError/HTTPError/timeouts are OSErrors; HTTPException covers a
malformed answer. Anything else is a bug and is left to surface."""


@dataclass(frozen=True)
class PushStatus:
    """The pusher's health, for /healthz and tests."""

    pushes: int
    """Successful pushes since start."""
    failures: int
    """Failed attempts since start."""
    consecutive_failures: int
    """0 when the gateway answered the last attempt."""
    last_error: str | None


class Pusher:
    """Pushes `registry` to `gateway` every `settings.interval_s` from a background thread.

    `push`/`delete` default to prometheus_client's `push_to_gateway`/`delete_from_gateway`; tests
    may wrap them. Call `start()`, then `close()` on shutdown.
    """

    def __init__(self, registry: CollectorRegistry, gateway: str, *,
                 grouping_key: Mapping[str, str], settings: PushSettings, job: str = JOB,
                 push: PushFn = push_to_gateway, delete: DeleteFn = delete_from_gateway) -> None:
        self.gateway = gateway
        self.job = job
        self.grouping_key = dict(grouping_key)
        self._registry = registry
        self._settings = settings
        self._push = push
        self._delete = delete
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pushes = 0
        self._failures = 0
        self._consecutive = 0
        self._last_error: str | None = None

    @property
    def group(self) -> str:
        """The group's path on the gateway, e.g. `/metrics/job/extract-deadline/node/n1/...`."""
        parts = [f"job/{self.job}"] + [f"{k}/{v}" for k, v in self.grouping_key.items()]
        return "/metrics/" + "/".join(parts)

    def start(self) -> Pusher:
        """Start the background thread; the first push happens at once."""
        self._thread = threading.Thread(target=self._loop, name="deadline-pusher", daemon=True)
        self._thread.start()
        return self

    def status(self) -> PushStatus:
        """Counts of pushes and failures so far."""
        with self._lock:
            return PushStatus(self._pushes, self._failures, self._consecutive, self._last_error)

    def push_once(self) -> bool:
        """One push of the current state; False (after logging once per outage) if it failed."""
        return self._attempt("push", lambda: self._push(
            self.gateway, job=self.job, registry=self._registry,
            grouping_key=self.grouping_key, timeout=self._settings.timeout_s))

    def close(self, *, delete_group: bool = True) -> bool:
        """Stop the thread, push a last time, then delete the group (unless told not to).

        Returns True when the group was deleted (or deletion was not asked for). Waits at most
        about two push timeouts.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._settings.timeout_s + 1.0)
        self.push_once()
        if not delete_group:
            return True
        deleted = self._attempt("delete", lambda: self._delete(
            self.gateway, job=self.job, grouping_key=self.grouping_key,
            timeout=self._settings.timeout_s))
        if not deleted:
            log.warning("could not delete %s on %s: its last values stay on the gateway until "
                        "deleted by hand", self.group, self.gateway)
        return deleted

    def next_delay(self) -> float:
        """Seconds until the next attempt: the interval, or the backoff after failures."""
        with self._lock:
            failures = self._consecutive
        if failures == 0:
            return self._settings.interval_s
        backoff = self._settings.backoff_initial_s * 2.0 ** (failures - 1)
        return min(backoff, self._settings.backoff_max_s)

    def _loop(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            self.push_once()
            delay = self.next_delay()

    def _attempt(self, what: str, call: Callable[[], Any]) -> bool:
        try:
            call()
        except PUSH_ERRORS as exc:
            with self._lock:
                self._failures += 1
                self._consecutive += 1
                first = self._consecutive == 1
                self._last_error = f"{what}: {exc}"
            if first:
                log.warning("Pushgateway %s unreachable (%s: %s); tasks are still counted, "
                            "retrying with backoff up to %gs (logged once per outage)",
                            self.gateway, what, exc, self._settings.backoff_max_s)
            return False
        with self._lock:
            recovered = self._consecutive
            self._consecutive = 0
            if what == "push":
                self._pushes += 1
        if recovered:
            log.info("Pushgateway %s reachable again after %d failed attempts", self.gateway,
                     recovered)
        return True
