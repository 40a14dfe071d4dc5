"""Selectors: parsing, validation, escaping and rendering (pure, no Prometheus)."""

from __future__ import annotations

import re

import pytest

from extender.monitoring.catalog import SelectorSettings
from extender.monitoring.selector import (
    BadSelector,
    Selector,
    allowed_keys,
    apply,
    parse,
    promql_string,
    resolve_workers,
)

JOINS = SelectorSettings()


def test_terms_are_parsed_in_order_with_spaces_trimmed() -> None:
    assert parse(" node=n1 , label.app.kubernetes.io/name=web ").terms == (
        ("node", "n1"), ("label.app.kubernetes.io/name", "web"))
    assert not parse("") and not parse(None)


@pytest.mark.parametrize(("text", "message"), [
    ("node", "is not key=value"),
    ("node=", "is not key=value"),
    ("nod=a", "unknown key 'nod'"),
    ("node!=a", "only key=value (equality)"),
    ("node=~a.*", "only key=value (equality)"),
    ('node=a"} or vector(1) or {x="', "value must be a Kubernetes name"),
    ("pod=a b", "value must be a Kubernetes name"),
    ("pod=" + "a" * 254, "at most 253"),
    ("pid=abc", "pid='abc': expected a number"),
    ("node=a,node=b", "duplicate key 'node'"),
    ("label.Bad Key=x", "not a Kubernetes label key"),
    (",".join(f"label.k{i}=v" for i in range(9)), "at most 8"),
])
def test_bad_selectors_are_rejected_with_the_term_and_the_reason(text: str, message: str) -> None:
    with pytest.raises(BadSelector, match=re.escape(message)):
        parse(text)


def test_own_labels_filter_through_a_single_series_vector() -> None:
    query = apply("sum by (namespace, pod) (x)", "pod", parse("namespace=shop,pod=web-0"), JOINS)
    assert query == ('(sum by (namespace, pod) (x)) and on (namespace, pod) '
                     'label_replace(label_replace(vector(1), "namespace", "shop", "", ""), '
                     '"pod", "web-0", "", "")')


def test_node_at_pod_level_and_pod_labels_join_kube_state_metrics() -> None:
    query = apply("q", "container", parse("node=n1,label.app.kubernetes.io/name=web"), JOINS)
    assert query == ('(q) and on (namespace, pod) kube_pod_info{node="n1"} '
                     'and on (namespace, pod) kube_pod_labels{label_app_kubernetes_io_name="web"}')


@pytest.mark.parametrize(("level", "text"), [
    ("cluster", "node=a"), ("namespace", "pod=a"), ("node", "namespace=a"), ("node", "label.app=a"),
])
def test_a_key_unknown_at_the_level_is_rejected_listing_the_keys_there(level: str, text: str) -> None:
    with pytest.raises(BadSelector, match=f"not available at level {level}"):
        apply("q", level, parse(text), JOINS)  # type: ignore[arg-type]


def test_values_are_escaped_even_when_they_pass_validation() -> None:
    assert promql_string('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    # `$` would expand a capture group in label_replace: doubled (and quoted) before rendering.
    query = apply("q", "node", Selector((("node", "a$1"),)), JOINS)
    assert '"a$$1"' in query


def test_worker_means_its_node_at_node_level_and_its_pod_below() -> None:
    nodes = {"w-1": "n1"}
    picked = parse("worker=w-1")
    assert resolve_workers(picked, "node", "extract", nodes.__getitem__).terms == (("node", "n1"),)
    assert resolve_workers(picked, "pod", "extract", nodes.__getitem__).terms == (
        ("namespace", "extract"), ("pod", "w-1"))
    with pytest.raises(BadSelector, match="contradicts namespace=other"):
        resolve_workers(parse("worker=w-1,namespace=other"), "pod", "extract", nodes.__getitem__)
    with pytest.raises(BadSelector, match="worker is not available at level namespace"):
        resolve_workers(picked, "namespace", "extract", nodes.__getitem__)


def test_allowed_keys_per_level() -> None:
    assert allowed_keys("cluster") == ()
    assert allowed_keys("node") == ("node", "worker")
    assert allowed_keys("pod") == ("node", "namespace", "pod", "label.<key>", "worker")
