"""`extender simulate --http`: every decision through the extender under gunicorn, compared with
the in-process answer. Real gunicorn servers on loopback ports."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from extender.settings import load_settings
from extender.sim.cli import simulate
from tests.support import OPENB

CONFIG = Path(__file__).resolve().parents[2] / "config" / "extender.yaml"


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """40 GPU nodes and the first 300 pods of the default list (GPU sharing, model constraints)."""
    where = tmp_path_factory.mktemp("trace")
    nodes, pods = where / "nodes.csv", where / "pods.csv"
    for source, target, lines in (("openb_node_list_gpu_node.csv", nodes, 41),
                                  ("openb_pod_list_default.csv", pods, 301)):
        head = (OPENB / source).read_text().splitlines(keepends=True)[:lines]
        target.write_text("".join(head))
    return nodes, pods


@pytest.mark.parametrize(("experiment", "speedup"), [("saturation", 1.0), ("replay", 300.0)])
def test_http_decisions_are_identical_to_in_process(trace: tuple[Path, Path], experiment: str,
                                                    speedup: float) -> None:
    nodes, pods = trace
    settings = load_settings(CONFIG, environ={})
    out = simulate(nodes, pods, experiment, ["metrics-aware", "gpu", "random"], 1,
                   settings=settings, speedup=speedup, http=True)
    checks = {policy: check for policy, _, check in out.http}
    assert set(checks) == {"metrics-aware", "gpu"}  # baselines stay in-process
    for policy, check in checks.items():
        assert check.decisions >= 200, policy
        assert check.mismatches == 0, (policy, check.first_mismatch)
    placed = {row.policy: row for row in out.rows}
    local = simulate(nodes, pods, experiment, ["gpu"], 1, settings=settings, speedup=speedup)
    assert local.rows[0].gpu_alloc_ratio == placed["gpu"].gpu_alloc_ratio


def test_http_check_reports_a_server_that_answers_differently(trace: tuple[Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    nodes, pods = trace
    settings = load_settings(CONFIG, environ={})
    from extender.sim import http

    start = http.start_server

    def stricter(s, workload, workdir=None):  # type: ignore[no-untyped-def]
        # The server gets a CPU limit of 30% instead of 90%; the in-process side keeps 90%.
        profile = s.policy.profiles["metrics-aware"]
        filters = tuple(msgspec.structs.replace(f, above=0.3) if f.metric == "cpu_utilisation"
                        else f for f in profile.filters)
        changed = msgspec.structs.replace(profile, filters=filters)
        policy = msgspec.structs.replace(s.policy, profiles={**s.policy.profiles,
                                                            "metrics-aware": changed})
        return start(msgspec.structs.replace(s, policy=policy), workload, workdir)

    monkeypatch.setattr(http, "start_server", stricter)
    out = simulate(nodes, pods, "saturation", ["metrics-aware"], 1, settings=settings, http=True)
    (_, _, check), = out.http
    assert check.mismatches > 0 and "nodes differ" in check.first_mismatch
