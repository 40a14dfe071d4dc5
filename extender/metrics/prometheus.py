"""How we ask Prometheus: prometheus-api-client with explicit timeouts, retries and auth.

prometheus-api-client waits forever by default and retries three times with backoff; both are set
from the settings here. Values arrive as strings ("NaN" and "+Inf" included) and are parsed into
floats; non-finite values are dropped, never passed on as numbers.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from extender.errors import PrometheusRefused, PrometheusUnreachable, QueryFailed
from extender.settings import PrometheusSettings


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant vector."""

    labels: Mapping[str, str]
    value: float
    timestamp: float


@dataclass(frozen=True, slots=True)
class RangeSeries:
    """One series of a range query."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


class MetricsSource(Protocol):
    """Where snapshots come from: Prometheus in production, a fake or a simulator in tests."""

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Evaluate an instant query; MetricsError on failure."""
        ...


class PrometheusSource:
    """A MetricsSource backed by a Prometheus HTTP API."""

    def __init__(self, settings: PrometheusSettings) -> None:
        self.settings = settings
        session = requests.Session()
        if settings.insecure_skip_verify:
            session.verify = False
        elif settings.ca_file:
            session.verify = settings.ca_file
        if settings.client_cert_file and settings.client_key_file:
            session.cert = (settings.client_cert_file, settings.client_key_file)
        retry = Retry(total=settings.retries, connect=settings.retries, read=0, status=0,
                      backoff_factor=0.1, allowed_methods=None)
        self.client = PrometheusConnect(url=settings.url.rstrip("/"), headers=dict(settings.headers),
                                        retry=retry, session=session,
                                        timeout=settings.query_timeout_s)
        # PrometheusConnect mounts its retrying adapter only on a session it creates itself.
        session.mount(settings.url, requests.adapters.HTTPAdapter(max_retries=retry))

    def _refresh_token(self) -> None:
        # Projected service-account tokens and mounted Secrets rotate: read the files on every
        # call, they are tiny.
        s = self.settings
        if s.bearer_token_file:
            token = Path(s.bearer_token_file).read_text().strip()
            self.client.headers = {**s.headers, "Authorization": f"Bearer {token}"}
        elif s.basic_auth_username and s.basic_auth_password_file:
            password = Path(s.basic_auth_password_file).read_text().rstrip("\n")
            self.client.auth = (s.basic_auth_username, password)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            self._refresh_token()
            return fn(*args, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise PrometheusUnreachable(
                f"{self.settings.url}: TLS handshake failed (check prometheus.ca_file, "
                f"client_cert_file, client_key_file): {exc}") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise PrometheusUnreachable(f"{self.settings.url}: {type(exc).__name__}: {exc}") from exc
        except PrometheusApiClientException as exc:
            if any(f"Status Code {code}" in str(exc) for code in (401, 403)):
                raise PrometheusRefused(
                    f"{self.settings.url}: Prometheus refused our credentials ({exc}): check "
                    "prometheus.bearer_token_file, basic_auth_username/basic_auth_password_file, "
                    "client_cert_file") from exc
            raise QueryFailed(f"{self.settings.url}: {exc}") from exc
        except (requests.RequestException, OSError, ValueError, KeyError) as exc:
            raise QueryFailed(f"{self.settings.url}: {type(exc).__name__}: {exc}") from exc

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Evaluate `promql` at time `at` (default: now); only finite values are returned."""
        params = {"time": f"{at:.3f}"} if at is not None else None
        result = self._call(self.client.custom_query, promql, params=params)
        return [s for s in (_sample(item) for item in result) if s is not None]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[RangeSeries]:
        """Evaluate a range query (for the Monitoring API's history)."""
        result = self._call(self.client.custom_query_range, promql,
                            start_time=_dt(start), end_time=_dt(end), step=f"{step:g}s")
        out = []
        for item in result:
            points = tuple((float(t), v) for t, raw in item.get("values", [])
                           if math.isfinite(v := _float(raw)))
            out.append(RangeSeries(item.get("metric", {}), points))
        return out

    def ready(self) -> bool:
        """True when Prometheus answers its readiness endpoint."""
        try:
            self._refresh_token()
            session = self.client._session  # noqa: SLF001 - reuse auth/TLS settings
            # verify and cert passed explicitly, as the client library does: requests lets
            # $REQUESTS_CA_BUNDLE override a session's own `verify`.
            response = session.get(
                self.settings.url.rstrip("/") + "/-/ready", headers=self.client.headers,
                auth=self.client.auth, verify=session.verify, cert=session.cert,
                timeout=self.settings.query_timeout_s)
        except (requests.RequestException, OSError):
            return False
        return bool(response.status_code == 200)


def _float(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan


def _sample(item: Mapping[str, Any]) -> Sample | None:
    try:
        ts, raw = item["value"]
    except (KeyError, TypeError, ValueError):
        return None
    value = _float(raw)
    if not math.isfinite(value):
        return None
    return Sample(item.get("metric", {}), value, float(ts))


def _dt(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)
