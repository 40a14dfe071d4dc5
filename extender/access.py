"""Who may call the Monitoring API and /metrics: bearer tokens, checked by the API server.

The check kube-rbac-proxy and controller-runtime's metrics filter make, on the Flask app:

    Authorization: Bearer <token>       absent, or another scheme          -> 401 WWW-Authenticate
      TokenReview (authentication.k8s.io/v1, audiences from the settings; none: the API
      server's own)                     not authenticated                  -> 401
      SubjectAccessReview (authorization.k8s.io/v1) for that user, its groups, uid and extra:
      the request path under `path_prefix` (/extract-extender/api/v1/nodes) as a non-resource
      URL with the verb of the method (GET -> get), or the configured resource attribute
                                        not allowed                        -> 403
    the API server unreachable, answering an error, or refusing our own credentials -> 503

Design decisions:
- Never "allow" without an answer from the API server: a review that fails gives 503 (with
  Retry-After), is not cached, and is retried by the next request. An outage is logged when it
  starts and when it ends, not once per request.
- Answers are cached, as kube-rbac-proxy does (2 min for tokens, 5 min allowed, 30 s refused): a
  scraper or dashboard polling every few seconds costs the API server one review per TTL, not
  per request; an authenticated JWT is kept no longer than its `exp`. Token results are keyed
  by the token's SHA-256 digest, never by the token, so a memory dump holds no usable
  credential; authorisations are keyed by what the review is about (user, uid, groups, extra,
  attributes: ServiceAccount tokens carry their own credential id in `extra`, so in practice
  each token has its own). Both caches are LRU-bounded.
- The path is prefixed because the API server's bootstrap role system:discovery lets every
  authenticated user `get` the non-resource URLs /api/*: the bare path /api/v1/decisions would be
  allowed for any token (kube-rbac-proxy in front of such paths has the same trap).
- /healthz and /readyz stay open: kubelet probes carry no token. The scheduler's verbs never reach
  this check: `server.VerbRouter` answers them before Flask (they are protected by mTLS).
- The check is a `before_request` hook on the Flask app, so it protects whichever listener
  serves that app; it runs before routing errors, so unknown paths need a token too (no probing).
- `AccessGate` holds the decisions and caches; `ApiReviewer` is the one part that talks to the API
  server (raw JSON decoded into Structs of the fields we read). Other `Reviewer`s can be given.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec
from cachetools import TLRUCache
from flask import Flask, Response, request
from kubernetes.client import ApiClient, AuthenticationV1Api, AuthorizationV1Api
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from extender.errors import AccessReviewFailed, ConfigError
from extender.monitoring.model import ApiError
from extender.settings import AuthSettings, ResourceAttributes

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Served without a token: the kubelet's probes carry none."""
METRICS_PATH = "/metrics"
RETRY_AFTER_S = "5"
CHALLENGE = 'Bearer realm="extract-extender"'

Outcome = Literal["allowed", "denied", "unauthenticated", "unavailable"]
"""A request's fate: 200 (served), 403, 401, 503."""
Review = Literal["token", "access"]
"""A request to the API server: a TokenReview or a SubjectAccessReview."""

_VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
          "DELETE": "delete"}
"""HTTP method -> authorisation verb, as kube-rbac-proxy maps them (others: lower-cased)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated user, as the TokenReview named it (what SubjectAccessReview needs)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Sorted (key, values) pairs: hashable, so the caller is part of a cache key."""


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a request asks to do: `verb` on a non-resource `path`, or on `resource`."""

    verb: str
    path: str | None = None
    resource: ResourceAttributes | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one request: its outcome and why (for the error body and the log)."""

    outcome: Outcome
    reason: str = ""
    user: str | None = None


class Reviewer(Protocol):
    """Asks the API server; raises `AccessReviewFailed` when it gives no answer."""

    def authenticate(self, token: str) -> Caller | None:
        """The token's user, or None when the token is not valid (for these audiences)."""
        ...

    def authorize(self, caller: Caller, attributes: Attributes) -> tuple[bool, str]:
        """(allowed, the authoriser's reason) for `caller` doing `attributes`."""
        ...


