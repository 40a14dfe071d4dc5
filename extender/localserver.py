"""A child process serving HTTP on a free loopback port, started and stopped cleanly.

Used by the demo rig, the simulator's HTTP mode, tests and benchmarks. Nothing here talks to
anything but 127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests


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


@dataclass
class LocalServer:
    """A child process serving HTTP on 127.0.0.1:port."""

    name: str
    port: int
    argv: list[str]
    workdir: Path
    ready_path: str
    scheme: str = "http"
    ready_options: dict[str, Any] = field(default_factory=dict)
    """Extra `requests.get` arguments of the readiness probe (verify, cert, auth), for a server
    behind TLS or authentication."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> LocalServer:
        """Start the process and wait until its readiness URL answers 200."""
        self._log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir)

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"{self.name} exited early: {self.log_tail()}")
            return requests.get(self.url + self.ready_path, timeout=1,
                                **self.ready_options).status_code == 200

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
