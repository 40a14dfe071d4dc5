"""Prometheus behind authentication: a real Prometheus started with `--web.config.file` (TLS from
a CA made here, client certificates required, basic auth with a bcrypt hash), and a plain one
behind a loopback proxy that checks bearer tokens. Right credentials read metrics; wrong ones
give a clear self-check error and a degraded /readyz, never a crash.
"""

from __future__ import annotations

import subprocess
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from extender.demo import launcher
from extender.errors import PrometheusRefused, PrometheusUnreachable
from extender.localserver import LocalServer
from extender.metrics.prometheus import PrometheusSource
from extender.settings import Settings
from tests.support import app_for, fixture, settings

pytestmark = pytest.mark.prometheus

USER, PASSWORD = "extender", "s3cret-passw0rd"


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for Prometheus' basic_auth_users: the bcrypt package when installed, else
    the C library's crypt(3) (glibc's libxcrypt knows $2b$)."""
    try:
        import bcrypt  # type: ignore[import-not-found]

        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode())
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("no bcrypt: neither the bcrypt package nor crypt(3) with $2b$")
    return hashed


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def issue(cwd: Path, ca: str, name: str, cn: str, ext: str) -> None:
    """`name`.key and `name`.crt signed by CA `ca` (P-256 keys: fast to make)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(ext + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext",
            cwd=cwd)


def make_ca(cwd: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1",
            "-subj", f"/CN={name}", cwd=cwd)


@dataclass
class Secured:
    prometheus: LocalServer
    pki: Path

    def settings(self, **prom: Any) -> Settings:
        base: dict[str, Any] = {
            "url": self.prometheus.url, "query_timeout_s": 2, "retries": 0,
            "ca_file": str(self.pki / "ca.crt"),
            "client_cert_file": str(self.pki / "client.crt"),
            "client_key_file": str(self.pki / "client.key"),
            "basic_auth_username": USER,
            "basic_auth_password_file": str(self.pki / "password")}
        base.update(prom)
        return settings(prometheus={k: v for k, v in base.items() if v is not None},
                        cache={"refresh_interval_s": 1})


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    pki = tmp_path_factory.mktemp("pki")
    make_ca(pki, "ca")
    make_ca(pki, "other-ca")
    issue(pki, "ca", "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\n"
          "extendedKeyUsage=serverAuth")
    issue(pki, "ca", "client", "extender", "extendedKeyUsage=clientAuth")
    issue(pki, "other-ca", "stranger", "stranger", "extendedKeyUsage=clientAuth")
    (pki / "password").write_text(PASSWORD + "\n")
    (pki / "wrong-password").write_text("guess\n")
    web = {"tls_server_config": {"cert_file": str(pki / "server.crt"),
                                 "key_file": str(pki / "server.key"),
                                 "client_auth_type": "RequireAndVerifyClientCert",
                                 "client_ca_file": str(pki / "ca.crt")},
           "basic_auth_users": {USER: bcrypt_hash(PASSWORD)}}
    prom = launcher.prometheus([], web_config=web, ready_options={
        "verify": str(pki / "ca.crt"), "cert": (str(pki / "client.crt"), str(pki / "client.key")),
        "auth": (USER, PASSWORD)}).start()
    try:
        yield Secured(prom, pki)
    finally:
        prom.stop()


def test_tls_client_certificate_and_basic_auth_read_metrics(secured: Secured) -> None:
    source = PrometheusSource(secured.settings().prometheus)
    assert secured.prometheus.url.startswith("https://")
    assert [s.value for s in source.query("vector(42)")] == [42.0]
    assert source.ready()