class AccessObserver(Protocol):
    """Telemetry of the check (`extender.telemetry.Telemetry` is one)."""

    def access_decided(self, outcome: Outcome) -> None: ...

    def access_reviewed(self, review: Review) -> None: ...


# --- the API server's answers: only the fields we read ---------------------------------------------


class _UserInfo(msgspec.Struct):
    username: str = ""
    uid: str = ""
    groups: list[str] = []
    extra: dict[str, list[str]] = {}


class _TokenReviewStatus(msgspec.Struct):
    authenticated: bool = False
    user: _UserInfo = msgspec.field(default_factory=_UserInfo)
    audiences: list[str] = []
    error: str = ""


class _TokenReview(msgspec.Struct):
    status: _TokenReviewStatus = msgspec.field(default_factory=_TokenReviewStatus)


class _AccessReviewStatus(msgspec.Struct):
    allowed: bool = False
    denied: bool = False
    reason: str = ""
    evaluationError: str = ""  # noqa: N815 - Kubernetes field names


class _AccessReview(msgspec.Struct):
    status: _AccessReviewStatus = msgspec.field(default_factory=_AccessReviewStatus)


class ApiReviewer:
    """TokenReviews and SubjectAccessReviews through the client `connect()` gives (the extender's
    own identity, which needs `create` on both: the `system:auth-delegator` ClusterRole).

    `connect` runs at the first review, and again after it failed: a missing service account or
    kubeconfig makes protected requests 503 (logged) instead of stopping the process, whose
    verbs do not depend on it."""

    def __init__(self, connect: Callable[[], ApiClient], *, audiences: tuple[str, ...] = (),
                 timeout_s: float = 3.0) -> None:
        self._connect = connect
        self._apis: tuple[AuthenticationV1Api, AuthorizationV1Api] | None = None
        self._lock = threading.Lock()
        self.audiences = audiences
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> ApiReviewer:
        """Over `auth.kubeconfig`, else the in-cluster service account."""
        from extender.leader import api_client_for

        # No retries inside a review: a caller waits at most request_timeout_s per review, and
        # an outage gives one log line, not one per attempt.
        return cls(lambda: api_client_for(auth.kubeconfig, retries=0), audiences=auth.audiences,
                   timeout_s=auth.request_timeout_s)

    def _clients(self) -> tuple[AuthenticationV1Api, AuthorizationV1Api]:
        with self._lock:
            if self._apis is None:
                try:
                    client = self._connect()
                except ConfigError as exc:
                    raise AccessReviewFailed(str(exc)) from exc
                self._apis = AuthenticationV1Api(client), AuthorizationV1Api(client)
            return self._apis

    def authenticate(self, token: str) -> Caller | None:
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        status = self._call("TokenReview", self._clients()[0].create_token_review, body,
                            _TokenReview).status
        if not status.authenticated:
            return None
        if self.audiences and not set(self.audiences) & set(status.audiences):
            return None  # the API server checks this itself; a proxy in between might not
        user = status.user
        return Caller(user.username, user.uid, tuple(user.groups),
                      tuple(sorted((key, tuple(values)) for key, values in user.extra.items())))

    def authorize(self, caller: Caller, attributes: Attributes) -> tuple[bool, str]:
        spec: dict[str, Any] = {"user": caller.username, "groups": list(caller.groups),
                                "extra": {key: list(values) for key, values in caller.extra}}
        if caller.uid:
            spec["uid"] = caller.uid
        if attributes.resource is None:
            spec["nonResourceAttributes"] = {"path": attributes.path, "verb": attributes.verb}
        else:
            r = attributes.resource
            spec["resourceAttributes"] = {
                "verb": attributes.verb, "namespace": r.namespace, "group": r.group,
                "version": r.version, "resource": r.resource, "subresource": r.subresource,
                "name": r.name}
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": spec}
        status = self._call("SubjectAccessReview",
                            self._clients()[1].create_subject_access_review, body,
                            _AccessReview).status
        if status.evaluationError and not status.allowed:
            log.debug("SubjectAccessReview for %s: %s", caller.username, status.evaluationError)
        return status.allowed and not status.denied, status.reason

    def _call(self, kind: str, create: Callable[..., Any], body: dict[str, Any],
              answer: type[msgspec.Struct]) -> Any:
        try:
            response = create(body, _preload_content=False, _request_timeout=self.timeout_s)
            return msgspec.json.decode(response.data, type=answer)
        except ApiException as exc:
            if exc.status in (401, 403):
                raise AccessReviewFailed(
                    f"the API server refused the extender's {kind} ({exc.status} {exc.reason}): "
                    f"its credentials need `create` on {kind.lower()}s (ClusterRole "
                    f"system:auth-delegator)") from exc
            raise AccessReviewFailed(f"{kind} failed: {exc.status} {exc.reason}") from exc
        except (HTTPError, OSError) as exc:
            raise AccessReviewFailed(f"{kind}: the API server is unreachable ({exc})") from exc
        except msgspec.DecodeError as exc:
            raise AccessReviewFailed(f"{kind}: unreadable answer from the API server ({exc})") \
                from exc


