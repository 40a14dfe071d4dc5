"""Start real Prometheus and Pushgateway servers on free loopback ports (tests, demo, benchmarks).

Debian's `prometheus` and `prometheus-pushgateway` packages provide the binaries; `make` installs
them when missing. Each server gets its own temporary directory and is stopped (SIGTERM, then
SIGKILL) by `stop()` or on context exit. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests
import yaml

PROMETHEUS_BIN = "prometheus"
PUSHGATEWAY_BIN = "prometheus-pushgateway"


class ServerError(RuntimeError):
    """A local server could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], *, timeout_s: float = 30.0, interval_s: float = 0.1,
               what: str = "condition") -> Any:
    """Poll `condition` until it returns a truthy value; raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}") from last_exc


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerError(
            f"{name} is not installed: run `make deps` (installs Debian's prometheus and "
            f"prometheus-pushgateway packages)"
        )
    return path


@dataclass
class LocalServer:
    """A child process serving HTTP on 127.0.0.1:port."""

    name: str
    port: int
    argv: list[str]
    workdir: Path
    ready_path: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> LocalServer:
        """Start the process and wait until its readiness URL answers 200."""
        self._log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir)

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"{self.name} exited early: {self.log_tail()}")
            return requests.get(self.url + self.ready_path, timeout=1).status_code == 200

        try:
            wait_until(ready, timeout_s=timeout_s, what=f"{self.name} on {self.url}")
        except (TimeoutError, ServerError):
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server logged (for error messages)."""
        path = self.workdir / f"{self.name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job for the local Prometheus."""

    job: str
    targets: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    honor_labels: bool = False
    metrics_path: str = "/metrics"
    extra: dict[str, Any] = field(default_factory=dict)
    """Additional scrape_config keys, e.g. `http_sd_configs` (then `targets` may be empty)."""


def prometheus_config(targets: Iterable[ScrapeTarget], scrape_interval_s: float = 1.0) -> dict[str, Any]:
    """A prometheus.yml scraping `targets` every `scrape_interval_s`."""
    jobs = []
    for target in targets:
        job: dict[str, Any] = {
            "job_name": target.job,
            "honor_labels": target.honor_labels,
            "metrics_path": target.metrics_path,
        }
        if target.targets:
            job["static_configs"] = [{"targets": list(target.targets), "labels": target.labels}]
        job.update(target.extra)
        jobs.append(job)
    # Prometheus durations take integers only: 0.5 s must be written 500ms.
    interval = f"{max(round(scrape_interval_s * 1000), 100)}ms"
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": jobs}


def prometheus(targets: Iterable[ScrapeTarget], *, scrape_interval_s: float = 1.0,
               port: int | None = None, workdir: Path | None = None) -> LocalServer:
    """A (not yet started) Prometheus scraping `targets`; call `.start()`."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="prometheus-"))
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, scrape_interval_s)))
    port = port or free_port()
    argv = [
        _binary(PROMETHEUS_BIN),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=1h",
    ]
    return LocalServer("prometheus", port, argv, workdir, "/-/ready")


def pushgateway(*, port: int | None = None, workdir: Path | None = None) -> LocalServer:
    """A (not yet started) Pushgateway on loopback; call `.start()`."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pushgateway-"))
    port = port or free_port()
    argv = [_binary(PUSHGATEWAY_BIN), f"--web.listen-address=127.0.0.1:{port}"]
    return LocalServer("pushgateway", port, argv, workdir, "/-/ready")
