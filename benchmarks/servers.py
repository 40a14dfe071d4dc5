"""Start `benchmarks.bench_app` servers in processes of their own and look at them from outside.

The server under test never shares a process (or a GIL) with the load generator or with this
orchestrator. Its memory is read from `/proc/<worker pid>/status`, the number a container's
memory limit is held against.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from extender.localserver import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0  # priming a 5000-node cache on a busy 2-core machine takes a few seconds


class ServerFailed(RuntimeError):
    """A benchmark server did not start, or died."""


@dataclass(frozen=True)
class Memory:
    """One worker process's memory, in bytes."""

    pid: int
    rss: int
    """VmRSS: resident now."""
    hwm: int
    """VmHWM: the peak resident size since the worker started."""


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry))
    return sorted(out)


def memory(pid: int) -> Memory:
    """VmRSS and VmHWM of `pid`."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024  # the kernel writes kB (KiB)
    return Memory(pid, values.get("VmRSS", 0), values.get("VmHWM", 0))


class BenchServer:
    """`python -m benchmarks.bench_app KIND` on a free loopback port (a context manager)."""

    def __init__(self, kind: str, *, nodes: int, config: Path | None = None,
                 workers: int | None = None, threads: int | None = None,
                 monitoring: bool = False, extra: Sequence[str] = ()) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.monitoring_port = free_port() if monitoring else self.port
        """The Monitoring API's port: its own listener with `monitoring`, else the verbs' one."""
        self.cmd = [sys.executable, "-m", "benchmarks.bench_app", kind,
                    "--bind", f"127.0.0.1:{self.port}", "--nodes", str(nodes), *extra]
        if monitoring:
            self.cmd += ["--monitoring-bind", f"127.0.0.1:{self.monitoring_port}"]
        if config is not None:
            self.cmd += ["--config", str(config)]
        if workers is not None:
            self.cmd += ["--workers", str(workers)]
        if threads is not None:
            self.cmd += ["--threads", str(threads)]
        self._log = tempfile.NamedTemporaryFile(prefix=f"bench-{kind}-", suffix=".log")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BenchServer:
        """Start the server and wait until its workers answer /healthz."""
        self._proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=self._log, stderr=self._log,
                                      start_new_session=True)
        try:
            state = wait_until(self._state, timeout_s=START_TIMEOUT_S, interval_s=0.2,
                               what=f"the {self.kind} server on {self.url}")
        except TimeoutError as exc:
            state = str(exc)
        if state != "up":
            tail = self.log_tail()
            self.stop()
            raise ServerFailed(f"{self.kind} server did not start ({state}): {' '.join(self.cmd)}"
                               f"\n{tail}")
        return self

    def _state(self) -> str | None:
        """"up", "exited", or None while starting."""
        if self._proc is None or self._proc.poll() is not None:
            return "exited"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return "up" if conn.getresponse().status == 200 else None
        finally:
            conn.close()

    def workers(self) -> list[Memory]:
        """Memory of each gunicorn worker process."""
        if self._proc is None:
            return []
        out = []
        for pid in children(self._proc.pid):
            try:
                out.append(memory(pid))
            except OSError:
                continue  # exited between the listing and the read
        return out

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Quick shutdown (SIGINT: gunicorn does not wait for kept-alive connections), then KILL."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self._log.close()

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
