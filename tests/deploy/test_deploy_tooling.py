"""hack/kind-e2e.sh (shellcheck-clean, a dry run that runs nothing) and the image definition."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO

SCRIPT = REPO / "hack" / "kind-e2e.sh"
TOOLS = ("kind", "docker", "kubectl", "helm")


def test_kind_e2e_passes_shellcheck() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck missing: run hack/install-deps.sh (Debian package shellcheck)")
    done = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout


@pytest.fixture
def tripwire_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose kind/docker/kubectl/helm record any call and fail."""
    calls = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 97\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, calls


def test_dry_run_prints_every_step_and_runs_nothing(
        tripwire_path: tuple[dict[str, str], Path]) -> None:
    env, calls = tripwire_path
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert not calls.exists(), f"dry run executed: {calls.read_text()}"
    commands = [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]
    expected_in_order = [
        "kind create cluster --name extract-e2e",
        "docker build --tag extract-extender:dev",
        "kind load docker-image extract-extender:dev",
        "helm upgrade --install kps prometheus-community/kube-prometheus-stack",
        "helm upgrade --install prometheus-pushgateway",
        "kubectl apply --server-side -k",
        "kubectl -n extract rollout status deployment/extender",
        "kubectl apply -k",
        "kubectl -n extract-demo wait --for=condition=complete job/metrics-aware-batch",
        "kubectl -n extract-demo get events.events.k8s.io --field-selector reason=Scheduled",
        "kubectl -n monitoring create token kube-prometheus-stack-prometheus",
        "kubectl -n extract exec pod/EXTENDER_POD -i -c extender",
        "kubectl -n extract get pods -l app.kubernetes.io/name=partition-worker",
        "kubectl -n monitoring exec pod/PROMETHEUS_POD -c prometheus -- wget",
        "kind delete cluster --name extract-e2e",
    ]
    position = 0
    for step in expected_in_order:
        found = [i for i, c in enumerate(commands) if i >= position and c.startswith(step)]
        assert found, f"missing or out of order: {step}"
        position = found[0]
    assert any(c.endswith("manifests/overlays/dev") for c in commands)
    assert any(c.endswith("manifests/examples") for c in commands)


def test_unknown_argument_is_refused_with_usage() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert "unknown argument: --dryrun" in done.stderr and "Usage:" in done.stderr


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into stages at FROM."""
    # Docker drops comment lines first, also inside continued instructions; then joins lines.
    text = re.sub(r"(?m)^\s*#.*\n", "", (REPO / "Dockerfile").read_text())
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip()]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_image_is_multi_stage_and_the_final_stage_has_no_build_tools() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert any(ln.startswith("COPY --from=build /opt/extender") for ln in final)
    runs = " ".join(ln for ln in final if ln.startswith("RUN "))
    for tool in ("pip ", "apt-get", "gcc", "build-essential"):
        assert tool not in runs, f"final stage runs {tool.strip()}"
    user = [ln for ln in final if ln.startswith("USER ")]
    assert user and re.fullmatch(r"USER [1-9]\d*:[1-9]\d*", user[-1]), "numeric non-root USER"
    assert 'ENTRYPOINT ["extender"]' in final


def test_image_installs_only_the_pinned_runtime_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", requirement), requirement
    build = " ".join(dockerfile_stages()[0])
    assert '["project"]["dependencies"]' in build and "optional-dependencies" not in build


def test_build_context_keeps_what_the_dockerfile_copies() -> None:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:  # Docker's rule: the last matching line wins
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                result = not negated
        return result

    sources = [ln.split()[1:-1] for stage in dockerfile_stages() for ln in stage
               if ln.startswith("COPY ") and "--from=" not in ln]
    for source in (s for group in sources for s in group):
        assert (REPO / source).exists(), source
        assert not ignored(source.rstrip("/")), f".dockerignore drops {source}"
    assert ignored("tests") and ignored(".venv") and ignored(".git")


FAKE_KUBECTL = r"""#!/bin/sh
# A cluster in which the example workload was placed by metrics-aware (see the test).
echo "kubectl $*" >> "$CALLS"
case "$*" in
  *"extract-demo get pods -o name"*) seq 1 "$DEMO_PODS" | sed 's|^|pod/demo-|' ;;
  *"get events.events.k8s.io"*) seq 1 "$DEMO_PODS" | sed "s|.*|$SCHEDULED_BY|" ;;
  *"-l app.kubernetes.io/name=extender -o name"*) printf 'pod/extender-a\npod/extender-b\n' ;;
  *"create token kube-prometheus-stack-prometheus"*) printf 'token-of-prometheus\n' ;;
  *"exec pod/extender-a"*)
    # /metrics needs Prometheus' token (server.auth), sent on standard input.
    [ "$(cat)" = token-of-prometheus ] || exit 0
    printf '# TYPE extender_requests_total counter\n'
    printf 'extender_requests_total{verb="filter",code="200"} %s\n' "$FILTER_CALLS"
    printf 'extender_requests_total{verb="prioritize",code="200"} 99.0\n'
    printf 'extender_requests_total{verb="filter",code="500"} 99.0\n' ;;
  *"exec pod/extender-b"*)
    [ "$(cat)" = token-of-prometheus ] || exit 0
    printf 'extender_requests_total{verb="filter",code="200"} 0.0\n' ;;
  *"get nodes"*) printf 'node/worker-1\nnode/worker-2\n' ;;
  *"partition-worker"*) printf '%s' "$WORKER_NODES" | tr ',' '\n' ;;
  *"get deployment extender"*) printf '2' ;;
  *"-l app.kubernetes.io/name=prometheus -o name"*) printf 'pod/prometheus-0\n' ;;
  *"exec pod/prometheus-0"*)
    printf '{"status":"success","data":{"resultType":"vector","result":[{"metric":{},'
    printf '"value":[1700000000.1,"%s"]}]}}\n' "$EXTENDERS_UP" ;;
esac
exit 0
"""


@pytest.fixture
def fake_cluster(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """kind/docker/helm that succeed silently, and a kubectl that answers the script's checks."""
    calls = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kind", "docker", "helm"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "$CALLS"\nexit 0\n')
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL)
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
           "TIMEOUT": "0s", "DEMO_PODS": "10", "SCHEDULED_BY": "metrics-aware",
           "FILTER_CALLS": "10.0", "WORKER_NODES": "worker-1,worker-2", "EXTENDERS_UP": "2"}
    return env, calls


@pytest.mark.parametrize(("change", "verdict"), [
    ({}, "PASSED"),
    ({"SCHEDULED_BY": "default-scheduler"}, "every demo pod scheduled by metrics-aware"),
    ({"FILTER_CALLS": "9.0"}, "the extender's filter counters"),
    ({"WORKER_NODES": "worker-1"}, "one partition worker per eligible node"),
    ({"WORKER_NODES": "worker-1,worker-1"}, "one partition worker per eligible node"),
    ({"EXTENDERS_UP": "1"}, "Prometheus scraping every extender replica"),
])
def test_e2e_checks_pass_only_on_a_correct_cluster(fake_cluster: tuple[dict[str, str], Path],
                                                   change: dict[str, str], verdict: str) -> None:
    env, calls = fake_cluster
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**env, **change}, check=False)
    if verdict == "PASSED":
        assert done.returncode == 0, done.stderr
        assert "== PASSED" in done.stderr
    else:
        assert done.returncode == 1
        assert f"timed out after 0s waiting for: {verdict}" in done.stderr
    # The cluster is deleted whatever the outcome.
    assert calls.read_text().splitlines()[-1] == "kind delete cluster --name extract-e2e"