def test_the_password_file_is_read_again_on_every_query(secured: Secured, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("guess\n")
    source = PrometheusSource(secured.settings(basic_auth_password_file=str(password)).prometheus)
    with pytest.raises(PrometheusRefused, match="refused our credentials"):
        source.query("vector(1)")
    password.write_text(PASSWORD + "\n")  # the Secret rotated: no restart
    assert [s.value for s in source.query("vector(1)")] == [1.0]


@pytest.mark.parametrize(("change", "error", "words"), [
    ({"basic_auth_password_file": "wrong-password"}, PrometheusRefused, "refused our credentials"),
    ({"basic_auth_username": None, "basic_auth_password_file": None}, PrometheusRefused,
     "refused our credentials"),
    ({"client_cert_file": "stranger.crt", "client_key_file": "stranger.key"},
     PrometheusUnreachable, "TLS handshake failed"),
    ({"client_cert_file": None, "client_key_file": None}, PrometheusUnreachable,
     "TLS handshake failed"),
    ({"ca_file": "other-ca.crt"}, PrometheusUnreachable, "TLS handshake failed"),
], ids=["wrong-password", "no-basic-auth", "untrusted-client-cert", "no-client-cert",
        "wrong-ca"])
def test_wrong_credentials_are_a_clear_error(secured: Secured, change: dict[str, str | None],
                                             error: type[Exception], words: str) -> None:
    paths = {k: (str(secured.pki / v) if v is not None else None) for k, v in change.items()
             if k != "basic_auth_username"}
    if "basic_auth_username" in change:
        paths["basic_auth_username"] = None
    source = PrometheusSource(secured.settings(**paths).prometheus)
    with pytest.raises(error, match=words):
        source.query("vector(1)")
    assert not source.ready()


def test_through_the_app_wrong_credentials_degrade_readyz_and_the_selfcheck_says_why(
        secured: Secured) -> None:
    request = {**fixture("names-0001-prioritize-cache-plain.json")["request"],
               "NodeNames": ["node-a", "node-b"]}
    good = app_for(secured.settings(), start_refresher=False)
    good.extensions["extender"].cache.refresh()
    client = good.test_client()
    assert client.get("/readyz").get_json()["prometheus_up"] is True
    assert client.get("/api/v1/selfcheck").get_json()["failed_entries"] == {}

    for bad, words in (
            (secured.settings(basic_auth_password_file=str(secured.pki / "wrong-password")),
             "refused our credentials"),
            (secured.settings(ca_file=str(secured.pki / "other-ca.crt")), "TLS handshake failed")):
        app = app_for(bad, start_refresher=False)
        app.extensions["extender"].cache.refresh()
        client = app.test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
        check = client.get("/api/v1/selfcheck").get_json()
        assert check["ok"] is False
        assert check["prometheus_up"] is False
        assert words in ready.get_json()["errors"]["node_aliases"]
        assert words in " ".join(check["failed_entries"].values())
        # The verbs still answer (neutrally, from no data).
        assert client.post("/prioritize", json=request).status_code == 200
        assert client.post("/filter", json=request).status_code == 200


class BearerProxy:
    """A loopback reverse proxy that forwards GETs to `upstream` only with the right bearer
    token (401 otherwise), as kube-rbac-proxy or an ingress would."""

    def __init__(self, upstream: str, token: str) -> None:
        self.token = token
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                header = self.headers.get("Authorization", "")
                proxy.seen.append(header)
                if header != f"Bearer {proxy.token}":
                    self._send(401, b"Unauthorized\n", "text/plain")
                    return
                answer = requests.get(upstream + self.path, timeout=5)
                self._send(answer.status_code, answer.content,
                           answer.headers.get("Content-Type", "application/json"))

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> BearerProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_bearer_token_file_through_a_checking_proxy_is_reread_and_wrong_tokens_degrade(
        tmp_path: Path) -> None:
    plain = launcher.prometheus([]).start()
    try:
        with BearerProxy(plain.url, "token-1") as proxy:
            token = tmp_path / "token"
            token.write_text("token-1\n")
            s = settings(prometheus={"url": proxy.url, "query_timeout_s": 2, "retries": 0,
                                     "bearer_token_file": str(token)})
            source = PrometheusSource(s.prometheus)
            assert [x.value for x in source.query("vector(7)")] == [7.0]
            assert proxy.seen[-1] == "Bearer token-1"
            proxy.token = "token-2"  # rotated upstream first: refused ...
            with pytest.raises(PrometheusRefused, match="refused our credentials"):
                source.query("vector(7)")
            token.write_text("token-2\n")  # ... until the projected token file follows
            assert [x.value for x in source.query("vector(7)")] == [7.0]

            token.write_text("stale\n")
            app = app_for(s, start_refresher=False)
            app.extensions["extender"].cache.refresh()
            client = app.test_client()
            assert client.get("/readyz").get_json()["status"] == "degraded"
            check = client.get("/api/v1/selfcheck").get_json()
            assert check["ok"] is False
            assert any("refused our credentials" in e for e in check["failed_entries"].values())
    finally:
        plain.stop()


def test_half_configured_auth_is_a_config_error() -> None:
    from extender.errors import ConfigError

    for prom, words in (({"client_cert_file": "c.crt"}, "client_cert_file, client_key_file"),
                        ({"basic_auth_username": "u"}, "basic_auth_username"),
                        ({"bearer_token_file": "t", "basic_auth_username": "u",
                          "basic_auth_password_file": "p"}, "choose one")):
        with pytest.raises(ConfigError, match=words):
            settings(prometheus=prom)
