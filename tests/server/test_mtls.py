"""mTLS on the verbs' listener of the real `extender serve`: a client certificate signed by
`server.client_ca_file` is required there; the monitoring listener serves the same certificate
without asking for one. Certificates are made per test session (tests/tlsfiles.py)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from extender import localserver
from extender.errors import ConfigError
from extender.serving import check_tls
from tests.extenders import serve_argv
from tests.server.test_listeners import FILTER_BODY, serve_fails, write_config
from tests.support import settings
from tests.tlsfiles import KeyPair, TestCA


class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = TestCA(directory / "ca", "extender-client-ca")
        self.server = self.ca.issue("extender", server=True)
        self.scheduler = self.ca.issue("kube-scheduler", server=False)
        self.stranger = TestCA(directory / "other", "other-ca").issue("intruder", server=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[int, int]]:
    workdir = tmp_path_factory.mktemp("mtls")
    config = write_config(workdir, "http://127.0.0.1:9", tls_cert_file=str(pki.server.cert),
                          tls_key_file=str(pki.server.key), client_ca_file=str(pki.ca.cert))
    port, monitoring = localserver.free_port(), localserver.free_port()
    server = localserver.LocalServer(
        "extender", port, serve_argv(config, port, monitoring), workdir, "/healthz",
        scheme="https", ready_options={"verify": str(pki.ca.cert),
                                       "cert": (str(pki.scheduler.cert), str(pki.scheduler.key))})
    with server.start(timeout_s=60):
        yield port, monitoring


def context(pki: Pki, client: KeyPair | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def call(port: int, ctx: ssl.SSLContext, method: str = "POST", path: str = "/filter",
         ) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=FILTER_BODY if method == "POST" else None)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_the_schedulers_certificate_gets_its_filter_answered(mtls: tuple[int, int],
                                                             pki: Pki) -> None:
    status, body = call(mtls[0], context(pki, pki.scheduler))
    assert status == 200 and json.loads(body)["NodeNames"] == ["node-a", "node-b"]


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_a_client_without_a_certificate_of_the_ca_is_refused(mtls: tuple[int, int], pki: Pki,
                                                             who: str) -> None:
    client = None if who == "no certificate" else pki.stranger
    # TLS 1.3 reports a refused client certificate after the client's side of the handshake:
    # on the handshake or on the first read, never with an answer.
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError,
                        http.client.RemoteDisconnected)):
        call(mtls[0], context(pki, client))


def test_plain_http_on_the_tls_port_is_closed_not_served(mtls: tuple[int, int]) -> None:
    with socket.create_connection(("127.0.0.1", mtls[0]), timeout=10) as sock:
        sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(FILTER_BODY), FILTER_BODY))
        try:
            answer = sock.recv(1024)
        except ConnectionResetError:
            answer = b""
        assert b"NodeNames" not in answer


def test_the_monitoring_listener_serves_tls_without_asking_for_a_client_certificate(
        mtls: tuple[int, int], pki: Pki) -> None:
    status, body = call(mtls[1], context(pki, None), "GET", "/metrics")
    assert status == 200 and b"extender_requests_total" in body
    assert call(mtls[1], context(pki, None), "GET", "/readyz")[0] == 200


# --- bad configuration -----------------------------------------------------------------------


def test_a_client_ca_without_a_serving_certificate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="server.client_ca_file: client certificates need TLS"):
        settings(server={"client_ca_file": "/etc/ca.crt"})


def test_missing_or_bad_tls_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    base = {"tls_cert_file": str(pki.server.cert), "tls_key_file": str(pki.server.key)}
    with pytest.raises(ConfigError, match=r"server.client_ca_file: cannot load .*missing.crt"):
        check_tls(settings(server={**base, "client_ca_file": str(tmp_path / "missing.crt")}).server)
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="server.client_ca_file: cannot load"):
        check_tls(settings(server={**base, "client_ca_file": str(not_pem)}).server)
    with pytest.raises(ConfigError, match="server.tls_cert_file, tls_key_file: cannot load"):
        check_tls(settings(server={**base, "tls_key_file": str(pki.scheduler.key)}).server)
    check_tls(settings(server={**base, "client_ca_file": str(pki.ca.cert)}).server)  # loads


def test_serve_refuses_to_start_with_a_missing_client_ca(pki: Pki, tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", tls_cert_file=str(pki.server.cert),
                          tls_key_file=str(pki.server.key),
                          client_ca_file=str(tmp_path / "nowhere.crt"))
    err = serve_fails(config)
    assert "server.client_ca_file: cannot load" in err and "nowhere.crt" in err


def test_clients_stalled_in_the_handshake_hold_no_verb_thread(mtls: tuple[int, int],
                                                              pki: Pki) -> None:
    from tests.server.test_listeners import READ_TIMEOUT_S, closed_by_server, still_open

    stalled = [socket.create_connection(("127.0.0.1", mtls[0])) for _ in range(4)]
    for sock in stalled:
        sock.sendall(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello record, no more
    try:
        assert call(mtls[0], context(pki, pki.scheduler))[0] == 200
        assert all(still_open(sock) for sock in stalled)
        assert all(closed_by_server(sock, timeout_s=READ_TIMEOUT_S + 10) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
