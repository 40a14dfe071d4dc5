"""The two listeners of `extender serve`, with real sockets against the real process: the verbs
on their own port and threads, stalled clients cut after `server.read_timeout_s` without holding
a verb thread, slow Monitoring API calls on threads of their own.

Prometheus is a loopback socket that accepts and never answers (a hung Prometheus): refreshes
fail (the extender answers neutrally, as designed) and every history query waits its timeout.
No timing is asserted beyond ordering: the filter answers while the stalled clients are still
connected and the slow queries still waiting.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from extender import localserver
from extender.serving import INCOMPLETE, UNFRAMED, request_end
from tests.extenders import serve_argv
from tests.support import CONFIG, REPO

READ_TIMEOUT_S = 1.0
HISTORY_TIMEOUT_S = 6.0
FILTER_BODY = json.dumps({"Pod": {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}},
                          "NodeNames": ["node-a", "node-b"]}).encode()


class HungPrometheus:
    """Accepts connections and reads them, never answers (until closed)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


def write_config(workdir: Path, prometheus_url: str, **server: Any) -> Path:
    from extender.settings import merge, read_yaml

    path = workdir / "extender.yaml"
    path.write_text(yaml.safe_dump(merge(read_yaml(CONFIG), {
        "catalog_file": str(REPO / "config" / "catalog.yaml"),
        "monitoring": {"catalog_file": str(REPO / "config" / "monitoring.yaml"),
                       "query_timeout_s": HISTORY_TIMEOUT_S},
        "policy": {"learned_model": str(REPO / "config" / "learned-model.json")},
        "prometheus": {"url": prometheus_url, "query_timeout_s": 1, "retries": 0},
        "cache": {"refresh_interval_s": 5},
        "server": {"read_timeout_s": READ_TIMEOUT_S, **server},
    })))
    return path


@dataclass
class Serve:
    verbs: localserver.LocalServer
    monitoring_port: int | None

    @property
    def port(self) -> int:
        return self.verbs.port


@pytest.fixture(scope="module")
def prometheus() -> Iterator[HungPrometheus]:
    hung = HungPrometheus()
    yield hung
    hung.close()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, prometheus: HungPrometheus) -> Iterator[Serve]:
    workdir = tmp_path_factory.mktemp("listeners")
    config = write_config(workdir, f"http://127.0.0.1:{prometheus.port}")
    port, monitoring = localserver.free_port(), localserver.free_port()
    with localserver.LocalServer("extender", port, serve_argv(config, port, monitoring),
                                 workdir, "/healthz").start(timeout_s=60) as server:
        yield Serve(server, monitoring)


def request(port: int, method: str, path: str, body: bytes | None = None,
            timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stall(port: int, head_only: bool = False) -> socket.socket:
    """A client that sends a filter's headers (and one byte of its body), then waits."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(FILTER_BODY))
    sock.sendall(head if head_only else head + b"\r\n" + FILTER_BODY[:1])
    return sock


def response(sock: socket.socket) -> tuple[int, bytes]:
    """The next HTTP response on `sock` (status, body)."""
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, answer.read()


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(sock: socket.socket) -> bool:
    """Nothing to read yet: neither an answer nor the server's close."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


# --- the ports ---------------------------------------------------------------------------------


def test_verbs_and_monitoring_answer_on_their_own_ports(serve: Serve) -> None:
    assert serve.monitoring_port is not None
    status, body = request(serve.port, "POST", "/filter", FILTER_BODY)
    assert status == 200 and json.loads(body)["NodeNames"] == ["node-a", "node-b"]
    for path in ("/metrics", "/api/v1/nodes", "/api/v1/config"):
        status, body = request(serve.port, "GET", path)
        assert status == 404 and "listener of their own" in json.loads(body)["Error"]
    status, body = request(serve.monitoring_port, "GET", "/metrics")
    assert status == 200 and b'extender_requests_total{code="200",verb="filter"}' in body
    status, _ = request(serve.monitoring_port, "GET", "/api/v1/config")
    assert status == 200
    # The verbs are refused on the monitoring port (mTLS only guards the verbs' one).
    for verb in ("filter", "prioritize", "bind", "preempt"):
        status, _ = request(serve.monitoring_port, "POST", f"/{verb}", FILTER_BODY)
        assert status == 404
    for port in (serve.port, serve.monitoring_port):
        for path in ("/healthz", "/readyz"):
            status, _ = request(port, "GET", path)
            assert status == 200


def test_stalled_clients_hold_no_verb_thread_and_are_cut_after_the_read_timeout(
        serve: Serve) -> None:
    # More stalled clients than verb threads (2), mid-body and mid-headers.
    stalled = [stall(serve.port) for _ in range(4)] + [stall(serve.port, head_only=True)
                                                      for _ in range(2)]
    try:
        status, body = request(serve.port, "POST", "/filter", FILTER_BODY)
        assert status == 200 and json.loads(body)["Error"] == ""
        # Answered while every stalled client was still connected, not after they were cut.
        assert all(still_open(sock) for sock in stalled)
        assert all(closed_by_server(sock, timeout_s=READ_TIMEOUT_S + 10) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
    status, _ = request(serve.port, "POST", "/filter", FILTER_BODY)
    assert status == 200


def test_a_client_that_keeps_trickling_is_cut_too(serve: Serve) -> None:
    # One byte at a time, each well within the read timeout: the whole request is late.
    sock = stall(serve.port)
    try:
        for byte in FILTER_BODY[1:40]:
            sock.sendall(bytes([byte]))
            if closed_by_server(sock, timeout_s=0.2):
                break
        else:
            pytest.fail("a trickling client was served for longer than the read timeout")
    finally:
        sock.close()


def test_a_request_that_arrives_in_pieces_within_the_timeout_is_answered(serve: Serve) -> None:
    sock = stall(serve.port)
    try:
        sock.sendall(FILTER_BODY[1:])
        sock.settimeout(10)
        assert response(sock)[0] == 200
        # Kept alive: the next request on the same connection is answered too.
        sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(FILTER_BODY), FILTER_BODY))
        assert response(sock)[0] == 200
    finally:
        sock.close()


