"""Service discovery: the partition's worker pods and their deadline sidecars as scrape targets.

Source of truth: the partition controller's ConfigMap (`partition` in its namespace), key
`resources.json` = `{"workers": [{"node", "pod", "ip", "cpus", "memory_bytes", "gpus", "ready"}]}`,
mounted into the extender pod as a volume. Reading the mounted file needs no RBAC and no API
call; kubelet refreshes it within about a minute of a change (its sync period plus the ConfigMap
cache TTL), and Prometheus' HTTP SD polls us, so new workers are scraped without any restart.
Another source (e.g. a Kubernetes API lister) plugs in through the `WorkerSource` protocol.

    GET /api/v1/sd/targets  -> [{"targets": ["10.1.2.3:9465"], "labels": {"node", "worker",
                                 "namespace", "component", "ready", ["__metrics_path__"]}}]

`write_file_sd()` writes the same list for Prometheus' `file_sd_configs`, atomically.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from extender.errors import ExtenderError
from extender.monitoring.catalog import DiscoverySettings
from extender.monitoring.model import TargetGroup


class DiscoveryUnavailable(ExtenderError):
    """The worker list cannot be read right now (HTTP 503: Prometheus keeps its last targets)."""


class DiscoveryNotConfigured(ExtenderError):
    """No worker source is configured (HTTP 404)."""


@dataclass(frozen=True, slots=True)
class Worker:
    node: str
    pod: str
    ip: str
    ready: bool


class WorkerSource(Protocol):
    def workers(self) -> Sequence[Worker]:
        """The partition's workers; DiscoveryUnavailable when they cannot be read."""
        ...


class _Entry(msgspec.Struct, frozen=True):
    node: str
    pod: str
    ip: str | None = None
    ready: bool = False


class _Document(msgspec.Struct, frozen=True):
    workers: list[_Entry]


class ResourcesFile:
    """Workers from a mounted `resources.json`; re-read only when the file changes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._workers: tuple[Worker, ...] = ()

    def workers(self) -> Sequence[Worker]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                if stamp != self._seen:
                    doc = msgspec.json.decode(self.path.read_bytes(), type=_Document)
                    self._workers = tuple(Worker(e.node, e.pod, e.ip or "", e.ready)
                                          for e in doc.workers)
                    self._seen = stamp
                return self._workers
        except OSError as exc:
            raise DiscoveryUnavailable(
                f"{self.path}: cannot read: {exc.strerror or exc} (is the partition ConfigMap "
                f"mounted there?)") from exc
        except msgspec.ValidationError as exc:
            raise DiscoveryUnavailable(f"{self.path}: not a partition resources.json: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise DiscoveryUnavailable(f"{self.path}: invalid JSON: {exc}") from exc


def target_groups(workers: Iterable[Worker], settings: DiscoverySettings) -> list[TargetGroup]:
    """One group per scrape target: each worker (when `worker_port` is set) and its sidecar.

    Workers without a pod IP (not yet scheduled) are skipped; so are unready ones when
    `ready_only` is set. Sorted by node, then component, so the answer is stable.
    """
    components = [(name, port, path) for name, port, path in (
        ("worker", settings.worker_port, settings.worker_metrics_path),
        ("deadline-sidecar", settings.sidecar_port, settings.sidecar_metrics_path),
    ) if port]
    groups = []
    for worker in sorted(workers, key=lambda w: (w.node, w.pod)):
        if not worker.ip or (settings.ready_only and not worker.ready):
            continue
        host = f"[{worker.ip}]" if ":" in worker.ip else worker.ip
        for component, port, path in components:
            labels = {"node": worker.node, "worker": worker.pod, "namespace": settings.namespace,
                      "component": component, "ready": str(worker.ready).lower()}
            if path != "/metrics":
                labels["__metrics_path__"] = path
            groups.append(TargetGroup(targets=[f"{host}:{port}"], labels=labels))
    return groups


def write_file_sd(path: Path | str, groups: Sequence[TargetGroup]) -> None:
    """Write `groups` for Prometheus `file_sd_configs` (JSON), atomically.

    Prometheus watches the file and may read it at any moment: the list is written to a temporary
    file in the same directory and renamed over `path`, so it never sees half a file.
    OSError when the directory is not writable.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(msgspec.json.format(msgspec.json.encode(groups), indent=1))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
