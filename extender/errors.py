"""The project's exception tree, one branch per boundary.

    ExtenderError
    ├── ConfigError            a settings or catalog file is invalid (file, key, reason)
    ├── ProtocolError          a kube-scheduler request body cannot be decoded
    │   └── BodyTooLarge       the body exceeds server.max_body_bytes
    ├── AccessReviewFailed     the API server gave no answer to a TokenReview or SubjectAccessReview
    └── MetricsError           Prometheus could not answer a query
        ├── PrometheusUnreachable   connection refused, DNS, timeout, TLS handshake
        │   └── PrometheusRefused   HTTP 401/403: our credentials are wrong (no query can work)
        └── QueryFailed             Prometheus answered with an error (bad PromQL, 4xx/5xx)

`extender.server` maps these to HTTP answers (the Monitoring API's in `monitoring/routes.py`,
refused tokens in `access.py`).
"""


class ExtenderError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ExtenderError):
    """A configuration file or value is invalid; the message names file, key and reason."""


class ProtocolError(ExtenderError):
    """A request body does not match the kube-scheduler extender wire types."""


class BodyTooLarge(ProtocolError):
    """The request body is larger than the configured limit."""


class AccessReviewFailed(ExtenderError):
    """The API server could not review a caller's token (unreachable, an error, or it refused the
    extender's own credentials): the request gets 503, never "allowed"."""


class MetricsError(ExtenderError):
    """Prometheus could not answer."""


class PrometheusUnreachable(MetricsError):
    """No HTTP answer from Prometheus (refused, timed out, DNS)."""


class PrometheusRefused(PrometheusUnreachable):
    """Prometheus (or the proxy in front of it) refused our credentials: every query would
    fail alike, so the refresh treats it as unreachable (degraded, queries skipped)."""


class QueryFailed(MetricsError):
    """Prometheus answered, but with an error for this query."""
