"""Serve the extender: the verbs on one listener, the Monitoring API, /metrics and health on another.

Two listeners, one process per worker, one Extender (metrics cache, decision log) shared by both:

- **Verbs** (`--bind`, default :8888; filter/prioritize/bind/preempt, plus /healthz and /readyz):
  gunicorn's gthread worker, the server the HTTP benchmark measures, with its event loop taught
  to read each request *whole* before a thread sees it (`WholeRequestWorker`). Stock gthread hands
  a connection to a pool thread as soon as it is readable and then parses it with blocking reads:
  a client that sends its headers and one byte of body, then waits, holds that thread, and with
  two threads two such clients stop scheduling. Here the event loop reads without blocking until
  the request's framing (Content-Length, or chunked) says it is complete, then the thread parses
  it from memory: a stalled client holds no thread at all, only a socket, and is closed when its
  request is not complete `server.read_timeout_s` after its first byte (or its TLS handshake has
  not finished that long after connecting). TLS handshakes run non-blocking in the event loop
  too, with the client certificate required when `server.client_ca_file` is set (mTLS).
- **Monitoring** (`--monitoring-bind`, default :8889; the Monitoring API, /metrics, health):
  cheroot, a well-kept threaded WSGI server, started in each gunicorn worker after fork (as the
  refresher is), with threads of its own (`--monitoring-threads`): a slow history query waits
  for Prometheus on a monitoring thread, never on a verb thread. Same serving certificate, no
  client certificate (its callers authenticate with bearer tokens); its per-read timeout is
  `server.read_timeout_s`. With `--workers` > 1 every worker binds the monitoring port with
  SO_REUSEPORT and the kernel spreads connections over them, as gunicorn's shared socket does
  for the verbs: each worker answers for its own cache, as /metrics did before. (Only-worker-0
  would need a stable worker index, which gunicorn does not have across restarts.) The port is
  checked once before gunicorn starts, without SO_REUSEPORT, so an address in use fails
  `extender serve` instead of being silently shared with another process.
  `--monitoring-bind ""` serves everything on `--bind` (the former single listener).

Worker arrangement: one gthread worker with several threads by default. Every gunicorn worker
process holds its own metrics cache and refresher (memory is not shared across processes), so
more workers multiply the Prometheus query load and memory; threads share one cache. gthread keeps
connections alive, which kube-scheduler's Go client reuses. The app (and so the refresher thread)
is created in the worker after fork, never under --preload, because threads do not survive fork.

Used by `extender serve`, the benchmarks and the simulator's HTTP mode (`extender.sim.http`).
"""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from gunicorn import http as gunicorn_http
from gunicorn import sock as gunicorn_sock
from gunicorn.workers.gthread import TConn, ThreadWorker

from extender.errors import ConfigError
from extender.settings import ServerSettings

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from cheroot.wsgi import Server as CherootServer

log = logging.getLogger(__name__)

