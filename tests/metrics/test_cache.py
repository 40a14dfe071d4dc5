"""The cache: node identity mapping, atomic snapshots, staleness and outages (no Prometheus)."""

from __future__ import annotations

import math

import pytest

from extender.metrics.cache import Fetcher, MetricsCache, build_table
from extender.metrics.identity import NodeResolver, strip_port
from extender.metrics.prometheus import Sample, _sample
from tests.support import StaticSource, healthy, settings


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("value", "host"), [("10.0.0.7:9100", "10.0.0.7"), ("node-1", "node-1"),
                                             ("[fe80::1]:9100", "fe80::1"), ("fe80::1", "fe80::1")])
def test_strip_port(value: str, host: str) -> None:
    assert strip_port(value) == host


def test_resolver_maps_instance_ips_hostnames_and_rejects_strangers() -> None:
    resolver = NodeResolver(frozenset({"node-a", "node-b"}), {"10.0.0.7": "node-a"})
    labels = ("hostname", "Hostname", "node", "instance")
    assert resolver.resolve({"instance": "10.0.0.7:9100"}, labels) == ("node-a", "10.0.0.7:9100")
    assert resolver.resolve({"Hostname": "node-b"}, labels) == ("node-b", "node-b")
    assert resolver.resolve({"hostname": "node-b"}, labels) == ("node-b", "node-b")
    assert resolver.resolve({"instance": "node-a.cluster.local:9100"}, labels)[0] == "node-a"
    assert resolver.resolve({"instance": "10.9.9.9:9100"}, labels) == (None, "10.9.9.9:9100")
    assert resolver.resolve({"job": "x"}, labels) == (None, "")
    # Without kube_node_info every identity is taken as a node name (port stripped).
    assert NodeResolver().resolve({"instance": "n1:9100"}, labels) == ("n1", "n1:9100")


def test_non_finite_values_are_dropped() -> None:
    assert _sample({"metric": {}, "value": [1.0, "NaN"]}) is None
    assert _sample({"metric": {}, "value": [1.0, "+Inf"]}) is None
    assert _sample({"metric": {"a": "b"}, "value": [1.0, "0.5"]}) == Sample({"a": "b"}, 0.5, 1.0)


def test_unmatched_identities_are_reported_not_guessed() -> None:
    s = settings()
    results = {"cpu_utilisation": [Sample({"instance": "10.0.0.1:9100"}, 0.5, 1.0),
                                   Sample({"instance": "10.9.9.9:9100"}, 0.9, 1.0)]}
    table, unmatched = build_table(s, results, NodeResolver(frozenset({"a"}), {"10.0.0.1": "a"}),
                                   1.0, None)
    assert table.names == ("a",)
    assert table.value("a", "cpu_utilisation") == 0.5
    assert unmatched == {"cpu_utilisation": ("10.9.9.9:9100",)}


def test_scale_is_applied_and_duplicate_series_keep_the_largest() -> None:
    s = settings()
    results = {"host_power_watts": [Sample({"node": "a"}, 250e6, 1.0)],
               "gpu_utilisation": [Sample({"Hostname": "a"}, 0.2, 1.0),
                                   Sample({"hostname": "a"}, 0.6, 1.0)]}
    table, _ = build_table(s, results, NodeResolver(frozenset({"a"})), 1.0, None)
    assert table.value("a", "host_power_watts") == pytest.approx(250.0)
    assert table.value("a", "gpu_utilisation") == pytest.approx(0.6)


@pytest.mark.parametrize("rules", ["raw", "recorded"])
def test_refresh_swaps_a_whole_snapshot_with_one_query_per_entry(rules: str) -> None:
    s = settings(cache={"recording_rules": rules})
    nodes = ["a", "b"]
    source = StaticSource(s, healthy(nodes, cpu_utilisation={"a": 0.2, "b": 0.8}))
    clock = Clock()
    cache = MetricsCache(s, Fetcher(s, source), clock=clock)
    before = cache.current()
    after = cache.refresh()
    assert before is not after and cache.current() is after
    # the catalog, the owners entries and the alias query
    assert len(source.queries) == len(s.catalog) + len(s.owner_catalog) + 1
    assert after.table.value("b", "cpu_utilisation") == 0.8
    assert after.status.prometheus_up and after.age_s(clock.now) == 0.0