# --- the decision, with its caches --------------------------------------------------------------


class _TtlCache:
    """A thread-safe LRU of (value, TTL) entries; an entry with TTL 0 is not kept."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._lock = threading.Lock()
        self._cache: TLRUCache[Any, tuple[Any, float]] = TLRUCache(
            maxsize=size, ttu=lambda _key, entry, now: now + entry[1], timer=clock)

    def get(self, key: Any) -> tuple[Any, float] | None:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: Any, value: Any, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        with self._lock:
            self._cache[key] = (value, ttl_s)


class AccessGate:
    """Decides, with cached reviews, whether a request with an Authorization header may proceed.

    Thread-safe. Reviews run outside the caches' locks (two threads missing the same entry may
    both ask: the API server answers both alike). `clock` is monotonic seconds (cache expiry).
    """

    def __init__(self, auth: AuthSettings, reviewer: Reviewer, *,
                 observer: AccessObserver | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self.reviewer = reviewer
        self.observer = observer
        self._wall_clock = wall_clock
        self._tokens = _TtlCache(auth.cache_size, clock)
        self._access = _TtlCache(auth.cache_size, clock)
        self._outage_lock = threading.Lock()
        self._outage: str | None = None

    def protects(self, path: str) -> bool:
        """Whether a request to `path` needs a token: all but health (and /metrics, if opened)."""
        if path in OPEN_PATHS:
            return False
        return self.auth.protect_metrics or path != METRICS_PATH

    def check(self, authorization: str | None, method: str, path: str) -> Verdict:
        """The verdict for a request with this Authorization header value, method and path."""
        verdict = self._decide(authorization, method, path)
        if self.observer is not None:
            self.observer.access_decided(verdict.outcome)
        return verdict

    def _decide(self, authorization: str | None, method: str, path: str) -> Verdict:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Verdict("unauthenticated", "send a ServiceAccount token as `Authorization: "
                           "Bearer <token>`")
        try:
            caller = self._caller(token)
            if caller is None:
                audiences = ", ".join(self.auth.audiences) or "the API server's"
                return Verdict("unauthenticated", f"the bearer token is not valid (TokenReview: "
                               f"not authenticated for audiences {audiences})")
            verb = _VERBS.get(method.upper(), method.lower())
            attributes = Attributes(verb, path=self.auth.path_prefix + path) \
                if self.auth.resource is None else Attributes(verb, resource=self.auth.resource)
            allowed, reason = self._allowed(caller, attributes)
        except AccessReviewFailed as exc:
            self._outage_started(str(exc))
            return Verdict("unavailable", f"cannot check the bearer token now: {exc}")
        self._outage_ended()
        if allowed:
            return Verdict("allowed", reason, caller.username)
        what = (f"{verb} {path} (RBAC nonResourceURL {attributes.path})"
                if self.auth.resource is None else f"{verb} {_describe(self.auth.resource)}")
        return Verdict("denied", f"{caller.username} may not {what}"
                       + (f": {reason}" if reason else ""), caller.username)

    def _caller(self, token: str) -> Caller | None:
        key = hashlib.sha256(token.encode()).digest()
        cached = self._tokens.get(key)
        if cached is not None:
            found: Caller | None = cached[0]
            return found
        self._reviewed("token")
        caller = self.reviewer.authenticate(token)
        if caller is None:
            self._tokens.put(key, None, self.auth.denied_ttl_s)
            return None
        ttl = self.auth.token_ttl_s
        expiry = _jwt_expiry(token)
        if expiry is not None:  # a token never outlives its own expiry in the cache
            ttl = min(ttl, expiry - self._wall_clock())
        self._tokens.put(key, caller, ttl)
        return caller

    def _allowed(self, caller: Caller, attributes: Attributes) -> tuple[bool, str]:
        key = (caller, attributes)
        cached = self._access.get(key)
        if cached is not None:
            answer: tuple[bool, str] = cached[0]
            return answer
        self._reviewed("access")
        answer = self.reviewer.authorize(caller, attributes)
        self._access.put(key, answer, self.auth.allowed_ttl_s if answer[0]
                         else self.auth.denied_ttl_s)
        return answer

    def _reviewed(self, review: Review) -> None:
        if self.observer is not None:
            self.observer.access_reviewed(review)

    def _outage_started(self, error: str) -> None:
        with self._outage_lock:
            started, self._outage = self._outage is None, error
        if started:
            log.warning("bearer tokens cannot be checked: %s; protected endpoints answer 503 "
                        "until the API server answers again", error)

    def _outage_ended(self) -> None:
        if self._outage is None:
            return
        with self._outage_lock:
            ended, self._outage = self._outage is not None, None
        if ended:
            log.info("bearer tokens are checked again: the API server answers")


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim (epoch seconds) of a JWT, None for other tokens. Not verified (the
    TokenReview did that): only used to cache an answer no longer than the token lives."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        exp = msgspec.json.decode(payload).get("exp")
    except (ValueError, AttributeError, msgspec.DecodeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _describe(resource: ResourceAttributes) -> str:
    what = resource.resource + (f"/{resource.subresource}" if resource.subresource else "")
    if resource.group:
        what += f".{resource.group}"
    if resource.name:
        what += f" {resource.name}"
    return what + (f" in {resource.namespace}" if resource.namespace else "")


# --- the Flask hook -------------------------------------------------------------------------------

_STATUS: Mapping[Outcome, int] = {"unauthenticated": 401, "denied": 403, "unavailable": 503}


def protect(app: Flask, gate: AccessGate) -> None:
    """Check every request `app` serves, except those `gate.protects` leaves open.

    Refusals are the Monitoring API's error shape, `{"error": "..."}`: 401 with
    `WWW-Authenticate: Bearer`, 403, or 503 with `Retry-After`.
    """
    opened = sorted(OPEN_PATHS | ({METRICS_PATH} if not gate.auth.protect_metrics else set()))
    log.info("server.auth: a bearer token is required on every path but %s and the verbs",
             ", ".join(opened))

    @app.before_request
    def check_token() -> Response | None:
        if not gate.protects(request.path):
            return None
        verdict = gate.check(request.headers.get("Authorization"), request.method, request.path)
        if verdict.outcome == "allowed":
            return None
        status = _STATUS[verdict.outcome]
        response = Response(msgspec.json.encode(ApiError(error=verdict.reason)), status=status,
                            mimetype="application/json")
        if status == 401:
            sent = request.headers.get("Authorization", "").lower().startswith("bearer ")
            # RFC 6750: a token was sent and refused, or none was sent.
            response.headers["WWW-Authenticate"] = CHALLENGE + (
                ', error="invalid_token"' if sent else "")
        elif status == 503:
            response.headers["Retry-After"] = RETRY_AFTER_S
        elif status == 403:
            log.debug("refused %s %s: %s", request.method, request.path, verdict.reason)
        return response