KEEPALIVE_S = 75  # above kube-scheduler's idle-connection reuse, below typical LB idle timeouts
SWITCH_INTERVAL_S = 0.0005  # see run_gunicorn
MAX_HEAD_BYTES = 64 * 1024
"""Request line and headers: beyond this without their end, the parser's own limits answer."""
BODY_HEADROOM_BYTES = 1024 * 1024
"""Requests up to max_body_bytes + this are read whole (the app answers 413 past max_body_bytes
in the verb's wire form); a declared length beyond gets a plain 413 from the event loop."""
RECV_BYTES = 256 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The listener and worker flags (`--bind`, `--monitoring-bind`, `--workers`, `--threads`)."""
    parser.add_argument("--bind", default="0.0.0.0:8888",
                        help="HOST:PORT of the scheduler's verbs (default 0.0.0.0:8888)")
    parser.add_argument("--monitoring-bind", default="0.0.0.0:8889",
                        help="HOST:PORT of the Monitoring API, /metrics and health (default "
                             "0.0.0.0:8889); \"\" serves them on --bind, next to the verbs")
    parser.add_argument("--monitoring-threads", type=int, default=4,
                        help="threads of the monitoring listener per worker (default 4; they "
                             "mostly wait for Prometheus)")
    parser.add_argument("--workers", type=int, default=1,
                        help="gunicorn worker processes; each has its own cache (default 1)")
    # Two threads: they only ever parse complete requests and decide, which is CPU-bound; more
    # threads only contend for the GIL (measured: with 4 threads a 500-node prioritize p99 rose
    # from ~1.8 ms to ~3.9 ms and throughput fell). Slow callers wait in the event loop instead.
    parser.add_argument("--threads", type=int, default=2,
                        help="verb threads per worker (default 2; the handler is CPU-bound)")


def parse_bind(text: str, flag: str = "--monitoring-bind") -> tuple[str, int]:
    """`HOST:PORT` (or `[v6]:PORT`) -> (host, port); ConfigError otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def check_bindable(address: tuple[str, int], flag: str = "--monitoring-bind") -> None:
    """ConfigError unless `address` can be bound now (checked without SO_REUSEPORT, so a port
    another process listens on is refused instead of shared)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot listen on {address[0]}:{address[1]}: "
                          f"{exc.strerror or exc}") from exc
    finally:
        probe.close()


def check_tls(server: ServerSettings) -> None:
    """Load the serving certificate and the client CA once, before serving: a missing or bad
    file is a ConfigError naming the key, not a failed handshake per connection."""
    cert, key, client_ca = server.tls_cert_file, server.tls_key_file, server.client_ca_file
    if cert is None or key is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"server.tls_cert_file, tls_key_file: cannot load {cert} / {key}: "
                          f"{exc}") from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.client_ca_file: cannot load {client_ca}: {exc}") from exc
        if not context.get_ca_certs():
            raise ConfigError(f"server.client_ca_file: {client_ca} holds no CA certificate")


def gunicorn_options(args: argparse.Namespace, server: ServerSettings) -> dict[str, Any]:
    """The gunicorn settings of the verbs' listener for `extender serve`."""
    if args.workers < 1 or args.threads < 1:
        raise ConfigError("--workers and --threads must be >= 1")
    check_tls(server)
    worker = type("WholeRequestWorker", (WholeRequestWorker,), {
        "read_timeout_s": server.read_timeout_s,
        "max_request_bytes": server.max_body_bytes + BODY_HEADROOM_BYTES})
    options: dict[str, Any] = {
        "bind": args.bind,
        "workers": args.workers,
        "worker_class": worker,
        "threads": args.threads,
        "keepalive": KEEPALIVE_S,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "graceful_timeout": 20,
        "timeout": 30,
        # No control socket: it lives at a shared path ($HOME/.gunicorn) and wants a writable root.
        "control_socket_disable": True,
    }
    if server.tls_cert_file and server.tls_key_file:
        options.update(certfile=server.tls_cert_file, keyfile=server.tls_key_file)
        if server.client_ca_file:
            options.update(ca_certs=server.client_ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return options


# --- the verbs' listener: gthread, fed whole requests ----------------------------------------


INCOMPLETE = -1
"""`request_end`: more bytes are needed."""
UNFRAMED = 0
"""`request_end`: the framing is malformed or too large to tell; let gunicorn's parser answer."""


def request_end(data: bytes | bytearray, max_bytes: int) -> int:
    """Where the first HTTP/1.x request in `data` ends (an offset > 0), INCOMPLETE while its
    headers or body are still arriving, UNFRAMED when its framing is malformed (gunicorn's parser
    then answers 400) or exceeds `max_bytes` (see `declared_too_large`)."""
    head = data.find(b"\r\n\r\n")
    if head < 0:
        return UNFRAMED if len(data) > MAX_HEAD_BYTES else INCOMPLETE
    length: int | None = None
    chunked = False
    for line in bytes(data[:head]).split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            text = value.strip()
            if not sep or not text.isdigit() or (length is not None and length != int(text)):
                return UNFRAMED
            length = int(text)
        elif name == b"transfer-encoding":
            if not value.strip().lower().endswith(b"chunked") or length is not None:
                return UNFRAMED
            chunked = True
    start = head + 4
    if chunked:
        return UNFRAMED if length is not None else _chunked_end(data, start, max_bytes)
    end = start + (length or 0)
    if end > max_bytes:
        return UNFRAMED
    return end if len(data) >= end else INCOMPLETE


def _chunked_end(data: bytes | bytearray, pos: int, max_bytes: int) -> int:
    """End of a chunked body starting at `pos` (RFC 9112 7.1), INCOMPLETE or UNFRAMED."""
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return INCOMPLETE if len(data) - pos < 1024 else UNFRAMED
        size_text = bytes(data[pos:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return UNFRAMED
        if size == 0:  # the last chunk, then trailer fields up to an empty line
            trailers = data.find(b"\r\n\r\n", line_end)
            if trailers < 0:
                return INCOMPLETE
            return trailers + 4
        pos = line_end + 2 + size + 2
        if pos > max_bytes:
            return UNFRAMED
        if pos > len(data):
            return INCOMPLETE


def declared_too_large(data: bytes | bytearray, max_bytes: int) -> bool:
    """Whether the complete head in `data` declares a body beyond `max_bytes`."""
    head = data.find(b"\r\n\r\n")
    if head < 0:
        return False
    for line in bytes(data[:head]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return head + 4 + int(value.strip()) > max_bytes
    return False


def _expects_continue(data: bytes | bytearray) -> bool:
    head = data.find(b"\r\n\r\n")
    return any(line.partition(b":")[0].strip().lower() == b"expect"
               and line.partition(b":")[2].strip().lower() == b"100-continue"
               for line in bytes(data[:head]).split(b"\r\n")[1:])


def _without_expect(data: bytearray) -> bytearray:
    head = data.find(b"\r\n\r\n")
    lines = bytes(data[:head]).split(b"\r\n")
    kept = [line for line in lines if line.partition(b":")[0].strip().lower() != b"expect"]
    return bytearray(b"\r\n".join(kept)) + data[head:]


class WholeConn(TConn):  # type: ignore[misc]
    """A gthread connection whose next request the event loop reads whole first."""

    def __init__(self, cfg: Any, sock: Any, client: Any, server: Any,
                 read_timeout_s: float) -> None:
        super().__init__(cfg, sock, client, server)
        self.read_timeout_s = read_timeout_s
        self.pending = bytearray()
        self.deadline: float | None = None
        """The request (or the TLS handshake) must be complete by then (monotonic)."""
        self.handshaken = not isinstance(sock, ssl.SSLSocket)
        self.continued = False
        self.initialized: bool = False
        self.data_ready = True  # never wait for data in a pool thread: it is all here

    def init(self) -> None:
        """In the pool thread, before each request: parse the bytes read by the event loop."""
        # A safety net only: the request is in memory, the parser reads nothing more of it.
        self.sock.settimeout(self.read_timeout_s)
        if not self.initialized:
            self.initialized = True
            self.parser = gunicorn_http.get_parser(self.cfg, self.sock, self.client)
        data, self.pending = bytes(self.pending), bytearray()
        self.deadline, self.continued = None, False
        self.parser.unreader.unread(data)


class WholeRequestWorker(ThreadWorker):  # type: ignore[misc]
    """gthread whose pool threads only ever see complete requests (see the module docstring).

    Every path by which stock gthread hands a connection to the pool (accepted, kept-alive and
    readable, pipelined bytes left over) goes through `enqueue_req`, which here reads the
    request without blocking and submits the connection only when it is whole. Connections
    still reading are closed by `murder_pending` (run by gthread's loop at least every second)
    once their deadline passes, or once idle for the keep-alive time before a first byte.
    """

    read_timeout_s = 5.0
    max_request_bytes = 9 * 1024 * 1024

    def init_process(self) -> None:
        self.reading: dict[WholeConn, None] = {}  # an ordered set
        self.tls = _ReloadingContext(self.cfg) if self.cfg.is_ssl else None
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        if self.tls is not None:
            try:
                client_sock = self.tls.context().wrap_socket(
                    client_sock, server_side=True, do_handshake_on_connect=False,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS wrap failed: %s", exc)
                client_sock.close()
                return
        self.nr_conns += 1
        conn = WholeConn(self.cfg, client_sock, client_addr, listener.getsockname(),
                         self.read_timeout_s)
        now = time.monotonic()
        conn.timeout = now + self.cfg.keepalive  # idle limit before a first byte
        if not conn.handshaken:
            conn.deadline = now + self.read_timeout_s
        self.enqueue_req(conn)

    def enqueue_req(self, conn: WholeConn) -> None:
        if conn.parser is not None:  # bytes of a pipelined request, read with the last one
            conn.pending[:0] = conn.parser.unreader.take_buffered()
        conn.sock.setblocking(False)
        self._read(conn)

    def _read(self, conn: WholeConn, _fileobj: object = None) -> None:
        """Read what is there; hand the connection to the pool once its request is whole."""
        try:
            if not conn.handshaken:
                conn.sock.do_handshake()
                conn.handshaken = True
                conn.deadline = None
            while len(conn.pending) < self.max_request_bytes:
                data = conn.sock.recv(RECV_BYTES)
                if not data:
                    self._drop(conn)
                    return
                if conn.deadline is None:
                    conn.deadline = time.monotonic() + self.read_timeout_s
                conn.pending += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            pass
        except (OSError, ssl.SSLError) as exc:  # reset, or a refused handshake (mTLS)
            log.debug("closing %s: %s", conn.client, exc)
            self._drop(conn)
            return
        if not conn.pending:
            self._watch(conn)
            return
        end = request_end(conn.pending, self.max_request_bytes)
        if end == INCOMPLETE:
            if not conn.continued and _expects_continue(conn.pending):
                # The client waits for this before sending its body; gunicorn would send it
                # from the pool thread, which must not wait for the body.
                conn.continued = True
                conn.pending = _without_expect(conn.pending)
                self._send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
            self._watch(conn)
            return
        if end == UNFRAMED and declared_too_large(conn.pending, self.max_request_bytes):
            self._send_quietly(conn, b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
            self._drop(conn)
            return
        self._unwatch(conn)
        super().enqueue_req(conn)

    def _watch(self, conn: WholeConn) -> None:
        if conn not in self.reading:
            self.reading[conn] = None
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read, conn))

    def _unwatch(self, conn: WholeConn) -> None:
        if conn in self.reading:
            del self.reading[conn]
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _drop(self, conn: WholeConn) -> None:
        self._unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    @staticmethod
    def _send_quietly(conn: WholeConn, data: bytes) -> None:
        try:
            conn.sock.send(data)
        except (OSError, ssl.SSLError):
            pass  # the read that follows sees the broken connection

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn in list(self.reading):
            started = conn.deadline is not None or conn.pending
            if (conn.deadline is not None and now > conn.deadline) or \
                    (not started and (now > conn.timeout or not self.alive)):
                if started:
                    log.info("closing %s: request not complete within %g s", conn.client,
                             self.read_timeout_s)
                self._drop(conn)


class _ReloadingContext:
    """gunicorn's server SSLContext (its settings, its `ssl_context` hook), built once and again
    only when a file changes (gunicorn builds one per connection; Secrets rotate in place)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.files = [f for f in (cfg.certfile, cfg.keyfile, cfg.ca_certs) if f]
        self._stamp: tuple[int, ...] | None = None
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        try:
            stamp = tuple(os.stat(f).st_mtime_ns for f in self.files)
        except OSError:
            stamp = self._stamp or ()
        if self._context is None or stamp != self._stamp:
            try:
                self._context = gunicorn_sock.ssl_context(self.cfg)
                self._stamp = stamp
            except (OSError, ssl.SSLError):
                if self._context is None:
                    raise
                log.warning("TLS files changed but do not load; serving with the previous ones")
        return self._context


# --- the monitoring listener ------------------------------------------------------------------


class MonitoringServer:
    """cheroot serving the monitoring WSGI app on its own threads, in this worker process."""

    def __init__(self, app: WSGIApplication, address: tuple[str, int], *, threads: int,
                 server: ServerSettings) -> None:
        from cheroot import wsgi

        self.address = address
        self.server: CherootServer = wsgi.Server(
            address, app, numthreads=threads, timeout=server.read_timeout_s,  # type: ignore[arg-type]
            shutdown_timeout=5, reuse_port=True, request_queue_size=64)
        if server.tls_cert_file and server.tls_key_file:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            self.server.ssl_adapter = BuiltinSSLAdapter(server.tls_cert_file, server.tls_key_file)
        self._thread: threading.Thread | None = None

    def start(self) -> MonitoringServer:
        """Bind (SO_REUSEPORT: every worker binds the same port) and serve in a thread."""
        self.server.prepare()
        self._thread = threading.Thread(target=self.server.serve, name="monitoring-listener",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stop()


_monitoring: list[MonitoringServer] = []
"""This worker process's monitoring server (stopped at worker exit)."""


def _stop_monitoring(_arbiter: object = None, _worker: object = None) -> None:
    while _monitoring:
        _monitoring.pop().stop()


def run_gunicorn(options: dict[str, Any], load: Callable[[], Any], *,
                 monitoring: tuple[str, int] | None = None, monitoring_threads: int = 4,
                 server: ServerSettings | None = None) -> None:
    """Serve the WSGI app made by `load()` under gunicorn with `options` (until stopped).

    `load` runs in each worker after fork, so threads it starts (the refresher) live there. With
    `monitoring`, `load()` must return a `create_app` app: its verbs are served by gunicorn, its
    Monitoring API, /metrics and health by a `MonitoringServer` on that address.
    """
    from gunicorn.app.base import BaseApplication

    from extender.server import listener_apps

    if monitoring is not None:
        check_bindable(monitoring)
        if monitoring_threads < 1:
            raise ConfigError("--monitoring-threads must be >= 1")
    settings = server or ServerSettings()
    options = {**options, "worker_exit": _stop_monitoring}

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            app = load()
            if monitoring is not None:
                verbs, monitor = listener_apps(app)
                _monitoring.append(MonitoringServer(monitor, monitoring,
                                                    threads=monitoring_threads,
                                                    server=settings).start())
                app = verbs
            # Move everything alive now (modules, settings, the app) out of the collector's
            # view: full collections would otherwise rescan ~60k objects and pause requests
            # for tens of milliseconds.
            gc.freeze()
            # The refresher thread's work on a new table (baselines, ledger totals) holds the GIL
            # for milliseconds; a request thread waiting for it would wait a whole switch
            # interval (5 ms by default) each time. Ask for the GIL back sooner.
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            return app

    Application().run()


def monitoring_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """`--monitoring-bind` as an address; None when empty (everything on --bind)."""
    text = getattr(args, "monitoring_bind", "")
    return parse_bind(text) if text else None
