"""The HTTP benchmark's machinery, in a tiny configuration, and the extender's answers under gunicorn.

No timing is asserted: only that the servers start as deployed, answer what kube-scheduler
accepts, and that the benchmark measures and reports every case.
"""

from __future__ import annotations

import http.client
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import bodies, fleet, http_bench, results
from benchmarks.answers import BadAnswer, check_answer
from benchmarks.bench_app import CONFIG
from benchmarks.load import run_load
from benchmarks.servers import BenchServer
from extender.metrics.cache import Fetcher, MetricsCache
from extender.settings import load_settings

NODES = 10

@pytest.fixture(scope="module")
def recorded() -> bodies.Recorded:
    return bodies.Recorded()


@pytest.fixture(scope="module")
def extender() -> Iterator[BenchServer]:
    with BenchServer("extender", nodes=NODES) as server:
        yield server


@pytest.fixture(scope="module", params=["floor", "floor-lean"])
def floor(request: pytest.FixtureRequest) -> Iterator[BenchServer]:
    with BenchServer(request.param, nodes=NODES) as server:
        yield server


_pods = itertools.count(1)


def call(server: BenchServer, verb: str, body: bytes) -> tuple[int, object]:
    """POST `body` (a template: about a pod of its own) and decode the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", f"/{verb}", body=bodies.fill(body, next(_pods)),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def offered(recorded: bodies.Recorded, count: int, mode: bodies.Mode) -> tuple[list[str], bytes]:
    names = bodies.candidates(fleet.node_names(NODES), count)
    return names, bodies.extender_args(recorded, names, mode)


# --- the extender under gunicorn ------------------------------------------------------------------


def test_extender_filter_in_names_mode_answers_a_subset_of_the_offered_names(
        extender: BenchServer, recorded: bodies.Recorded) -> None:
    names, body = offered(recorded, NODES, "names")
    status, answer = call(extender, "filter", body)
    assert status == 200
    assert isinstance(answer, dict) and answer["Error"] == ""
    assert answer["Nodes"] is None
    assert set(answer["NodeNames"]) <= set(names)
    assert set(answer["NodeNames"]) | set(answer["FailedNodes"]) == set(names)
    assert all(reason for reason in answer["FailedNodes"].values())


def test_extender_filter_in_nodes_mode_echoes_the_offered_node_objects(
        extender: BenchServer, recorded: bodies.Recorded) -> None:
    names, body = offered(recorded, NODES, "nodes")
    status, answer = call(extender, "filter", body)
    assert status == 200
    assert isinstance(answer, dict) and answer["NodeNames"] is None
    sent = {item["metadata"]["name"]: item for item in json.loads(body)["Nodes"]["items"]}
    returned = answer["Nodes"]["items"]
    assert {item["metadata"]["name"] for item in returned} <= set(names)
    assert all(item == sent[item["metadata"]["name"]] for item in returned)


@pytest.mark.parametrize("mode", bodies.MODES)
def test_extender_prioritize_scores_every_offered_node_0_to_10(
        extender: BenchServer, recorded: bodies.Recorded, mode: bodies.Mode) -> None:
    names, body = offered(recorded, NODES, mode)
    status, answer = call(extender, "prioritize", body)
    assert status == 200
    assert isinstance(answer, list)
    assert sorted(entry["Host"] for entry in answer) == sorted(names)
    assert all(type(entry["Score"]) is int and 0 <= entry["Score"] <= 10 for entry in answer)
    # The synthetic fleet's values differ per node: a policy that scores them all alike is broken.
    assert len({entry["Score"] for entry in answer}) > 1


def raw_request(server: BenchServer, method: str, path: str, chunks: list[bytes] | None = None
                ) -> tuple[int, dict[str, str], object]:
    """One request; `chunks` are sent with chunked transfer encoding (no Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        if chunks is not None:
            headers["Transfer-Encoding"] = "chunked"
        conn.request(method, path, body=iter(chunks) if chunks is not None else None,
                     headers=headers, encode_chunked=chunks is not None)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def test_extender_reads_chunked_bodies_and_bounds_them(
        extender: BenchServer, recorded: bodies.Recorded) -> None:
    names, body = offered(recorded, NODES, "names")
    body = bodies.fill(body, next(_pods))
    status, _, answer = raw_request(extender, "POST", "/prioritize",
                                    [body[i:i + 1000] for i in range(0, len(body), 1000)])
    assert status == 200
    assert isinstance(answer, list) and sorted(e["Host"] for e in answer) == sorted(names)
    limit = load_settings(CONFIG, environ={}).server.max_body_bytes
    status, _, answer = raw_request(extender, "POST", "/filter",
                                    [b"[" + b" " * 2**20] * (limit // 2**20 + 1))
    assert status == 413
    assert isinstance(answer, dict) and "limit" in answer["Error"]


def test_extender_answers_a_verb_path_with_doubled_slashes(
        extender: BenchServer, recorded: bodies.Recorded) -> None:
    names, body = offered(recorded, NODES, "names")
    status, _, answer = raw_request(extender, "POST", "//prioritize", [bodies.fill(body, next(_pods))])
    assert status == 200
    assert isinstance(answer, list) and sorted(e["Host"] for e in answer) == sorted(names)


def test_extender_verbs_answer_other_methods_with_405(extender: BenchServer) -> None:
    status, headers, answer = raw_request(extender, "GET", "/filter")
    assert status == 405
    assert headers["Allow"] == "POST"
    assert isinstance(answer, dict) and "GET is not allowed" in answer["Error"]


def test_extender_serves_a_fresh_cache_of_the_whole_fleet(extender: BenchServer) -> None:
    state = http_bench.ready(extender)
    assert state["nodes"] == NODES
    assert set(state["errors"]) == set(fleet.STALE_METRICS)


def test_extender_worker_memory_is_visible_from_proc(extender: BenchServer) -> None:
    workers = extender.workers()
    assert len(workers) == 1  # extender serve's default: one gthread worker
    assert workers[0].rss > 0 and workers[0].hwm >= workers[0].rss


def test_floors_pass_every_node_and_score_zero(floor: BenchServer, recorded: bodies.Recorded) -> None:
    names, body = offered(recorded, 4, "names")
    assert call(floor, "filter", body)[1]["NodeNames"] == names  # type: ignore[index]
    status, scores = call(floor, "prioritize", body)
    assert status == 200
    assert scores == [{"Host": name, "Score": 0} for name in names]
    nodes_names, nodes_body = offered(recorded, 3, "nodes")
    items = call(floor, "filter", nodes_body)[1]["Nodes"]["items"]  # type: ignore[index]
    assert [item["metadata"]["name"] for item in items] == nodes_names


# --- the benchmark ---------------------------------------------------------------------------------


def test_tiny_benchmark_measures_every_case_against_the_floor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, results_md = tmp_path / "figures.json", tmp_path / "RESULTS.md"
    monkeypatch.setattr(results, "RESULTS", results_md)
    code = http_bench.main(["--nodes", str(NODES), "--sizes", str(NODES), "--duration", "0.3",
                            "--connections", "2", "--client", "python", "--json", str(out)])
    assert code == 0
    section = results_md.read_text()
    assert "<!-- BEGIN http -->" in section and "<!-- END http -->" in section
    assert f"| names | {NODES} | prioritize |" in section and "| nodes |" in section
    figures = json.loads(out.read_text())
    cases = {(c["mode"], c["candidates"], c["verb"]) for c in figures["cases"]}
    assert cases == {(m, NODES, v) for m in bodies.MODES for v in http_bench.VERBS}
    # The learned profile is measured next to the default one, in names mode.
    learned = {(c["mode"], c["verb"]) for c in figures["cases"] if c["profile"] == "learned"}
    assert learned == {("names", v) for v in http_bench.VERBS}
    assert f"| names (learned) | {NODES} | prioritize |" in section
    for case in figures["cases"]:
        for side in ("extender", "floor"):
            for run in ("serial", "concurrent"):
                result = case[side][run]
                assert result["requests"] > 0 and result["errors"] == 0
                assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
            assert case[side]["concurrent"]["connections"] == 2
        assert case["throughput_ratio"] > 0 and case["serial_ratio"] > 0
        # The lean floor is measured in names mode only.
        if case["mode"] == "names":
            assert case["lean"]["concurrent"]["requests"] > 0 and case["lean_ratio"] > 0
        else:
            assert case["lean"] is None and case["lean_ratio"] is None
    assert figures["refreshes"][0] >= 2 and figures["refreshes"][1] > 0  # primed, then refreshed
    assert list(figures["extender_memory"]) == ["started", "after names mode", "after nodes mode"]
    assert all(w[0]["rss"] > 0 for w in figures["extender_memory"].values())
    # No 500-name case and a 10-node cache: the targets are reported as not measured.
    assert {t["met"] for t in figures["targets"]} == {None}


def test_benchmark_refuses_more_candidates_than_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    assert http_bench.main(["--nodes", "10", "--sizes", "20", "--no-write"]) == 2
    assert "sizes must be within 1..--nodes" in capsys.readouterr().err


@pytest.mark.parametrize("client", [
    pytest.param("wrk", marks=pytest.mark.skipif(shutil.which("wrk") is None,
                                                 reason="wrk not installed (make bench installs it)")),
    "python",
])
def test_load_client_posts_one_pod_per_request_and_reports_figures(
        client: str, extender: BenchServer, recorded: bodies.Recorded, tmp_path: Path) -> None:
    _, body = offered(recorded, 4, "names")
    body_file = tmp_path / "body.json"
    body_file.write_bytes(body)
    first = {"wrk": 7_000_000, "python": 8_000_000}[client]
    result = run_load(extender.url + "/prioritize", body_file, connections=2, duration_s=1,
                      client=client, first_seq=first)
    assert result.client == client and result.requests > 0 and result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    conn = http.client.HTTPConnection("127.0.0.1", extender.port, timeout=30)
    try:
        conn.request("GET", "/api/v1/decisions?limit=1000")
        decisions = json.loads(conn.getresponse().read())["decisions"]
    finally:
        conn.close()
    numbers = [int(d["pod"].rpartition("-")[2]) for d in decisions]
    ours = [n for n in numbers if first <= n < first + 1_000_000]
    assert ours and len(set(ours)) == len(ours)  # every request was about another pod
    # Requests still in flight when the run ends are sent but not counted: a few at most.
    assert max(ours) < first + result.requests + 10


# --- the pieces ------------------------------------------------------------------------------------


def test_fleet_primes_the_cache_with_every_node_and_a_stale_metric() -> None:
    settings = load_settings(CONFIG, environ={})
    source = fleet.FleetSource(settings, 200)
    clock = fleet.OffsetClock()
    cache = MetricsCache(settings, Fetcher(settings, source), clock=clock)
    snapshot = fleet.prime(cache, source, clock)
    table = snapshot.table
    assert table.names == tuple(sorted(source.names))
    assert set(snapshot.status.errors) == set(fleet.STALE_METRICS)
    assert snapshot.status.unmatched == {}  # every instance="<ip>:9100" resolved through aliases
    now = clock()
    for metric in fleet.STALE_METRICS:
        ages = now - table.sampled_at[:, table.column[metric]]
        assert (ages > settings.cache.max_staleness_s).all()
    cpu = table.sampled_at[:, table.column["cpu_utilisation"]]
    assert (now - cpu < settings.cache.max_staleness_s).all()
    gpu = table.values[:, table.column["gpu_utilisation"]]
    assert 0 < (gpu == gpu).sum() < len(table.names)  # GPU series on some nodes only


def test_nodes_mode_bodies_replicate_the_recorded_node_under_each_name(recorded: bodies.Recorded) -> None:
    body = json.loads(bodies.extender_args(recorded, ["a", "b"], "nodes"))
    assert body["NodeNames"] is None and body["Pod"]["spec"] == recorded.pod["spec"]
    items = body["Nodes"]["items"]
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    assert items[0]["metadata"]["labels"]["kubernetes.io/hostname"] == "a"
    assert items[0]["status"] == {**recorded.node["status"], "addresses": items[0]["status"]["addresses"]}


def test_every_filled_body_is_about_another_pod(recorded: bodies.Recorded) -> None:
    template = bodies.extender_args(recorded, ["a"], "names")
    pods = [json.loads(bodies.fill(template, seq))["Pod"]["metadata"] for seq in (1, 2)]
    assert pods[0]["name"] != pods[1]["name"] and pods[0]["uid"] != pods[1]["uid"]
    assert bodies.SEQ_MARKER not in json.dumps(pods)


def test_candidates_cannot_exceed_the_fleet() -> None:
    with pytest.raises(ValueError, match="cannot offer 11 candidates from a fleet of 10"):
        bodies.candidates(fleet.node_names(10), 11)


def test_missing_fixtures_get_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pass --fixtures DIR"):
        bodies.Recorded(tmp_path)


NAMES_BODY = json.dumps({"Pod": {}, "Nodes": None, "NodeNames": ["a", "b"]}).encode()


@pytest.mark.parametrize(("verb", "status", "answer", "complaint"), [
    ("filter", 500, {"Error": "x"}, "HTTP 500"),
    ("filter", 200, {"NodeNames": ["a", "b", "c"], "FailedNodes": {}}, "not offered"),
    ("filter", 200, {"NodeNames": ["a"], "FailedNodes": {}}, "neither passed nor failed"),
    ("filter", 200, {"NodeNames": None, "FailedNodes": {"a": "x", "b": "y"}}, "no NodeNames out"),
    ("filter", 200, {"NodeNames": ["a"], "FailedNodes": {"b": ""}}, "without a reason"),
    ("filter", 200, {"NodeNames": ["a", "b"], "Error": "boom"}, "Error 'boom'"),
    ("prioritize", 200, [{"Host": "a", "Score": 11}, {"Host": "b", "Score": 0}], "outside 0..10"),
    ("prioritize", 200, [{"Host": "a", "Score": 1}], "differ from the offered"),
    ("prioritize", 200, [{"Host": "a", "Score": 1.5}, {"Host": "b", "Score": 0}], "outside 0..10"),
])
def test_answer_check_rejects_what_kube_scheduler_would_reject(
        verb: str, status: int, answer: object, complaint: str) -> None:
    with pytest.raises(BadAnswer, match=complaint):
        check_answer(verb, "names", NAMES_BODY, status, json.dumps(answer).encode())


def test_answer_check_accepts_a_correct_filter_answer() -> None:
    answer = {"NodeNames": ["b"], "FailedNodes": {"a": "cpu 93% > 90%"}, "Error": ""}
    assert check_answer("filter", "names", NAMES_BODY, 200, json.dumps(answer).encode()) \
        == "1 passed, 1 failed"
