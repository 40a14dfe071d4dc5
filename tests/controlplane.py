"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ kube-controller-manager and
kube-scheduler on demand), each a child process on free loopback ports.

One `ControlPlane` serves a whole pytest session (see the fixtures in `tests/conftest.py`); tests
isolate themselves by namespace and object names. There is no kubelet: Nodes are API objects only
(`create_node` makes them Ready and untainted) and pods never run (`set_pod_running` patches their
status as a kubelet would). Binaries come from `KUBEBUILDER_ASSETS`, else from
`../shared/k8s/install.sh` (see `../shared/k8s/README.md`).

The module is usable outside pytest too (benchmarks): `ControlPlane.start(bin_dir, workdir)` and
`.stop()`.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client
import yaml
from kubernetes.client import CoreV1Api, V1Node, V1ObjectMeta

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO.parent / "shared" / "k8s" / "install.sh"
REQUIRE_ENV = "EXTENDER_REQUIRE_CONTROL_PLANE"
"""Set to 1 (CI does) to fail instead of skipping when the binaries cannot be found."""

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NOT_READY_TAINT = "node.kubernetes.io/not-ready"

T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """A control-plane process did not start or did not become healthy."""


def find_binaries() -> tuple[Path | None, str]:
    """The folder holding the four binaries, or None and the reason they are not available."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        folder = Path(assets)
    elif INSTALL_SCRIPT.exists():
        done = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return None, f"{INSTALL_SCRIPT} failed ({done.returncode}): {done.stderr.strip()[-500:]}"
        folder = Path(done.stdout.strip().splitlines()[-1])
    else:
        return None, f"KUBEBUILDER_ASSETS is not set and {INSTALL_SCRIPT} does not exist"
    missing = [name for name in BINARIES if not os.access(folder / name, os.X_OK)]
    if missing:
        return None, f"{folder} lacks the executables {', '.join(missing)}"
    return folder, ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """Poll `predicate` until it returns something other than None or False; return that.

    Exceptions from `predicate` count as "not yet"; the last one is named in the timeout error.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value is not None and value is not False:
                return value
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"; reported on timeout
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}{detail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, so no server outlives it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _https_ok(url: str, *, context: ssl.SSLContext, token: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=2) as answer:
            return bool(answer.status == 200 and answer.read().strip() == b"ok")
    except (OSError, urllib.error.URLError):
        return False


def _unverified() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve an in-memory self-signed certificate:
    # their health endpoints are probed without verification (loopback only).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class Process:
    """One control-plane child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], log_path: Path) -> Process:
        log = log_path.open("wb")
        try:
            popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        finally:
            log.close()
        return cls(name, popen, log_path)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_healthy(self, healthy: Callable[[], bool], timeout_s: float) -> None:
        """Wait until `healthy()`; raise ControlPlaneError with the log's tail if it dies or times out."""
        deadline = time.monotonic() + timeout_s
        while not healthy():
            if not self.alive():
                raise ControlPlaneError(
                    f"{self.name} exited with {self.popen.returncode}; log {self.log_path}:\n"
                    f"{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ControlPlaneError(
                    f"{self.name} not healthy after {timeout_s:g} s; log {self.log_path}:\n"
                    f"{_tail(self.log_path)}")
            time.sleep(0.1)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`."""
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class SchedulerProcess:
    """A kube-scheduler started by `ControlPlane.start_scheduler`."""

    name: str
    config_path: Path
    log_path: Path
    port: int
    process: Process

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        """Stop the scheduler (SIGTERM, then SIGKILL)."""
        self.process.stop()


@dataclass
class ExtraApiServer:
    """A second kube-apiserver started by `ControlPlane.start_apiserver`."""

    url: str
    ca_file: Path
    process: Process

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        self.process.stop()


@dataclass
class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with pre-made users.

    Users in the token file (`tokens.csv`):
    - `admin_token`: user `admin`, group `system:masters` (everything allowed).
    - `user_token`: user `user_name` (`test-user`), no RBAC rights: forbidden (403) by default.
    - `other_user_token`: user `other_user_name` (`other-user`), also without rights, for tests that
      grant one user something and check the other still cannot.
    All three are in `system:authenticated`.
    """

    bin_dir: Path
    workdir: Path
    url: str
    etcd_url: str
    ca_file: Path
    admin_token: str
    user_token: str
    other_user_token: str
    kubeconfig: Path
    sa_key: Path
    user_name: str = "test-user"
    other_user_name: str = "other-user"
    processes: list[Process] = field(default_factory=list)
    schedulers: list[SchedulerProcess] = field(default_factory=list)
    controller_manager: Process | None = None

    @classmethod
    def start(cls, bin_dir: Path, workdir: Path, *, apiserver_args: Sequence[str] = (),
              timeout_s: float = 60.0) -> ControlPlane:
        """Start etcd and kube-apiserver under `workdir` and wait until `/readyz` answers ok."""
        workdir.mkdir(parents=True, exist_ok=True)
        tokens = {name: secrets.token_hex(16) for name in ("admin", "test-user", "other-user")}
        token_file = workdir / "tokens.csv"
        token_file.write_text(
            f'{tokens["admin"]},admin,uid-admin,"system:masters"\n'
            f'{tokens["test-user"]},test-user,uid-test-user,""\n'
            f'{tokens["other-user"]},other-user,uid-other-user,""\n')
        sa_key, sa_pub = workdir / "sa.key", workdir / "sa.pub"
        _make_rsa_key(sa_key, sa_pub)
        cert_dir = workdir / "apiserver-certs"
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        plane = cls(
            bin_dir=bin_dir, workdir=workdir, url=f"https://127.0.0.1:{api_port}",
            etcd_url=f"http://127.0.0.1:{etcd_port}", ca_file=cert_dir / "apiserver.crt",
            admin_token=tokens["admin"], user_token=tokens["test-user"],
            other_user_token=tokens["other-user"], kubeconfig=workdir / "admin.kubeconfig", sa_key=sa_key)
        try:
            etcd = plane._spawn("etcd", [
                str(bin_dir / "etcd"), "--data-dir", str(workdir / "etcd"),
                "--listen-client-urls", plane.etcd_url,
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}", "--unsafe-no-fsync"])
            etcd.wait_healthy(lambda: "etcd ready" in etcd.log_path.read_text(errors="replace"), timeout_s)
            argv = plane._apiserver_argv(api_port, cert_dir, apiserver_args)
            apiserver = plane._spawn("kube-apiserver", argv)
            apiserver.wait_healthy(lambda: plane._apiserver_ready(plane.url, plane.ca_file), timeout_s)
        except BaseException:
            plane.stop()
            raise
        plane._write_kubeconfig(plane.kubeconfig, plane.admin_token)
        return plane

    def _apiserver_argv(self, port: int, cert_dir: Path, extra: Sequence[str]) -> list[str]:
        return [
            str(self.bin_dir / "kube-apiserver"), f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={cert_dir}", f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16", *extra]

    def start_apiserver(self, name: str, args: Sequence[str], *, timeout_s: float = 60.0) -> ExtraApiServer:
        """Another kube-apiserver on the same etcd, with extra flags (e.g. `--watch-cache=false`, so
        that watches read etcd directly and an etcd compaction gives 410 Gone). Same tokens; its
        own serving certificate. It stops with the plane, or with `.stop()`."""
        port = free_port()
        cert_dir = self.workdir / f"apiserver-{name}-certs"
        process = self._spawn(f"kube-apiserver-{name}", self._apiserver_argv(port, cert_dir, args))
        extra = ExtraApiServer(f"https://127.0.0.1:{port}", cert_dir / "apiserver.crt", process)
        extra.process.wait_healthy(lambda: self._apiserver_ready(extra.url, extra.ca_file), timeout_s)
        return extra

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (returned): watches and list
        continue tokens from before it get 410 Gone where they are served by etcd."""
        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            request = urllib.request.Request(f"{self.etcd_url}{path}", data=json.dumps(body).encode(),
                                             method="POST")
            with urllib.request.urlopen(request, timeout=10) as answer:
                result: dict[str, Any] = json.load(answer)
                return result

        revision = int(post("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def _spawn(self, name: str, argv: Sequence[str]) -> Process:
        process = Process.spawn(name, argv, self.workdir / f"{name}.log")
        self.processes.append(process)
        return process

    def _apiserver_ready(self, url: str, ca_file: Path) -> bool:
        if not ca_file.exists():
            return False
        try:
            context = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError):
            return False  # the certificate file is being written
        return _https_ok(f"{url}/readyz", context=context, token=self.admin_token)

    def _write_kubeconfig(self, path: Path, token: str) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url,
                                                      "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }
        path.write_text(yaml.safe_dump(config))

    def api_client(self, token: str | None = None, *, server: ExtraApiServer | None = None
                   ) -> kubernetes.client.ApiClient:
        """A client for the API server (or `server`) as the admin, or as the holder of `token`."""
        configuration = kubernetes.client.Configuration()
        configuration.host = server.url if server else self.url
        configuration.ssl_ca_cert = str(server.ca_file if server else self.ca_file)
        configuration.api_key = {"authorization": token or self.admin_token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(configuration)

    def start_controller_manager(self, timeout_s: float = 60.0) -> None:
        """Start kube-controller-manager (idempotent); it lives until `stop()`."""
        if self.controller_manager is not None and self.controller_manager.alive():
            return
        port = free_port()
        k = str(self.kubeconfig)
        process = self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"), f"--kubeconfig={k}",
            f"--authentication-kubeconfig={k}", f"--authorization-kubeconfig={k}",
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle",
            f"--service-account-private-key-file={self.sa_key}", "--use-service-account-credentials=false",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={port}"])
        process.wait_healthy(lambda: _https_ok(f"https://127.0.0.1:{port}/healthz", context=_unverified()),
                             timeout_s)
        self.controller_manager = process

    def start_scheduler(self, config: dict[str, Any], name: str, *, timeout_s: float = 60.0
                        ) -> SchedulerProcess:
        """Start a kube-scheduler with the KubeSchedulerConfiguration `config` (a dict).

        Fills in `apiVersion`/`kind` when absent, `clientConnection.kubeconfig` (the admin's; qps and
        burst 1000 unless given) and `leaderElection.leaderElect: false`. Waits until `/healthz` is ok.
        `name` names the config and log files; stop it with `.stop()` (or it stops with the plane).
        """
        full = dict(config)
        full.setdefault("apiVersion", "kubescheduler.config.k8s.io/v1")
        full.setdefault("kind", "KubeSchedulerConfiguration")
        connection = dict(full.get("clientConnection") or {})
        connection["kubeconfig"] = str(self.kubeconfig)
        connection.setdefault("qps", 1000)
        connection.setdefault("burst", 1000)
        full["clientConnection"] = connection
        full["leaderElection"] = {**(full.get("leaderElection") or {}), "leaderElect": False}
        config_path = self.workdir / f"scheduler-{name}.yaml"
        config_path.write_text(yaml.safe_dump(full))
        port = free_port()
        k = str(self.kubeconfig)
        process = self._spawn(f"scheduler-{name}", [
            str(self.bin_dir / "kube-scheduler"), f"--config={config_path}", f"--secure-port={port}",
            "--bind-address=127.0.0.1", f"--authentication-kubeconfig={k}",
            f"--authorization-kubeconfig={k}"])
        scheduler = SchedulerProcess(name, config_path, process.log_path, port, process)
        self.schedulers.append(scheduler)
        process.wait_healthy(lambda: _https_ok(f"https://127.0.0.1:{port}/healthz", context=_unverified()),
                             timeout_s)
        return scheduler

    def stop(self) -> None:
        """Stop every process, newest first (schedulers and controllers before the API server and etcd)."""
        for process in reversed(self.processes):
            process.stop()


def _make_rsa_key(private: Path, public: Path) -> None:
    """The service-account signing key pair, made with the openssl command-line tool."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ControlPlaneError("openssl is needed to make the service-account key (apt-get install openssl)")
    subprocess.run([openssl, "genrsa", "-out", str(private), "2048"], check=True, capture_output=True)
    subprocess.run([openssl, "rsa", "-in", str(private), "-pubout", "-out", str(public)],
                   check=True, capture_output=True)


def create_node(core: CoreV1Api, name: str, *, cpu: str = "8", memory: str = "32Gi", gpus: int = 0,
                labels: dict[str, str] | None = None, pods: int = 110) -> V1Node:
    """Create a Node that kube-scheduler will use: Ready, untainted, with capacity = allocatable.

    Nodes are cluster-wide and live for the session: give them unique names (and labels a test can
    select with a nodeSelector when a scheduler runs), or delete them at the end of the test.
    """
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    if gpus > 0:
        resources["nvidia.com/gpu"] = str(gpus)
    core.create_node(V1Node(metadata=V1ObjectMeta(
        name=name, labels={"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})})))
    now = datetime.now(UTC).isoformat()
    core.patch_node_status(name, {"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "test node", "lastHeartbeatTime": now, "lastTransitionTime": now}],
    }})
    # The apiserver's admission adds the not-ready taint to new Nodes; no node controller removes it.
    spec = core.read_node(name).spec
    taints = [t for t in ((spec.taints if spec else None) or []) if t.key != NOT_READY_TAINT]
    result: V1Node = core.patch_node(name, {"spec": {"taints": taints or None}})
    return result


def set_pod_running(core: CoreV1Api, name: str, namespace: str, *, ready: bool = True) -> None:
    """Patch a bound pod's status as its kubelet would: Running, containers started, Ready or not."""
    spec = core.read_namespaced_pod(name, namespace).spec
    assert spec is not None, f"pod {namespace}/{name} has no spec"
    now = datetime.now(UTC).isoformat()
    flag = "True" if ready else "False"
    statuses = [{"name": c.name, "image": c.image, "imageID": "", "ready": ready, "started": True,
                 "restartCount": 0, "state": {"running": {"startedAt": now}}} for c in spec.containers]
    core.patch_namespaced_pod_status(name, namespace, {"status": {
        "phase": "Running", "startTime": now, "hostIP": "127.0.0.1", "podIP": "10.244.0.10",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ],
        "containerStatuses": statuses,
    }})
