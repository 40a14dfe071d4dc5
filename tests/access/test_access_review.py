"""Bearer tokens on the Monitoring API and /metrics, checked by the real kube-apiserver.

Each test makes its own ServiceAccounts (tokens from the TokenRequest API) in a fresh namespace:
`reader` bound to the shipped ClusterRole extract:extender-api-reader, `stranger` bound to
nothing, and `extender`, the identity the app reviews tokens with, bound to
system:auth-delegator as the shipped manifests bind the extender's ServiceAccount.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from kubernetes.client import AuthorizationV1Api, CoreV1Api, RbacAuthorizationV1Api

from extender.access import AccessGate, ApiReviewer
from extender.client import MonitoringApiError, MonitoringClient
from extender.leader import api_client_for
from tests.controlplane import ControlPlane, free_port, wait_for
from tests.support import REPO, StaticSource, app_for, sample, settings

MANIFEST = REPO / "manifests" / "base" / "extender.yaml"


def shipped(kind: str, name: str) -> dict[str, Any]:
    """An object of manifests/base/extender.yaml, as written there."""
    for obj in yaml.safe_load_all(MANIFEST.read_text()):
        if obj and obj["kind"] == kind and obj["metadata"]["name"] == name:
            return dict(obj)
    raise AssertionError(f"{MANIFEST} has no {kind} {name}")


def write_kubeconfig(path: Path, url: str, ca_file: Path, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": url, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


@dataclass
class Cluster:
    """The test's accounts and the kubeconfig the extender reviews tokens with."""

    plane: ControlPlane
    namespace: str
    rbac: RbacAuthorizationV1Api
    core: CoreV1Api
    kubeconfig: Path
    reader: str
    stranger: str
    cleanup: list[Callable[[], Any]]

    def token(self, account: str, audiences: list[str] | None = None) -> str:
        spec: dict[str, Any] = {"expirationSeconds": 3600}
        if audiences:
            spec["audiences"] = audiences
        made = self.core.create_namespaced_service_account_token(
            account, self.namespace, {"spec": spec})
        return str(made.status.token)

    def account(self, name: str) -> str:
        self.core.create_namespaced_service_account(self.namespace, {"metadata": {"name": name}})
        return name

    def bind_cluster_role(self, role: str, account: str) -> str:
        name = f"{self.namespace}-{account}-{secrets.token_hex(2)}"
        self.rbac.create_cluster_role_binding({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": self.namespace}]})
        self.cleanup.append(lambda: self.rbac.delete_cluster_role_binding(name))
        return name

    def wait_until(self, account: str, allowed: bool, verb: str = "get", **attributes: Any) -> None:
        """Until the API server's RBAC (fed by a watch: a new binding takes a moment) says
        `allowed` for `account` on the resource or non-resource `attributes`."""
        user = f"system:serviceaccount:{self.namespace}:{account}"
        key = "nonResourceAttributes" if "path" in attributes else "resourceAttributes"
        body = {"spec": {"user": user, "groups": ["system:serviceaccounts",
                                                  f"system:serviceaccounts:{self.namespace}"],
                         key: {"verb": verb, **attributes}}}
        authz = AuthorizationV1Api(self.plane.api_client())
        wait_for(lambda: bool(authz.create_subject_access_review(body).status.allowed) is allowed,
                 timeout_s=10, what=f"RBAC to say allowed={allowed} for {user} on {attributes}")

    def app(self, tmp_path: Path, kubeconfig: Path | None = None, **auth: Any) -> Flask:
        s = settings(server={"auth": {"enabled": True, "kubeconfig": str(kubeconfig or self.kubeconfig),
                                      **auth}})
        return app_for(s, StaticSource(s, {"cpu_utilisation": {"node-a": 0.5}}), start_refresher=False)


@pytest.fixture
def cluster(control_plane: ControlPlane, k8s_namespace: str, tmp_path: Path) -> Iterator[Cluster]:
    api = control_plane.api_client()
    rbac, core = RbacAuthorizationV1Api(api), CoreV1Api(api)
    cleanup: list[Callable[[], Any]] = []
    reader_role = shipped("ClusterRole", "extract:extender-api-reader")
    role_name = f"{k8s_namespace}-api-reader"
    rbac.create_cluster_role({"metadata": {"name": role_name}, "rules": reader_role["rules"]})
    cleanup.append(lambda: rbac.delete_cluster_role(role_name))
    made = Cluster(control_plane, k8s_namespace, rbac, core, tmp_path / "extender.kubeconfig",
                   "reader", "stranger", cleanup)
    for name in ("reader", "stranger", "extender"):
        made.account(name)
    made.bind_cluster_role(role_name, "reader")
    delegator = shipped("ClusterRoleBinding", "extract:extender-auth-delegator")["roleRef"]["name"]
    made.bind_cluster_role(delegator, "extender")
    write_kubeconfig(made.kubeconfig, control_plane.url, control_plane.ca_file, made.token("extender"))
    made.wait_until("reader", True, path="/extract-extender/api/v1/config")
    made.wait_until("extender", True, "create", group="authorization.k8s.io",
                    resource="subjectaccessreviews")
    made.wait_until("extender", True, "create", group="authentication.k8s.io",
                    resource="tokenreviews")
    try:
        yield made
    finally:
        for undo in reversed(cleanup):
            undo()
        api.close()


def get(client: FlaskClient, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get(path, headers=headers)


def test_allowed_token_reads_others_are_refused_and_health_stays_open(
        cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.app(tmp_path).test_client()
    reader, stranger = cluster.token("reader"), cluster.token("stranger")

    assert get(client, "/api/v1/config", reader).status_code == 200
    assert get(client, "/api/v1/decisions", reader).status_code == 200
    assert get(client, "/metrics", reader).status_code == 200

    refused = get(client, "/api/v1/config", stranger)
    assert refused.status_code == 403
    who = f"system:serviceaccount:{cluster.namespace}:stranger"
    assert refused.json == {"error": f"{who} may not get /api/v1/config (RBAC nonResourceURL "
                                     f"/extract-extender/api/v1/config)"}
    assert get(client, "/metrics", stranger).status_code == 403

    for answer in (get(client, "/api/v1/config"), get(client, "/api/v1/config", "not-a-token"),
                   client.get("/api/v1/config", headers={"Authorization": f"Basic {reader}"}),
                   get(client, "/no/such/path")):  # no probing of which paths exist
        assert answer.status_code == 401, answer.json
        assert answer.headers["WWW-Authenticate"].startswith("Bearer ")
        assert "token" in answer.json["error"]
    assert get(client, "/api/v1/config", "not-a-token").headers["WWW-Authenticate"] == \
        'Bearer realm="extract-extender", error="invalid_token"'
    assert get(client, "/api/v1/config").headers["WWW-Authenticate"] == 'Bearer realm="extract-extender"'

    assert get(client, "/healthz").status_code == 200
    assert get(client, "/readyz").status_code == 200
    # The verbs are not behind tokens (mTLS protects them): an empty filter body is a 400.
    assert client.post("/filter", data=b"").status_code == 400


def test_reviews_are_cached_per_token_and_path(cluster: Cluster, tmp_path: Path) -> None:
    app = cluster.app(tmp_path)
    client = app.test_client()
    reader = cluster.token("reader")
    second_token = cluster.token("reader")  # the same ServiceAccount, another token
    stranger = cluster.token("stranger")
    for _ in range(3):
        assert get(client, "/api/v1/config", reader).status_code == 200
        assert get(client, "/api/v1/config", stranger).status_code == 403
    assert get(client, "/api/v1/config", second_token).status_code == 200

    page = get(client, "/metrics", reader)
    assert page.status_code == 200
    # Three tokens reviewed once each; access: each token on /api/v1/config (a ServiceAccount
    # token's user carries its credential id, so two tokens of one account are two users to
    # the authoriser), the reader on /metrics.
    assert sample(page.data, "extender_auth_reviews_total", review="token") == 3
    assert sample(page.data, "extender_auth_reviews_total", review="access") == 4
    assert sample(page.data, "extender_auth_decisions_total", outcome="allowed") == 5
    assert sample(page.data, "extender_auth_decisions_total", outcome="denied") == 3
    assert get(client, "/api/v1/config").status_code == 401
    page = get(client, "/metrics", reader)
    assert sample(page.data, "extender_auth_decisions_total", outcome="unauthenticated") == 1


def test_cached_answers_expire_after_their_ttl(cluster: Cluster) -> None:
    # The gate over the real reviewer, with a clock the test moves: a revoked binding keeps
    # working until allowed_ttl_s, a new one takes effect after denied_ttl_s.
    now = [0.0]
    auth = settings(server={"auth": {"enabled": True, "token_ttl_s": 120, "allowed_ttl_s": 300,
                                     "denied_ttl_s": 30}}).server.auth
    reviews: list[str] = []

    class Counting:
        def access_decided(self, outcome: str) -> None:
            pass

        def access_reviewed(self, review: str) -> None:
            reviews.append(review)

    gate = AccessGate(auth, ApiReviewer(lambda: api_client_for(str(cluster.kubeconfig))),
                      observer=Counting(), clock=lambda: now[0])
    header = f"Bearer {cluster.token('stranger')}"
    assert gate.check(header, "GET", "/api/v1/nodes").outcome == "denied"
    binding = cluster.bind_cluster_role(f"{cluster.namespace}-api-reader", "stranger")
    cluster.wait_until("stranger", True, path="/extract-extender/api/v1/nodes")
    now[0] = 29.0
    assert gate.check(header, "GET", "/api/v1/nodes").outcome == "denied"  # the refusal is cached
    now[0] = 31.0
    assert gate.check(header, "GET", "/api/v1/nodes").outcome == "allowed"
    assert reviews == ["token", "access", "access"]
    cluster.rbac.delete_cluster_role_binding(binding)
    cluster.cleanup.pop()
    cluster.wait_until("stranger", False, path="/extract-extender/api/v1/nodes")
    now[0] = 31.0 + 299.0
    assert gate.check(header, "GET", "/api/v1/nodes").outcome == "allowed"  # cached, as documented
    assert reviews == ["token", "access", "access", "token"]  # the token's 120 s ran out first
    now[0] = 31.0 + 301.0
    assert gate.check(header, "GET", "/api/v1/nodes").outcome == "denied"


def test_audiences_accept_only_tokens_meant_for_the_extender(cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.app(tmp_path, audiences=["extract-extender"]).test_client()
    assert get(client, "/api/v1/nodes", cluster.token("reader", ["extract-extender"])).status_code == 200
    plain = get(client, "/api/v1/nodes", cluster.token("reader"))  # the API server's audience
    assert plain.status_code == 401
    assert "extract-extender" in plain.json["error"]


def test_resource_attributes_authorise_every_path_with_one_review(
        cluster: Cluster, tmp_path: Path) -> None:
    # A made-up resource, so that the grant gives nothing else (the API server authorises
    # services/proxy as services/unsafeproxy since 1.35).
    resource = {"namespace": cluster.namespace, "group": "extract.io", "resource": "extenders",
                "subresource": "api", "name": "extender"}
    cluster.rbac.create_namespaced_role(cluster.namespace, {
        "metadata": {"name": "proxy-extender"},
        "rules": [{"apiGroups": ["extract.io"], "resources": ["extenders/api"],
                   "resourceNames": ["extender"], "verbs": ["get"]}]})
    cluster.rbac.create_namespaced_role_binding(cluster.namespace, {
        "metadata": {"name": "proxy-extender"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "proxy-extender"},
        "subjects": [{"kind": "ServiceAccount", "name": "stranger", "namespace": cluster.namespace}]})
    cluster.wait_until("stranger", True, **resource)
    client = cluster.app(tmp_path, resource=resource).test_client()
    stranger, reader = cluster.token("stranger"), cluster.token("reader")
    assert get(client, "/api/v1/config", stranger).status_code == 200
    page = get(client, "/metrics", stranger)
    assert page.status_code == 200
    assert sample(page.data, "extender_auth_reviews_total", review="access") == 1
    refused = get(client, "/api/v1/config", reader)  # its nonResourceURLs do not count here
    assert refused.status_code == 403
    assert f"get extenders/api.extract.io extender in {cluster.namespace}" in refused.json["error"]


def test_unreachable_api_server_gives_503_logged_once_never_allow(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    closed = write_kubeconfig(tmp_path / "closed.kubeconfig", f"https://127.0.0.1:{free_port()}",
                              cluster.plane.ca_file, "unused")
    client = cluster.app(tmp_path, kubeconfig=closed, protect_metrics=False).test_client()
    reader = cluster.token("reader")
    with caplog.at_level(logging.WARNING, logger="extender.access"):
        for _ in range(3):
            answer = get(client, "/api/v1/config", reader)
            assert answer.status_code == 503
            assert answer.headers["Retry-After"]
            assert "unreachable" in answer.json["error"]
    assert len([r for r in caplog.records if "cannot be checked" in r.getMessage()]) == 1
    assert get(client, "/healthz").status_code == 200
    # protect_metrics: false opens /metrics; the rest still needs a token (401 without asking).
    page = get(client, "/metrics")
    assert page.status_code == 200
    assert sample(page.data, "extender_auth_decisions_total", outcome="unavailable") == 3
    assert get(client, "/api/v1/config").status_code == 401


def test_extender_without_auth_delegator_gets_503_naming_the_role(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.account("unbound")
    kubeconfig = write_kubeconfig(tmp_path / "unbound.kubeconfig", cluster.plane.url,
                                  cluster.plane.ca_file, cluster.token("unbound"))
    answer = get(cluster.app(tmp_path, kubeconfig=kubeconfig).test_client(), "/api/v1/config",
                 cluster.token("reader"))
    assert answer.status_code == 503
    assert "system:auth-delegator" in answer.json["error"]


def test_the_python_client_sends_its_token_file_over_http(cluster: Cluster, tmp_path: Path) -> None:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, cluster.app(tmp_path), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    token_file = tmp_path / "token"
    try:
        token_file.write_text(cluster.token("reader") + "\n")
        assert MonitoringClient(url, token_file=token_file).decisions().decisions == []
        with pytest.raises(MonitoringApiError) as anonymous:
            MonitoringClient(url).nodes()
        assert anonymous.value.status == 401
        token_file.write_text(cluster.token("stranger"))  # read again: rotated tokens work
        with pytest.raises(MonitoringApiError) as refused:
            MonitoringClient(url, token_file=token_file).nodes()
        assert refused.value.status == 403 and "may not get /api/v1/nodes" in refused.value.message
        with pytest.raises(MonitoringApiError, match="cannot read the token"):
            MonitoringClient(url, token_file=tmp_path / "absent").nodes()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_token_is_not_cached_past_its_own_expiry(cluster: Cluster) -> None:
    now, reviews = [0.0], []

    class Counting:
        def access_decided(self, outcome: str) -> None:
            pass

        def access_reviewed(self, review: str) -> None:
            reviews.append(review)

    auth = settings(server={"auth": {"enabled": True}}).server.auth  # token_ttl_s 120
    token = cluster.token("reader")  # valid for an hour; the gate's wall clock says 10 s are left
    gate = AccessGate(auth, ApiReviewer(lambda: api_client_for(str(cluster.kubeconfig))),
                      observer=Counting(), clock=lambda: now[0],
                      wall_clock=lambda: time.time() + 3600 - 10)
    assert gate.check(f"Bearer {token}", "GET", "/metrics").outcome == "allowed"
    now[0] = 9.0
    assert gate.check(f"Bearer {token}", "GET", "/metrics").outcome == "allowed"
    assert reviews == ["token", "access"]
    now[0] = 12.0  # past the token's exp as the gate sees it: asked again (the API server's own
    assert gate.check(f"Bearer {token}", "GET", "/metrics").outcome == "allowed"  # clock: valid)
    assert reviews == ["token", "access", "token"]


class _ReusableServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # the port comes back while old connections are in TIME_WAIT


class Forwarder:
    """A loopback TCP forwarder to the API server that can be taken down and brought back on the
    same port: an outage of the API server as the extender sees it, the server itself untouched."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.server = _ReusableServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        forwarder = self

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(forwarder.target, timeout=10)
                forwarder.open += [self.request, upstream]

                def copy(source: socket.socket, sink: socket.socket) -> None:
                    try:
                        while data := source.recv(65536):
                            sink.sendall(data)
                    except OSError:
                        pass
                    finally:
                        for end in (source, sink):
                            with contextlib.suppress(OSError):
                                end.shutdown(socket.SHUT_RDWR)

                back = threading.Thread(target=copy, args=(upstream, self.request), daemon=True)
                back.start()
                copy(self.request, upstream)
                back.join(10)
                upstream.close()

        return Pipe

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for conn in self.open:  # kept-alive connections die with the "server"
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def test_an_outage_is_logged_once_and_its_end_once_and_answers_resume(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = urllib.parse.urlsplit(cluster.plane.url)
    forwarder = Forwarder((str(target.hostname), int(target.port or 443)))
    port = forwarder.port
    kubeconfig = write_kubeconfig(tmp_path / "forwarded.kubeconfig", f"https://127.0.0.1:{port}",
                                  cluster.plane.ca_file,
                                  yaml.safe_load(cluster.kubeconfig.read_text())["users"][0]["user"]["token"])
    client = cluster.app(tmp_path, kubeconfig=kubeconfig).test_client()
    try:
        assert get(client, "/api/v1/config", cluster.token("reader")).status_code == 200
        cached = cluster.token("reader")
        assert get(client, "/api/v1/config", cached).status_code == 200
        forwarder.stop()
        with caplog.at_level(logging.INFO, logger="extender.access"):
            assert get(client, "/api/v1/config", cached).status_code == 200  # answered from cache
            for _ in range(3):  # new tokens need the API server
                assert get(client, "/api/v1/config", cluster.token("reader")).status_code == 503
            forwarder = Forwarder(forwarder.target, port)
            for _ in range(2):
                assert get(client, "/api/v1/config", cluster.token("reader")).status_code == 200
        messages = [r.getMessage() for r in caplog.records]
        assert len([m for m in messages if "cannot be checked" in m]) == 1
        assert len([m for m in messages if "checked again" in m]) == 1
    finally:
        forwarder.stop()
