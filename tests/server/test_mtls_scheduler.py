"""The real kube-scheduler calls the real `extender serve` over mutual TLS, as components/tls
deploys them: the extender requires a client certificate signed by `server.client_ca_file`;
kube-scheduler presents one (`tlsConfig.certFile`/`keyFile`) and verifies the extender's against
`tlsConfig.caFile`. With its certificate, pods are filtered and prioritised by the extender (its
decision log has them) and bound; with another CA's certificate, the extender refuses the
handshake and the pods stay unscheduled (the extender is not ignorable here, so its refusal shows).

Real parts: etcd, kube-apiserver, kube-scheduler (tests/controlplane.py) and `extender serve`.
Prometheus is absent (a closed port): the extender answers neutrally, which is enough to see who
may call it.
"""

from __future__ import annotations

import json
import secrets
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import CoreV1Api

from extender import localserver
from tests.controlplane import ControlPlane, create_node, wait_for
from tests.extenders import serve_argv
from tests.server.test_listeners import write_config
from tests.tlsfiles import KeyPair, TestCA

NODES = 2


@dataclass
class MtlsExtender:
    port: int
    monitoring_port: int
    ca: TestCA
    scheduler: KeyPair
    stranger: KeyPair
    nodes: list[str]
    label: str

    def decisions(self, pod: str) -> list[dict[str, Any]]:
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        url = f"https://127.0.0.1:{self.monitoring_port}/api/v1/decisions?pod={pod}"
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:
            found: list[dict[str, Any]] = json.loads(answer.read())["decisions"]
            return found


@pytest.fixture(scope="module")
def extender(control_plane: ControlPlane,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsExtender]:
    workdir = tmp_path_factory.mktemp("mtls-scheduler")
    ca = TestCA(workdir / "ca", "extract-ca")
    server = ca.issue("extender", server=True)
    scheduler = ca.issue("kube-scheduler", server=False)
    stranger = TestCA(workdir / "other", "other-ca").issue("stranger", server=False)
    config = write_config(workdir, f"http://127.0.0.1:{localserver.free_port()}",
                          tls_cert_file=str(server.cert), tls_key_file=str(server.key),
                          client_ca_file=str(ca.cert))
    port, monitoring = localserver.free_port(), localserver.free_port()
    label = f"mtls-{secrets.token_hex(3)}"
    nodes = [f"{label}-{i}" for i in range(NODES)]
    core = CoreV1Api(control_plane.api_client())
    for name in nodes:
        create_node(core, name, labels={"pool": label})
    process = localserver.LocalServer(
        "extender", port, serve_argv(config, port, monitoring), workdir, "/healthz",
        scheme="https", ready_options={"verify": str(ca.cert),
                                       "cert": (str(scheduler.cert), str(scheduler.key))})
    try:
        with process.start(timeout_s=60):
            yield MtlsExtender(port, monitoring, ca, scheduler, stranger, nodes, label)
    finally:
        for name in nodes:
            core.delete_node(name)


def start_scheduler(plane: ControlPlane, extender: MtlsExtender, client: KeyPair,
                    name: str) -> Any:
    return plane.start_scheduler({
        "profiles": [{"schedulerName": name}],
        "extenders": [{
            "urlPrefix": f"https://127.0.0.1:{extender.port}", "filterVerb": "filter",
            "prioritizeVerb": "prioritize", "weight": 5, "nodeCacheCapable": True,
            "enableHTTPS": True, "ignorable": False, "httpTimeout": "5s",
            "tlsConfig": {"caFile": str(extender.ca.cert), "certFile": str(client.cert),
                          "keyFile": str(client.key), "insecure": False}}],
    }, name)


def create_pods(core: CoreV1Api, namespace: str, scheduler: str, label: str,
                count: int) -> list[str]:
    names = [f"{scheduler}-{i}" for i in range(count)]
    for name in names:
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": name},
            "spec": {"schedulerName": scheduler, "nodeSelector": {"pool": label},
                     "containers": [{"name": "c", "image": "busybox", "resources": {
                         "requests": {"cpu": "100m", "memory": "64Mi"}}}]}})
    return names


def test_kube_scheduler_with_its_client_certificate_schedules_through_the_extender(
        control_plane: ControlPlane, extender: MtlsExtender, k8s_namespace: str,
        tmp_path: Path) -> None:
    core = CoreV1Api(control_plane.api_client())
    name = f"mtls-ok-{secrets.token_hex(2)}"
    scheduler = start_scheduler(control_plane, extender, extender.scheduler, name)
    try:
        pods = create_pods(core, k8s_namespace, name, extender.label, 3)

        def bound() -> dict[str, str] | None:
            found = {p.metadata.name: p.spec.node_name
                     for p in core.list_namespaced_pod(k8s_namespace).items if p.spec.node_name}
            return found if len(found) == len(pods) else None

        placed = wait_for(bound, timeout_s=60, what="the pods bound through the mTLS extender")
        assert set(placed.values()) <= set(extender.nodes)
        for pod in pods:
            verbs = {d["verb"] for d in extender.decisions(f"{k8s_namespace}/{pod}")}
            assert "filter" in verbs, (pod, verbs)  # kube-scheduler's call got through mTLS
    finally:
        scheduler.stop()


def test_kube_scheduler_with_another_cas_certificate_is_refused(
        control_plane: ControlPlane, extender: MtlsExtender, k8s_namespace: str) -> None:
    core = CoreV1Api(control_plane.api_client())
    name = f"mtls-refused-{secrets.token_hex(2)}"
    scheduler = start_scheduler(control_plane, extender, extender.stranger, name)
    try:
        (pod,) = create_pods(core, k8s_namespace, name, extender.label, 1)

        def failed() -> str | None:
            status = core.read_namespaced_pod(pod, k8s_namespace).status
            for condition in (status.conditions or []) if status else []:
                if condition.type == "PodScheduled" and condition.status == "False":
                    return condition.message or condition.reason or "unscheduled"
            return None

        message = wait_for(failed, timeout_s=60, what="the scheduling attempt to fail")
        assert core.read_namespaced_pod(pod, k8s_namespace).spec.node_name is None
        assert "certificate" in message.lower() or "tls" in message.lower(), message
        assert extender.decisions(f"{k8s_namespace}/{pod}") == []  # never reached a verb
    finally:
        scheduler.stop()
