"""manifests/examples/compss: renders, agrees with the controller's settings, and a real apiserver
accepts it (server-side dry run)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from extender.partition.compss import compss_files
from extender.partition.plan import ObservedNode, PartitionEntry, Resources, render_worker
from extender.partition.settings import PartitionSettings, load_partition_settings
from tests.controlplane import ControlPlane
from tests.deploy.conftest import find, kubernetes_version, render, validate_object, write_config

EXAMPLE = "manifests/examples/compss"


@pytest.fixture(scope="module")
def objects() -> tuple[dict[str, Any], ...]:
    return render(EXAMPLE)


@pytest.fixture
def partition(objects: tuple[dict[str, Any], ...], tmp_path: Path) -> PartitionSettings:
    """The controller's settings as the example's pods see them."""
    return load_partition_settings(write_config(objects, tmp_path) / "partition.yaml", environ={})


def master(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "Deployment", "compss-master")["spec"]["template"]["spec"]
    return spec


def runcompss_args(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    script = master(objects)["containers"][0]["command"][2]
    words = shlex.split(script.replace("\\\n", " "))
    return dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)


def worker_env(settings: PartitionSettings) -> dict[str, str]:
    container = next(c for c in settings.pod_template["spec"]["containers"]
                     if c["name"] == settings.sizing.container)
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_every_object_of_the_example_matches_its_schema(objects: tuple[dict[str, Any], ...]) -> None:
    version = kubernetes_version(render("manifests/base"))
    for obj in objects:
        validate_object(obj, version)


def test_master_reads_the_files_the_controller_publishes_and_is_the_one_it_rolls(
        objects: tuple[dict[str, Any], ...], partition: PartitionSettings) -> None:
    assert partition.compss.enabled and partition.compss.membership == "roll"
    deployment = find(objects, "Deployment", "compss-master")
    assert deployment["metadata"]["name"] == partition.compss.master_deployment
    assert deployment["metadata"]["namespace"] == partition.namespace
    spec = master(objects)
    volume = next(v for v in spec["volumes"] if v.get("configMap", {}).get("name") == partition.configmap)
    assert {i["key"] for i in volume["configMap"]["items"]} == {"resources.xml", "project.xml"}
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    args = runcompss_args(objects)
    assert args["resources"] == f"{mount['mountPath']}/resources.xml"
    assert args["project"] == f"{mount['mountPath']}/project.xml"


def test_workers_and_master_agree_on_the_master_the_run_and_the_ports(
        objects: tuple[dict[str, Any], ...], partition: PartitionSettings) -> None:
    args, env = runcompss_args(objects), worker_env(partition)
    service = find(objects, "Service", "compss-master")
    assert env["COMPSS_MASTER_NAME"] == args["master_name"] == \
        f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert env["COMPSS_UUID"] == args["uuid"]
    assert int(args["master_port"]) in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"].items() <= \
        find(objects, "Deployment", "compss-master")["spec"]["template"]["metadata"]["labels"].items()
    # The worker the controller renders listens where resources.xml says, under the name it lists.
    node = ObservedNode("gpu-1", Resources(16000, 64 * 2**30, 2))
    pod = render_worker(node, partition)
    container = next(c for c in pod["spec"]["containers"] if c["name"] == partition.sizing.container)
    assert partition.compss.min_port in {p["containerPort"] for p in container["ports"]}
    share = container["resources"]["requests"]
    files = compss_files([PartitionEntry("gpu-1", pod["metadata"]["name"], "10.0.0.1",
                                         int(share["cpu"].rstrip("m")), int(share["memory"]),
                                         int(share.get("nvidia.com/gpu", 0)), True)], partition)
    values = {e["name"]: e.get("value") for e in container["env"]}
    assert values["WORKER_HOSTNAME"] == files.workers[0].name
    assert values["WORKER_CPUS"] == str(files.workers[0].cpus)


def test_the_application_is_mounted_where_both_sides_look_for_it(
        objects: tuple[dict[str, Any], ...], partition: PartitionSettings) -> None:
    app = find(objects, "ConfigMap", "compss-app")
    assert "deadline_demo.py" in app["data"]
    assert "extender.sidecar" in app["data"]["deadline_demo.py"]
    assert runcompss_args(objects)["pythonpath"] == partition.compss.pythonpath
    volumes = {v["name"]: v for v in partition.pod_template["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for c in partition.pod_template["spec"]["containers"]
              for m in c.get("volumeMounts", [])}
    assert volumes[mounts[partition.compss.app_dir or ""]]["configMap"]["name"] == app["metadata"]["name"]


def kubectl() -> str:
    """kubectl on PATH or next to this interpreter (hack/install-deps.sh), as for rendering."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("no kubectl on PATH: run hack/install-deps.sh")
    return found


def test_a_real_apiserver_accepts_the_example_in_a_server_side_dry_run(
        objects: tuple[dict[str, Any], ...], control_plane: ControlPlane, tmp_path: Path) -> None:
    namespaces = sorted({o["metadata"]["namespace"] for o in objects if o["metadata"].get("namespace")})
    created = []
    with control_plane.api_client() as client:
        core = CoreV1Api(client)
        # A dry-run Namespace is not stored: the namespaced objects need real ones.
        for name in namespaces:
            try:
                core.create_namespace({"metadata": {"name": name}})
                created.append(name)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        try:
            manifest = tmp_path / "example.yaml"
            manifest.write_text(yaml.safe_dump_all(objects))
            done = subprocess.run(
                [kubectl(), "--kubeconfig", str(control_plane.kubeconfig), "apply", "--server-side",
                 "--dry-run=server", "--field-manager=compss-example-test", "-f", str(manifest)],
                capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, done.stderr
            accepted = [line for line in done.stdout.splitlines() if "(server dry run)" in line]
            assert len(accepted) == len(objects), done.stdout
        finally:
            for name in created:
                core.delete_namespace(name)
