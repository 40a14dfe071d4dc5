"""Closed-loop, keep-alive load generators in a process of their own.

- `wrk` (Debian package `wrk`, installed by `hack/install-deps.sh --bench`), driven by a Lua script
  that POSTs one body and prints its figures as JSON. Preferred: it is C and costs the server's
  CPU little.
- A Python fallback with the same interface (`python -m benchmarks.load ...`): one thread per
  connection, each an `http.client` connection reused for every request. It is slower than wrk,
  so its throughput figures are a lower bound; the benchmark says which client it used.

Each connection sends its next request when the previous answer has arrived (closed loop), as
kube-scheduler's scheduling cycle does. Every request is about another pod (`bodies.fill`).
Non-200 answers and socket errors count as errors.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.bodies import SEQ_MARKER, fill

REPO = Path(__file__).resolve().parents[1]
CLIENTS = ("wrk", "python")
REQUEST_TIMEOUT_S = 30.0  # a 5000-node full-Nodes call takes well under this

WRK_SCRIPT = """\
-- POST the body in $BENCH_BODY_FILE, its $BENCH_SEQ_MARKER replaced by a per-request number
-- from $BENCH_SEQ_START on (benchmarks/bodies.py: fill); print the figures as one JSON line.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local marker, parts, from = os.getenv("BENCH_SEQ_MARKER"), {}, 1
while marker and marker ~= "" do
  local i, j = string.find(body, marker, from, true)
  if not i then break end
  parts[#parts + 1] = string.sub(body, from, i - 1)
  from = j + 1
end
parts[#parts + 1] = string.sub(body, from)

if #parts > 1 then
  local seq = tonumber(os.getenv("BENCH_SEQ_START") or "1") - 1
  function request()
    seq = seq + 1
    return wrk.format(nil, nil, nil, table.concat(parts, string.format("%012d", seq)))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_s":%.6f,"errors":%d,"p50_ms":%.4f,"p99_ms":%.4f,"max_ms":%.4f}\\n',
    summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


class LoadError(RuntimeError):
    """The load generator could not run or reached no server."""


@dataclass(frozen=True)
class LoadResult:
    """Figures of one closed-loop run."""

    client: str
    connections: int
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def default_client() -> str:
    """`wrk` when installed, else the Python fallback."""
    return "wrk" if shutil.which("wrk") else "python"


def run_load(url: str, body_file: Path, *, connections: int, duration_s: float,
             client: str | None = None, first_seq: int = 1) -> LoadResult:
    """POST `body_file` to `url` over `connections` keep-alive connections for `duration_s`
    (wrk rounds it up to whole seconds); the requests are about pods `first_seq`, +1, ..."""
    client = client or default_client()
    if connections < 1 or duration_s <= 0:
        raise ValueError("connections must be >= 1 and duration_s > 0")
    if client == "wrk":
        return _run_wrk(url, body_file, connections, duration_s, first_seq)
    if client == "python":
        cmd = [sys.executable, "-m", "benchmarks.load", url, str(body_file),
               "--connections", str(connections), "--duration", str(duration_s),
               "--first-seq", str(first_seq)]
        return _parse(client, connections, _run(cmd, duration_s, os.environ.copy()))
    raise ValueError(f"unknown load client {client!r}: expected one of {CLIENTS}")


def _run_wrk(url: str, body_file: Path, connections: int, duration_s: float,
             first_seq: int) -> LoadResult:
    if shutil.which("wrk") is None:
        raise LoadError("wrk is not installed: run `bash hack/install-deps.sh --bench` "
                        "or use the Python client (--client python)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{math.ceil(duration_s)}s",
               f"--timeout={REQUEST_TIMEOUT_S:.0f}s", "-s", script.name, url]
        env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_SEQ_MARKER": SEQ_MARKER,
               "BENCH_SEQ_START": str(first_seq)}
        return _parse("wrk", connections, _run(cmd, duration_s, env))
    finally:
        os.unlink(script.name)


def _run(cmd: list[str], duration_s: float, env: dict[str, str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=REPO,
                              timeout=duration_s + REQUEST_TIMEOUT_S + 10)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{cmd[0]} did not finish: {exc}") from exc
    if done.returncode != 0:
        raise LoadError(f"{' '.join(cmd)} exited {done.returncode}: "
                        f"{(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def _parse(client: str, connections: int, stdout: str) -> LoadResult:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            figures = json.loads(line)
            return LoadResult(client=client, connections=connections,
                              requests=int(figures["requests"]),
                              duration_s=float(figures["duration_s"]),
                              errors=int(figures["errors"]), p50_ms=float(figures["p50_ms"]),
                              p99_ms=float(figures["p99_ms"]), max_ms=float(figures["max_ms"]))
    raise LoadError(f"{client} printed no figures: {stdout.strip()[-500:]}")


# --- the Python fallback (runs in its own process) ------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """The `q` (0..100) percentile of ascending `sorted_values`, nearest-rank (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST on a kept-alive connection: (status, body)."""
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def python_load(url: str, body: bytes, connections: int, duration_s: float,
                first_seq: int = 1) -> dict[str, float]:
    """The Python closed loop; figures as the wrk script prints them."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    latencies: list[list[float]] = [[] for _ in range(connections)]
    sequence = itertools.count(first_seq)
    templated = SEQ_MARKER.encode() in body
    errors = [0] * connections
    started = time.perf_counter()
    deadline = started + duration_s

    def loop(k: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        try:
            while time.perf_counter() < deadline:
                payload = fill(body, next(sequence)) if templated else body
                t0 = time.perf_counter()
                try:
                    status, _ = post(conn, path, payload)
                except (OSError, http.client.HTTPException):
                    errors[k] += 1
                    conn.close()
                    continue
                latencies[k].append(time.perf_counter() - t0)
                if status != 200:
                    errors[k] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    merged = sorted(x * 1e3 for per in latencies for x in per)
    return {"requests": len(merged), "duration_s": elapsed, "errors": sum(errors),
            "p50_ms": percentile(merged, 50), "p99_ms": percentile(merged, 99),
            "max_ms": merged[-1] if merged else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load",
                                     description="Python keep-alive load generator (wrk fallback)")
    parser.add_argument("url")
    parser.add_argument("body", type=Path, help="file holding the request body")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds")
    parser.add_argument("--first-seq", type=int, default=1, help="pod number of the first request")
    args = parser.parse_args(argv)
    figures = python_load(args.url, args.body.read_bytes(), args.connections, args.duration,
                          args.first_seq)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