def test_outage_keeps_old_values_until_stale_then_recovers() -> None:
    s = settings()
    source = StaticSource(s, healthy(["a"]))
    clock = Clock()
    cache = MetricsCache(s, Fetcher(s, source), clock=clock)
    cache.refresh()
    source.down = True
    clock.now += 30
    down = cache.refresh()
    assert not down.status.prometheus_up
    assert down.table.value("a", "cpu_utilisation") == 0.5  # kept, with its old timestamp
    j = down.table.column["cpu_utilisation"]
    assert down.table.sampled_at[0, j] == clock.now - 30
    assert down.age_s(clock.now) == 30
    assert all("unreachable" in e or "skipped" in e for e in down.status.errors.values())
    source.down = False
    clock.now += 30
    up = cache.refresh()
    assert up.status.prometheus_up and up.status.errors == {}
    assert up.table.sampled_at[0, j] == clock.now


def test_a_failing_query_does_not_fail_the_others() -> None:
    from extender.errors import QueryFailed

    s = settings()
    source = StaticSource(s, healthy(["a"]))
    bad = s.metric("disk_io_now").query
    real = source.query

    def query(promql: str, at: float | None = None) -> list[Sample]:
        if promql == bad:
            raise QueryFailed("bad_data: parse error")
        return real(promql, at)

    source.query = query  # type: ignore[method-assign]
    snapshot = MetricsCache(s, Fetcher(s, source), clock=Clock()).refresh()
    assert snapshot.status.prometheus_up
    assert list(snapshot.status.errors) == ["disk_io_now"]
    assert math.isnan(snapshot.table.value("a", "disk_io_now"))
    assert snapshot.table.value("a", "cpu_utilisation") == 0.5


def test_deleted_nodes_are_forgotten_after_long_staleness() -> None:
    s = settings()
    source = StaticSource(s, healthy(["a", "b"]))
    clock = Clock()
    cache = MetricsCache(s, Fetcher(s, source), clock=clock)
    cache.refresh()
    source.values = healthy(["a"])
    source.nodes = ["a"]
    clock.now += 60
    assert "b" in cache.refresh().table.names  # still shown (stale soon) ...
    clock.now += 10 * s.cache.max_staleness_s
    assert cache.refresh().table.names == ("a",)  # ... then forgotten


def test_refresher_thread_refreshes_and_stops() -> None:
    from extender import localserver

    s = settings(cache={"refresh_interval_s": 0.05})
    source = StaticSource(s, healthy(["a"]))
    cache = MetricsCache(s, Fetcher(s, source))
    cache.start()
    try:
        localserver.wait_until(lambda: cache.current().refreshes >= 3, timeout_s=10,
                              what="three refreshes")
    finally:
        cache.stop()
    count = cache.current().refreshes
    assert cache._thread is not None and not cache._thread.is_alive()
    assert cache.current().refreshes == count


def test_child_fetcher_refreshes_in_another_process_and_survives_its_death() -> None:
    import functools
    import os
    import signal

    from extender.metrics.cache import ChildFetcher
    from tests.support import PidSource

    s = settings()
    fetcher = ChildFetcher(s, functools.partial(PidSource, s))
    cache = MetricsCache(s, fetcher, clock=Clock())
    try:
        first = cache.refresh()
        child_pid = first.table.value("a", "cpu_utilisation")
        assert first.status.prometheus_up and child_pid not in (0, os.getpid())
        os.kill(int(child_pid), signal.SIGKILL)
        dead = cache.refresh()  # reported, not raised; the old table is kept
        assert not dead.status.prometheus_up and "refresh process died" in dead.status.errors["refresh"]
        assert dead.table.value("a", "cpu_utilisation") == child_pid
        again = cache.refresh()  # a new child answers
        assert again.status.prometheus_up
        assert again.table.value("a", "cpu_utilisation") not in (child_pid, os.getpid())
    finally:
        cache.stop()


def test_allocation_state_comes_from_kube_state_metrics_requests() -> None:
    s = settings()
    values = healthy(["a", "b", "c"])
    values.update({
        "cpu_allocatable_cores": {"a": 64, "b": 32, "c": 16},
        "cpu_requested_cores": {"a": 60.5, "b": 0},            # c: no data
        "memory_allocatable_bytes": {"a": 2**38, "b": 2**37, "c": 2**36},
        "memory_requested_bytes": {"a": 2**37, "b": 0, "c": 0},
        "gpus_allocatable": {"a": 8, "b": 2},                   # c: no GPUs
        "gpus_requested": {"a": 7, "b": 0},
    })
    snapshot = MetricsCache(s, Fetcher(s, StaticSource(s, values))).refresh()
    alloc = snapshot.table.allocation
    assert alloc is not None
    assert alloc.cpu_free_milli[:2].tolist() == [3500.0, 32000.0]
    assert math.isnan(alloc.cpu_free_milli[2])
    assert alloc.memory_free_mib.tolist() == [2**17, 2**17, 2**16]
    assert alloc.gpu_free_milli.tolist() == [[1000, 0, 0, 0, 0, 0, 0, 0],
                                             [1000, 1000, -1, -1, -1, -1, -1, -1],
                                             [-1] * 8]