def test_expect_100_continue_gets_its_interim_answer_before_the_body(serve: Serve) -> None:
    sock = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
    try:
        sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(FILTER_BODY))
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(FILTER_BODY)
        status, body = response(sock)
        assert status == 200 and json.loads(body)["Error"] == ""
    finally:
        sock.close()


def test_a_body_declared_far_beyond_the_limit_gets_413_without_being_read(serve: Serve) -> None:
    sock = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
    try:
        sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{")
        assert sock.recv(1024).startswith(b"HTTP/1.1 413 ")
        assert closed_by_server(sock, timeout_s=10)
    finally:
        sock.close()


def test_malformed_framing_gets_400_from_the_parser(serve: Serve) -> None:
    sock = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
    try:
        sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n{}")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400 ")
    finally:
        sock.close()


def test_slow_history_queries_wait_on_monitoring_threads_not_verb_threads(serve: Serve) -> None:
    assert serve.monitoring_port is not None
    answers: list[int] = []

    def history() -> None:
        status, _ = request(serve.monitoring_port or 0, "GET",
                            "/api/v1/metrics/node_ready?level=node&start=-10m&step=60",
                            timeout=HISTORY_TIMEOUT_S + 20)
        answers.append(status)

    slow = [threading.Thread(target=history) for _ in range(4)]  # more than both pools' threads
    for thread in slow:
        thread.start()
    try:
        for _ in range(3):
            status, _ = request(serve.port, "POST", "/filter", FILTER_BODY)
            assert status == 200
        assert not answers, "the history queries returned before the filter calls: no overlap"
    finally:
        for thread in slow:
            thread.join()
    # The hung Prometheus makes history unavailable (503), answered in time, never a hang.
    assert answers == [503] * 4


# --- the former single listener, and bad input ---------------------------------------------------


def test_an_empty_monitoring_bind_serves_everything_on_the_verbs_port(
        tmp_path: Path, prometheus: HungPrometheus) -> None:
    config = write_config(tmp_path, f"http://127.0.0.1:{prometheus.port}")
    port = localserver.free_port()
    with localserver.LocalServer("extender", port, serve_argv(config, port, None), tmp_path,
                                 "/healthz").start(timeout_s=60):
        assert request(port, "POST", "/filter", FILTER_BODY)[0] == 200
        assert request(port, "GET", "/metrics")[0] == 200
        assert request(port, "GET", "/api/v1/config")[0] == 200


def serve_fails(config: Path, *flags: str) -> str:
    port = localserver.free_port()
    argv = serve_argv(config, port, localserver.free_port())
    done = subprocess.run([*argv, *flags], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 2, done.stderr
    return done.stderr


def test_a_monitoring_port_in_use_fails_serve_with_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9")
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        err = serve_fails(config, "--monitoring-bind", f"127.0.0.1:{port}")
        assert f"--monitoring-bind: cannot listen on 127.0.0.1:{port}" in err
    finally:
        taken.close()
    err = serve_fails(config, "--monitoring-bind", "nonsense")
    assert "--monitoring-bind: expected HOST:PORT, got 'nonsense'" in err
    err = serve_fails(config, "--monitoring-threads", "0")
    assert "--monitoring-threads must be >= 1" in err


COMPLETE = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /filter HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=1\r\n{\r\n0\r\nX-T: 1\r\n\r\n",
]


@pytest.mark.parametrize("first", COMPLETE)
@pytest.mark.parametrize("after", [b"", b"GET / HTTP/1.1\r\n"])  # pipelined bytes stay
def test_request_end_finds_the_end_of_a_complete_request(first: bytes, after: bytes) -> None:
    assert request_end(first + after, max_bytes=4096) == len(first)
    assert request_end(bytearray(first + after), max_bytes=4096) == len(first)
    for cut in range(1, len(first)):
        assert request_end(first[:cut], max_bytes=4096) == INCOMPLETE, first[:cut]


@pytest.mark.parametrize("data", [
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n",  # beyond max_bytes
    b"GET / HTTP/1.1\r\nX: " + b"a" * 70000,  # headers without their end
])
def test_request_end_leaves_bad_framing_to_the_parser(data: bytes) -> None:
    assert request_end(data, max_bytes=4096) == UNFRAMED
