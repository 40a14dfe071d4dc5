"""Wires one sidecar together: tracker, metrics registry, HTTP endpoint, event file, pusher.

Start order: tracker and registry first, then the pusher (the group appears at once), then the
event sources. Stop order is the reverse of what feeds the state: event sources first (no new
events, the event file drained), then the pusher's last push and the deletion of its group.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from extender.sidecar.http import HttpServer, create_sidecar_app
from extender.sidecar.push import Pusher
from extender.sidecar.series import deadline_registry
from extender.sidecar.settings import SidecarSettings
from extender.sidecar.tail import EventFileTailer
from extender.sidecar.tracker import Clock, Tracker


@dataclass
class Sidecar:
    """The running parts of one sidecar; any of the edges may be absent."""

    tracker: Tracker
    registry: CollectorRegistry
    pusher: Pusher | None = None
    server: HttpServer | None = None
    tailer: EventFileTailer | None = None

    def start(self) -> Sidecar:
        """Start the pusher, then the event sources."""
        if self.pusher is not None:
            self.pusher.start()
        if self.server is not None:
            self.server.start()
        if self.tailer is not None:
            self.tailer.start()
        return self

    def stop(self) -> bool:
        """Stop the event sources, push a last time and delete the group.

        Returns False when the group could not be deleted (the gateway was unreachable).
        """
        if self.server is not None:
            self.server.stop()
        if self.tailer is not None:
            self.tailer.stop()
        return self.pusher.close() if self.pusher is not None else True


def build_sidecar(settings: SidecarSettings, *, node: str, worker: str,
                  pushgateway: str | None, listen: tuple[str, int] | None = None,
                  profile: Mapping[str, float] | None = None,
                  events_file: Path | str | None = None, clock: Clock = time.time) -> Sidecar:
    """A sidecar for `worker` on `node` (not started): pushes to `pushgateway` when given,
    serves HTTP on `listen` (host, port; port 0 = any free port) when given, and tails
    `events_file` when given."""
    tracker = Tracker(settings, profile=profile, clock=clock)
    registry = deadline_registry(tracker.stats)
    pusher = None
    if pushgateway:
        pusher = Pusher(registry, pushgateway, grouping_key={"node": node, "worker": worker},
                        settings=settings.push)
    server = None
    if listen is not None:
        status = pusher.status if pusher is not None else (lambda: None)
        server = HttpServer(create_sidecar_app(tracker, registry, push_status=status), *listen)
    tailer = EventFileTailer(events_file, tracker) if events_file else None
    return Sidecar(tracker, registry, pusher, server, tailer)
