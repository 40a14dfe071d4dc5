"""server.auth: validated at load, off by default, turned on by the environment as the manifests do."""

from __future__ import annotations

from typing import Any

import pytest

from extender.access import AccessGate, Attributes, Caller
from extender.errors import ConfigError
from extender.settings import load_settings
from tests.support import CONFIG, StaticSource, app_for, settings


def auth(**keys: Any) -> dict[str, Any]:
    return {"server": {"auth": keys}}


@pytest.mark.parametrize(("keys", "message"), [
    ({"denied_ttl_s": -1}, r"server.auth.denied_ttl_s: expected seconds >= 0 \(0 = not cached\), got -1"),
    ({"allowed_ttl_s": float("inf")}, r"server.auth.allowed_ttl_s: expected seconds >= 0"),
    ({"cache_size": 0}, r"server.auth.cache_size: expected a number > 0, got 0"),
    ({"request_timeout_s": 0}, r"server.auth.request_timeout_s: expected a number > 0"),
    ({"audiences": ["extract", " "]}, r"server.auth.audiences.1: expected an audience"),
    ({"path_prefix": ""}, r"server.auth.path_prefix: expected '/name' without a trailing '/'"),
    ({"path_prefix": "/x/"}, r"server.auth.path_prefix: expected '/name'"),
    # Every authenticated user may get /api/* (system:discovery): such a prefix opens everything.
    ({"path_prefix": "/api"}, r"server.auth.path_prefix: '/api': the API server's default roles"),
    ({"path_prefix": "/apis/extract"}, r"under /apis; choose another prefix"),
    ({"resource": {"resource": "Services"}}, r"server.auth.resource.resource: 'Services' is not a"),
    ({"resource": {"resource": "extenders", "group": "Extract.IO"}},
     r"server.auth.resource.group: 'Extract.IO'"),
    ({"resource": {"resource": "extenders", "namespace": "Extract"}},
     r"server.auth.resource.namespace: 'Extract' is not a namespace name"),
    ({"resource": {"name": "extender"}}, r"server.auth.resource: Object missing required field `resource`"),
    ({"enable": True}, r"unknown field `enable`"),
])
def test_bad_auth_settings_are_refused_at_load(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(CONFIG, environ={}, overrides=auth(**keys))


def test_off_by_default_and_on_from_the_environment_as_in_the_manifests() -> None:
    default = load_settings(CONFIG, environ={}).server.auth
    assert not default.enabled and default.protect_metrics
    assert default.path_prefix == "/extract-extender"
    env = {"EXTENDER_SERVER__AUTH__ENABLED": "true", "EXTENDER_SERVER__AUTH__AUDIENCES": "[a, b]"}
    on = load_settings(CONFIG, environ=env).server.auth
    assert on.enabled and on.audiences == ("a", "b")


def test_without_auth_every_route_stays_open() -> None:
    s = settings()
    client = app_for(s, StaticSource(s, {}), start_refresher=False).test_client()
    assert client.get("/api/v1/config").status_code == 200
    assert client.get("/metrics").status_code == 200
    # The OpenAPI document says a bearer token may be needed, and what 401 and 403 mean.
    doc = client.get("/api/v1/openapi.json").json
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{}, {"bearer": []}]
    assert all({"401", "403"} <= set(item["get"]["responses"]) for item in doc["paths"].values())


def test_enabled_outside_a_cluster_answers_503_naming_the_cause_and_verbs_still_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Never open, never a crash: without an in-cluster service account or a kubeconfig,
    # protected requests get 503; the process (and its verbs) keeps serving.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    s = settings(**auth(enabled=True))
    client = app_for(s, StaticSource(s, {}), start_refresher=False).test_client()
    answer = client.get("/api/v1/config", headers={"Authorization": "Bearer t"})
    assert answer.status_code == 503
    assert "in-cluster service account: cannot configure" in answer.json["error"]
    assert client.get("/api/v1/config").status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.post("/filter", json={"Pod": {}, "NodeNames": ["a"]}).status_code == 200


class Recording:
    """A Reviewer that records what it was asked and answers from its fields."""

    def __init__(self, caller: Caller | None, allowed: bool = True) -> None:
        self.caller, self.allowed = caller, allowed
        self.tokens: list[str] = []
        self.asked: list[Attributes] = []

    def authenticate(self, token: str) -> Caller | None:
        self.tokens.append(token)
        return self.caller

    def authorize(self, caller: Caller, attributes: Attributes) -> tuple[bool, str]:
        self.asked.append(attributes)
        return self.allowed, ""


def test_methods_map_to_verbs_and_paths_carry_the_prefix() -> None:
    reviewer = Recording(Caller("alice"))
    gate = AccessGate(settings(**auth(enabled=True, allowed_ttl_s=0)).server.auth, reviewer)
    for method in ("GET", "HEAD", "POST", "DELETE", "OPTIONS"):
        assert gate.check("Bearer t", method, "/api/v1/nodes").outcome == "allowed"
    assert [(a.verb, a.path) for a in reviewer.asked] == [
        (verb, "/extract-extender/api/v1/nodes")
        for verb in ("get", "get", "create", "delete", "options")]
    assert reviewer.tokens == ["t"]  # the token's answer is cached; allowed_ttl_s 0 caches none


def test_token_cache_holds_digests_never_tokens_and_stays_bounded() -> None:
    reviewer = Recording(None)
    gate = AccessGate(settings(**auth(enabled=True, cache_size=2)).server.auth, reviewer)
    for token in ("one", "two", "three", "one"):
        assert gate.check(f"Bearer {token}", "GET", "/metrics").outcome == "unauthenticated"
    assert reviewer.tokens == ["one", "two", "three", "one"]  # "one" was evicted (LRU of 2)
    keys = list(gate._tokens._cache.keys())
    assert len(keys) == 2 and all(isinstance(k, bytes) and len(k) == 32 for k in keys)
    assert not any(token.encode() in k for k in keys for token in ("one", "two", "three"))


def test_protected_paths() -> None:
    on = settings(**auth(enabled=True)).server.auth
    gate = AccessGate(on, Recording(None))
    assert not gate.protects("/healthz") and not gate.protects("/readyz")
    assert gate.protects("/metrics") and gate.protects("/api/v1/nodes") and gate.protects("/")
    opened = AccessGate(settings(**auth(enabled=True, protect_metrics=False)).server.auth,
                        Recording(None))
    assert not opened.protects("/metrics") and opened.protects("/api/v1/metrics")
