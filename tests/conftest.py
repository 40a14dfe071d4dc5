"""Suite-wide guards (network traffic may only go to loopback) and the real control-plane fixtures."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from tests.controlplane import REQUIRE_ENV, ControlPlane, ExtraApiServer, find_binaries

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check(address: Any) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        if host in ("localhost", "") or host.startswith("127.") or host == "::1":
            return
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        raise RuntimeError(f"test tried to reach {address!r}: only loopback is allowed")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check(address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check(address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail loudly on any connection to a non-loopback address."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    yield


# --- A real control plane (etcd + kube-apiserver, kube-controller-manager on demand) -------------

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the control plane carry the `k8s` marker (`-m "not k8s"` leaves them out)."""
    for item in items:
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.k8s)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver for the whole session, started on first use.

    Skips (with the reason) when the binaries are not available, unless EXTENDER_REQUIRE_CONTROL_PLANE=1
    (CI), where that is a failure. A process that does not start is always an error.
    """
    bin_dir, reason = find_binaries()
    if bin_dir is None:
        message = f"no Kubernetes control-plane binaries: {reason}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(message)
    plane = ControlPlane.start(bin_dir, tmp_path_factory.mktemp("control-plane"))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def controller_manager(control_plane: ControlPlane) -> ControlPlane:
    """The session's control plane with kube-controller-manager running (Jobs, ReplicaSets, GC, ...)."""
    control_plane.start_controller_manager()
    return control_plane


@pytest.fixture(scope="session")
def etcd_apiserver(control_plane: ControlPlane) -> Iterator[ExtraApiServer]:
    """A second kube-apiserver on the session's etcd, without watch cache: its watches read etcd,
    so a watch from a resourceVersion before `control_plane.compact_etcd()` gets 410 Gone."""
    server = control_plane.start_apiserver("no-watch-cache", ["--watch-cache=false"])
    yield server
    server.stop()


@pytest.fixture
def k8s_namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (named after the test) with ServiceAccount `default`; deleted afterwards.

    Its pods are deleted with grace period 0 first: without a kubelet they would stay Terminating, and
    without kube-controller-manager nobody empties a deleted namespace.
    """
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    with control_plane.api_client() as client:
        core = CoreV1Api(client)
        core.create_namespace({"metadata": {"name": name}})
        try:
            core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
        except ApiException as exc:
            if exc.status != 409:  # kube-controller-manager's service-account controller was first
                raise
    yield name
    with control_plane.api_client() as client:
        core = CoreV1Api(client)
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        core.delete_namespace(name)
