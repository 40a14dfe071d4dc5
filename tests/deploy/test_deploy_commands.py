"""The command lines in the manifests are ones our CLI accepts, and the extender starts with them.

The extender is started exactly as its container would be (the Deployment's args and env, the
rendered ConfigMap as /etc/extender), except that it binds to loopback and points at a local
address for Prometheus: it must come up and answer /healthz, /readyz and /metrics even though no
Prometheus answers, over HTTP and, with the TLS overlay's settings, over HTTPS.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extender.cli import SUBCOMMANDS
from extender.localserver import free_port, wait_until
from extender.partition.settings import load_partition_settings
from tests.deploy.conftest import find, pod_specs, render, write_config

OUR_IMAGE = re.compile(r"(ghcr\.io/extract/extender|extract-extender):")
ENTRY = [sys.executable, "-m", "extender.cli"]
"""The image's ENTRYPOINT (`extender`), run from the test's interpreter."""


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args from the container's env."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


def our_command_lines(objects: tuple[dict[str, Any], ...], directory: Path) -> list[list[str]]:
    """`extender ...` arguments of every container running our image, worker sidecars included."""
    containers = [c for _, spec in pod_specs(objects) for c in spec["containers"]]
    template = load_partition_settings(write_config(objects, directory) / "partition.yaml")
    containers += template.pod_template["spec"]["containers"]
    lines = []
    for c in containers:
        if not OUR_IMAGE.match(c["image"]):
            continue
        words = c.get("command", []) + c.get("args", [])
        words = words[1:] if words[:1] == ["extender"] else words
        env = {e["name"]: f"<{e['name']}>" for e in c.get("env", [])}
        lines.append(expand(words, env))
    return lines


def test_every_command_line_in_the_manifests_parses(overlay: tuple[dict[str, Any], ...],
                                                    tmp_path: Path) -> None:
    lines = our_command_lines(overlay, tmp_path)
    assert {line[0] for line in lines} == {"serve", "partition", "sidecar"}
    for line in lines:
        parse(line)


def parse(line: list[str]) -> None:
    """Parse `extender <line>` with that subcommand's own parser; SystemExit(2) when refused."""
    import argparse
    import importlib

    module = importlib.import_module(SUBCOMMANDS[line[0]][0])
    parser = argparse.ArgumentParser(prog=f"extender {line[0]}", allow_abbrev=False)
    module.add_arguments(parser)
    parser.parse_args(line[1:])


def test_command_line_check_refuses_an_unknown_flag() -> None:
    with pytest.raises(SystemExit):
        parse(["serve", "--config", "/etc/extender/extender.yaml", "--listen", "0.0.0.0:8888"])


@pytest.fixture
def pod_filesystem(tmp_path: Path) -> Path:
    (tmp_path / "etc-extender").mkdir()
    return tmp_path


def start_extender(objects: tuple[dict[str, Any], ...], root: Path,
                   extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    container = find(objects, "Deployment", "extender")["spec"]["template"]["spec"][
        "containers"][0]
    config_dir = write_config(objects, root / "etc-extender")
    args = [str(config_dir) + a[len("/etc/extender"):] if a.startswith("/etc/extender/") else a
            for a in container["args"]]
    port = free_port()
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env |= {"PATH": str(Path(sys.executable).parent), "HOME": str(root),
            "EXTENDER_PROMETHEUS__URL": f"http://127.0.0.1:{free_port()}",
            "MPLCONFIGDIR": str(root / "mpl"), **extra_env}
    with (root / "log").open("wb") as log:   # the child keeps its own descriptor
        process = subprocess.Popen([*ENTRY, *args], env=env, cwd=root,
                                   stdout=subprocess.DEVNULL, stderr=log)
    return process, port


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5, context=context) as answer:
        return answer.status, answer.read().decode()


def assert_serves(base: str, process: subprocess.Popen[bytes], log: Path,
                  context: ssl.SSLContext | None = None) -> None:
    def up_or_exited() -> bool:
        return process.poll() is not None or get(base + "/healthz", context)[0] == 200

    wait_until(up_or_exited, timeout_s=60, what="the extender's /healthz")
    assert process.poll() is None, f"extender exited:\n{log.read_text()[-3000:]}"
    assert get(base + "/readyz", context)[0] == 200, "ready although Prometheus is unreachable"
    # The manifests turn server.auth on: /metrics wants a token (no API server here to check one).
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(base + "/metrics", context)
    refused.value.close()
    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_extender_starts_with_its_container_args(pod_filesystem: Path,
                                                 running: list[subprocess.Popen[bytes]]) -> None:
    process, port = start_extender(render("manifests/overlays/production"), pod_filesystem, {})
    running.append(process)
    assert_serves(f"http://127.0.0.1:{port}", process, pod_filesystem / "log")


def test_extender_serves_https_with_the_tls_overlay_settings(
        pod_filesystem: Path, running: list[subprocess.Popen[bytes]]) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl missing: needed to make a test certificate")
    objects = render("manifests/overlays/tls")
    container = find(objects, "Deployment", "extender")["spec"]["template"]["spec"][
        "containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    certs = pod_filesystem / "tls"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=extender.extract.svc",
                    "-addext", "subjectAltName=DNS:extender.extract.svc,IP:127.0.0.1",
                    "-keyout", str(certs / "tls.key"), "-out", str(certs / "tls.crt")],
                   check=True, capture_output=True, timeout=60)
    local = {name: str(certs / Path(path).name) for name, path in env.items()
             if name.startswith("EXTENDER_SERVER__TLS_")}
    assert set(local) == {"EXTENDER_SERVER__TLS_CERT_FILE", "EXTENDER_SERVER__TLS_KEY_FILE"}
    process, port = start_extender(objects, pod_filesystem, local)
    running.append(process)
    context = ssl.create_default_context(cafile=str(certs / "tls.crt"))
    assert_serves(f"https://127.0.0.1:{port}", process, pod_filesystem / "log", context)
