"""The extender's own telemetry: the Prometheus metrics it serves at /metrics.

Not to be confused with the metrics it reads (`extender.metrics`), the named metrics it answers
(`extender.monitoring`) or the sidecar's series (`extender.sidecar.series`). One registry per app,
so that tests can build many apps in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extender.metrics.cache import MetricsCache, Snapshot
from extender.policies.model import FloatArray
from extender.service import BoundPods

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Telemetry:
    """Our own Prometheus metrics, in a registry per app (tests create many apps)."""

    def __init__(self, cache: MetricsCache, clock: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("extender_requests", "Requests by verb and HTTP code",
                                ["verb", "code"], registry=r)
        self.latency = Histogram("extender_request_duration_seconds", "Request latency by verb",
                                 ["verb"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejections = Counter("extender_nodes_rejected", "Nodes rejected by filter, by reason",
                                  ["reason"], registry=r)
        self.placements = Counter("extender_placements", "Placements recorded for hot-spot "
                                  "compensation, by source", ["source"], registry=r)
        self.refresh_duration = Histogram("extender_refresh_duration_seconds",
                                          "Duration of a metrics refresh", registry=r)
        self.refresh_errors = Counter("extender_refresh_errors", "Failed catalog queries",
                                      ["metric"], registry=r)
        self.auth_decisions = Counter(
            "extender_auth_decisions", "Requests to protected endpoints (server.auth) by outcome: "
            "allowed, denied (403), unauthenticated (401), unavailable (503)", ["outcome"],
            registry=r)
        self.auth_reviews = Counter(
            "extender_auth_reviews", "Reviews sent to the API server (cache misses), by review: "
            "token (TokenReview), access (SubjectAccessReview)", ["review"], registry=r)
        self._node_scores: tuple[Sequence[str], Sequence[int]] = ((), ())
        self._node_terms: tuple[Sequence[str], Sequence[str], FloatArray | None] = ((), (), None)
        r.register(_NodeScores(self))
        Gauge("extender_cache_age_seconds", "Seconds since the last successful refresh "
              "(+Inf before the first)", registry=r).set_function(
            lambda: _or_inf(cache.current().age_s(clock())))
        Gauge("extender_prometheus_up", "1 when the last refresh reached Prometheus",
              registry=r).set_function(lambda: float(cache.current().status.prometheus_up))
        Gauge("extender_cache_nodes", "Nodes in the metrics cache",
              registry=r).set_function(lambda: float(len(cache.current().table.names)))

    def watch_informer(self, informer: BoundPods | None) -> None:
        """Expose the pod informer's health (nothing without one)."""
        if informer is None:
            return
        self.registry.register(_InformerMetrics(informer))

    def access_decided(self, outcome: str) -> None:
        self.auth_decisions.labels(outcome).inc()

    def access_reviewed(self, review: str) -> None:
        self.auth_reviews.labels(review).inc()

    def rejected(self, code: str, nodes: int) -> None:
        self.rejections.labels(code).inc(nodes)

    def placement(self, source: str) -> None:
        self.placements.labels(source).inc()

    def set_node_scores(self, names: Sequence[str], scores: Sequence[int]) -> None:
        # Swapped whole and rendered at scrape time: rewriting 5000 gauge children per refresh
        # costs ~0.1 s of GIL; deleted nodes disappear with the next swap.
        self._node_scores = (names, scores)

    def set_node_terms(self, names: Sequence[str], terms: Sequence[str],
                       points: FloatArray | None) -> None:
        """The points each term gave the reference pod per node ((nodes, terms) array), or
        None to serve no per-term series (switched off, or too many nodes)."""
        self._node_terms = (names, terms, points)

    def refreshed(self, snapshot: Snapshot) -> None:
        self.refresh_duration.observe(snapshot.status.duration_s)
        for metric in snapshot.status.errors:
            self.refresh_errors.labels(metric).inc()


class _NodeScores(Collector):
    """`extender_node_score{node}`: the reference pod's score per node, from the last refresh."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def describe(self) -> list[Metric]:
        return [_score_family(), _term_family()]

    def collect(self) -> Iterator[Metric]:
        family = _score_family()
        names, scores = self.telemetry._node_scores
        for name, score in zip(names, scores, strict=True):
            family.add_metric([name], score)
        yield family
        names, terms, points = self.telemetry._node_terms
        if points is None:
            return
        family = _term_family()
        for name, row in zip(names, points.tolist(), strict=True):
            for term, value in zip(terms, row, strict=True):
                family.add_metric([name, term], round(value, 4))
        yield family


def _score_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("extender_node_score", "Score of the reference pod per node",
                             labels=["node"])


def _term_family() -> GaugeMetricFamily:
    return GaugeMetricFamily("extender_node_score_term", "Points of the reference pod's 0..10 "
                             "score each term gave per node (before rounding)",
                             labels=["node", "term"])


def _or_inf(value: float | None) -> float:
    return float("inf") if value is None else value


class _InformerMetrics(Collector):
    """The pod informer's health, read from one status snapshot per scrape."""

    def __init__(self, informer: BoundPods) -> None:
        self.informer = informer

    def collect(self) -> Iterator[Metric]:
        status = self.informer.status()
        yield GaugeMetricFamily("extender_informer_up", "1 when the pod informer has listed "
                                "once and its last list or watch succeeded",
                                value=float(status.up and status.synced))
        yield GaugeMetricFamily("extender_informer_pods", "Bound pods the informer knows",
                                value=float(status.pods))
        yield CounterMetricFamily("extender_informer_relists", "Full relists after the first "
                                  "(410 Gone, resync)", value=float(status.relists))
        yield CounterMetricFamily("extender_informer_errors", "Failed list or watch requests",
                                  value=float(status.errors))
