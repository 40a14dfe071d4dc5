"""A small typed client of the Monitoring API v1, for orchestrators.

    from extender.client import MonitoringClient

    api = MonitoringClient("http://extender.kube-system:8888", timeout_s=2.0)
    api.metrics()                                              # the catalog
    api.current("cpu_utilisation", level="node")               # CurrentValues
    api.current("cpu_usage_cores", level="pod", selector={"namespace": "shop", "label.app": "web"})
    api.history("power_watts", level="node", start="-1h", step="1m")   # History
    api.sd_targets()

Names are the API's: metric names, levels, selector keys, and the answer types of
`extender.monitoring.model`. Every call has a timeout (default 5 s); errors raise
`MonitoringApiError` with the HTTP status and the server's message (`Unavailable` for 503, when
Prometheus is down: node-level current values of cached metrics still answer then; also when the
extender cannot check a bearer token). With `server.auth` on, pass `token_file`.
It needs only requests and msgspec on the caller's side.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import requests

from extender.monitoring.model import (
    CurrentValues,
    Decisions,
    History,
    MetricInfo,
    MetricList,
    NodeDetail,
    NodesView,
    SelfCheck,
    TargetGroup,
)

T = TypeVar("T")
Selector = Mapping[str, str] | str | None


class MonitoringApiError(Exception):
    """The API answered with an error, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


class Unavailable(MonitoringApiError):
    """503: Prometheus (or the worker list) is unreachable right now; retry later."""


def selector_text(selector: Selector) -> str | None:
    """`{"node": "a", "label.app": "web"}` -> `node=a,label.app=web` (strings pass through)."""
    if selector is None or isinstance(selector, str):
        return selector
    return ",".join(f"{key}={value}" for key, value in selector.items())


class MonitoringClient:
    """Typed access to /api/v1 of one extender."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0,
                 session: requests.Session | None = None,
                 token_file: str | Path | None = None) -> None:
        """`token_file`: a bearer token for an extender with `server.auth` on (e.g. the pod's
        /var/run/secrets/kubernetes.io/serviceaccount/token), read again for every request:
        projected ServiceAccount tokens rotate."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.token_file = Path(token_file) if token_file is not None else None

    def metrics(self) -> list[MetricInfo]:
        """The named-metric catalog."""
        return self._get("/api/v1/metrics", MetricList).metrics

    def current(self, name: str, *, level: str | None = None,
                selector: Selector = None) -> CurrentValues:
        """Current values of metric `name` at `level` (default: node, else its first level)."""
        return self._get(f"/api/v1/metrics/{name}", CurrentValues, level=level,
                         selector=selector_text(selector))

    def history(self, name: str, *, start: str | float, end: str | float | None = None,
                step: str | float | None = None, level: str | None = None,
                selector: Selector = None) -> History:
        """Values from `start` to `end` (default now) every `step` (default 60 s).

        Times are Unix seconds, RFC 3339 or `-<duration>` (e.g. "-1h"); steps are seconds or
        durations ("30s"). Too many points or series raise MonitoringApiError 400 / 422.
        """
        return self._get(f"/api/v1/metrics/{name}", History, level=level,
                         selector=selector_text(selector), start=start, end=end, step=step)

    def nodes(self) -> NodesView:
        return self._get("/api/v1/nodes", NodesView)

    def node(self, name: str) -> NodeDetail:
        return self._get(f"/api/v1/nodes/{name}", NodeDetail)

    def decisions(self, *, pod: str | None = None, limit: int = 50) -> Decisions:
        return self._get("/api/v1/decisions", Decisions, pod=pod, limit=limit)

    def selfcheck(self) -> SelfCheck:
        return self._get("/api/v1/selfcheck", SelfCheck)

    def sd_targets(self) -> list[TargetGroup]:
        return self._get("/api/v1/sd/targets", list[TargetGroup])

    def _get(self, path: str, type_: type[T], **params: Any) -> T:
        query = {key: str(value) for key, value in params.items() if value is not None}
        headers = {}
        if self.token_file is not None:
            try:
                headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
            except OSError as exc:
                raise MonitoringApiError(0, f"{self.token_file}: cannot read the token: "
                                            f"{exc.strerror or exc}") from exc
        try:
            response = self.session.get(self.base_url + path, params=query, headers=headers,
                                        timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise MonitoringApiError(0, f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            try:
                message = str(response.json().get("error", response.text))
            except ValueError:
                message = response.text[:200]
            error = Unavailable if response.status_code == 503 else MonitoringApiError
            raise error(response.status_code, message)
        try:
            return msgspec.json.decode(response.content, type=type_)
        except msgspec.DecodeError as exc:
            raise MonitoringApiError(response.status_code,
                                     f"unexpected answer from {path}: {exc}") from exc
