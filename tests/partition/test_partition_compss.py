"""The COMPSs files: valid against the runtime's schemas and rules, one ComputeNode per ready worker."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import pytest
from lxml import etree

from extender.errors import ConfigError
from extender.partition import compss
from extender.partition.compss import (
    CompssDocumentError,
    CompssWorker,
    compss_files,
    membership_calls,
    validate_files,
    workers_in,
)
from extender.partition.plan import (
    WORKER_ENV,
    ObservedNode,
    PartitionEntry,
    Resources,
    compute_node_name,
    render_worker,
    worker_hostname,
)
from extender.partition.settings import PartitionSettings, load_partition_settings
from tests.partition.conftest import CONFIG, make_settings

SCHEMAS = Path(compss.__file__).parent / "schemas"
GIB = 2**30


@cache
def schema(name: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / name)))


def schema_errors(text: str, name: str) -> list[str]:
    xsd = schema(name)
    ok = xsd.validate(etree.fromstring(text.encode()))
    return [] if ok else [str(e) for e in xsd.error_log]


def assert_valid(files: compss.CompssFiles) -> None:
    assert schema_errors(files.resources, "resources_schema.xsd") == []
    assert schema_errors(files.project, "project_schema.xsd") == []
    validate_files(files.resources, files.project)


def entry(node: str, *, cpu: int = 8000, memory: int = 32 * GIB, gpus: int = 0,
          ready: bool = True) -> PartitionEntry:
    return PartitionEntry(node=node, pod=f"partition-worker-{node}", ip="10.0.0.1", cpu_millis=cpu,
                          memory_bytes=memory, gpus=gpus, ready=ready)


def compute_nodes(text: str) -> dict[str, str]:
    """ComputeNode name -> its serialised element."""
    return {n.get("Name", ""): ET.tostring(n, encoding="unicode")
            for n in ET.fromstring(text).iter("ComputeNode")}


@pytest.fixture
def settings() -> PartitionSettings:
    return make_settings()


def test_files_list_each_ready_worker_with_its_share_and_validate(settings: PartitionSettings) -> None:
    files = compss_files([entry("a", cpu=3200, memory=12 * GIB + GIB // 2),
                          entry("b", cpu=6400, memory=25 * GIB, gpus=2),
                          entry("c", ready=False)], settings)
    assert_valid(files)
    root = ET.fromstring(files.resources)
    names = [n.get("Name") for n in root.iter("ComputeNode")]
    assert names == [compute_node_name("partition-worker-a", settings),
                     compute_node_name("partition-worker-b", settings)]
    assert names[0] == "partition-worker-a.partition-workers.test.svc"
    a, b = root.findall("ComputeNode")
    assert a.findtext("Processor[@Name='MainProcessor']/ComputingUnits") == "3"
    assert a.find("Processor[@Name='GPU']") is None
    assert a.findtext("Memory/Size") == "12.500"
    assert b.findtext("Processor[@Name='GPU']/Type") == "GPU"
    assert b.findtext("Processor[@Name='GPU']/ComputingUnits") == "2"
    ports = b.find("Adaptors/Adaptor[@Name='es.bsc.compss.nio.master.NIOAdaptor']/Ports")
    assert ports is not None
    assert (ports.findtext("MinPort"), ports.findtext("MaxPort")) == ("43001", "43002")
    assert ports.findtext("RemoteExecutionCommand") == "none"
    project = ET.fromstring(files.project)
    assert len(project.findall("MasterNode")) == 1
    node = project.find(f"ComputeNode[@Name='{names[1]}']")
    assert node is not None
    assert (node.findtext("InstallDir"), node.findtext("WorkingDir")) == ("/opt/COMPSs", "/tmp/COMPSsWorker")
    assert (node.findtext("Application/AppDir"), node.findtext("Application/Pythonpath")) == ("/app", "/app")
    assert node.findtext("LimitOfTasks") == "6"


def test_a_share_below_one_core_is_announced_as_one_core(settings: PartitionSettings) -> None:
    files = compss_files([entry("a", cpu=400)], settings)
    assert ET.fromstring(files.resources).findtext(".//ComputingUnits") == "1"


def test_a_worker_with_almost_no_memory_is_left_out_with_the_reason(settings: PartitionSettings) -> None:
    files = compss_files([entry("a"), entry("tiny", memory=1000)], settings)
    assert [w.pod for w in files.workers] == ["partition-worker-a"]
    assert "below half a MiB" in files.skipped["partition-worker-tiny"]
    assert_valid(files)


def test_no_ready_worker_gives_valid_files_with_only_the_master(settings: PartitionSettings) -> None:
    files = compss_files([entry("a", ready=False)], settings)
    assert_valid(files)
    assert compute_nodes(files.resources) == {}
    assert ET.fromstring(files.project).find("MasterNode") is not None


def test_output_is_the_same_whatever_the_order_of_the_entries(settings: PartitionSettings) -> None:
    entries = [entry(f"n{i:03d}", gpus=i % 3) for i in range(50)]
    first = compss_files(entries, settings)
    random.Random(7).shuffle(entries)
    again = compss_files(entries, settings)
    assert (again.resources, again.project, again.digest) == (first.resources, first.project, first.digest)


def test_a_worker_added_or_removed_changes_exactly_its_compute_node(settings: PartitionSettings) -> None:
    entries = [entry(f"n{i}", gpus=i % 2) for i in range(6)]
    before = compss_files(entries, settings)
    after = compss_files([*entries, entry("late", cpu=16000, gpus=4)], settings)
    for file in ("resources", "project"):
        old, new = compute_nodes(getattr(before, file)), compute_nodes(getattr(after, file))
        assert set(new) - set(old) == {compute_node_name("partition-worker-late", settings)}
        assert {k: new[k] for k in old} == old
    removed = compss_files([e for e in entries if e.node != "n3"], settings)
    for file in ("resources", "project"):
        old, new = compute_nodes(getattr(before, file)), compute_nodes(getattr(removed, file))
        assert set(old) - set(new) == {compute_node_name("partition-worker-n3", settings)}
        assert {k: old[k] for k in new} == new
    assert len({before.digest, after.digest, removed.digest}) == 3


def test_paths_user_and_task_limit_come_from_the_settings() -> None:
    settings = make_settings(compss={"user": "compss", "app_dir": None, "pythonpath": "/src",
                                     "limit_of_tasks": 2, "install_dir": "/opt/c", "min_port": 44000,
                                     "max_port": 44010, "cluster_domain": "cluster.local"})
    files = compss_files([entry("a")], settings)
    assert_valid(files)
    node = ET.fromstring(files.project).find("ComputeNode")
    assert node is not None
    assert node.get("Name") == "partition-worker-a.partition-workers.test.svc.cluster.local"
    assert (node.findtext("User"), node.findtext("InstallDir"), node.findtext("LimitOfTasks")) == \
        ("compss", "/opt/c", "2")
    assert node.find("Application/AppDir") is None
    assert node.findtext("Application/Pythonpath") == "/src"
    assert node.findtext(".//MaxPort") == "44010"


def test_dotted_node_names_get_distinct_dns_label_hostnames(settings: PartitionSettings) -> None:
    one, two = worker_hostname("pw-ip-10-0-0-1.ec2.internal"), worker_hostname("pw-ip-10-0-0-1-ec2.internal")
    for name in (one, two):
        assert len(name) <= 63 and name.replace("-", "").isalnum() and name == name.lower()
    assert one != two
    assert worker_hostname("pw-node-1") == "pw-node-1"
    files = compss_files([entry("ip-1.ec2.internal"), entry("ip-1-ec2.internal")], settings)
    assert len(files.workers) == 2
    assert_valid(files)


def test_worker_pod_gets_hostname_subdomain_and_its_published_share(settings: PartitionSettings) -> None:
    view = ObservedNode("gpu-1", Resources(16000, 64 * GIB, 2))
    pod = render_worker(view, settings)
    assert pod["spec"]["hostname"] == "partition-worker-gpu-1"
    assert pod["spec"]["subdomain"] == "partition-workers"
    worker = next(c for c in pod["spec"]["containers"] if c["name"] == settings.sizing.container)
    env = {e["name"]: e.get("value") for e in worker["env"]}
    published = compss_files([entry("gpu-1", cpu=12800, memory=int(64 * GIB * 0.8), gpus=2)],
                             settings).workers[0]
    assert [env[k] for k in WORKER_ENV] == [published.name, str(published.cpus), str(published.gpus),
                                             published.memory_gb]
    disabled = render_worker(view, make_settings(compss={"enabled": False}))
    assert "hostname" not in disabled["spec"] and "subdomain" not in disabled["spec"]


# --- the runtime's rules, on bad documents ---------------------------------------------------


def good(settings: PartitionSettings) -> compss.CompssFiles:
    return compss_files([entry("a", gpus=1), entry("b")], settings)


def mutate(text: str, change: str) -> str:
    root = ET.fromstring(text)
    first = root.find("ComputeNode")
    assert first is not None
    if change == "drop-adaptors":
        first.remove(first.find("Adaptors"))  # type: ignore[arg-type]
    elif change == "drop-processors":
        for p in first.findall("Processor"):
            first.remove(p)
    elif change == "zero-units":
        first.find("Processor/ComputingUnits").text = "0"  # type: ignore[union-attr]
    elif change == "zero-memory":
        first.find("Memory/Size").text = "0"  # type: ignore[union-attr]
    elif change == "ports-reversed":
        first.find(".//MinPort").text = "43002"  # type: ignore[union-attr]
    elif change == "negative-port":
        first.find(".//MinPort").text = "-1"  # type: ignore[union-attr]
        first.find(".//MaxPort").text = "5"  # type: ignore[union-attr]
    elif change == "duplicate-name":
        root.findall("ComputeNode")[1].set("Name", first.get("Name", ""))
    elif change == "drop-workingdir":
        first.remove(first.find("WorkingDir"))  # type: ignore[arg-type]
    elif change == "drop-installdir":
        first.remove(first.find("InstallDir"))  # type: ignore[arg-type]
    elif change == "two-masters":
        root.insert(0, ET.Element("MasterNode"))
    elif change == "no-master":
        root.remove(root.find("MasterNode"))  # type: ignore[arg-type]
    return compss.XML_DECLARATION + ET.tostring(root, encoding="unicode")


RESOURCES_RULES = {
    "drop-adaptors": "no Adaptors",
    "drop-processors": "no Processor",
    "zero-units": "ComputingUnits > 0",
    "zero-memory": "Size > 0",
    "ports-reversed": "MaxPort > MinPort >= 0",
    "negative-port": "MaxPort > MinPort >= 0",
    "duplicate-name": "name already in use",
}
PROJECT_RULES = {
    "drop-workingdir": "WorkingDir",
    "drop-installdir": "InstallDir",
    "two-masters": "exactly one MasterNode",
    "no-master": "exactly one MasterNode",
    "duplicate-name": "name already in use",
}


@pytest.mark.parametrize(("change", "message"), sorted(RESOURCES_RULES.items()))
def test_resources_rules_reject_what_the_runtime_rejects(settings: PartitionSettings, change: str,
                                                          message: str) -> None:
    files = good(settings)
    bad = mutate(files.resources, change)
    with pytest.raises(CompssDocumentError, match=message) as info:
        validate_files(bad, files.project)
    assert all(p.startswith(("resources.xml", "ComputeNode")) for p in info.value.problems)


@pytest.mark.parametrize(("change", "message"), sorted(PROJECT_RULES.items()))
def test_project_rules_reject_what_the_runtime_rejects(settings: PartitionSettings, change: str,
                                                        message: str) -> None:
    files = good(settings)
    with pytest.raises(CompssDocumentError, match=message):
        validate_files(files.resources, mutate(files.project, change))


def test_the_schemas_alone_let_through_what_the_rules_catch(settings: PartitionSettings) -> None:
    """Why the rules exist: the loose schemas accept these, the runtime does not."""
    files = good(settings)
    for change in ("drop-adaptors", "zero-units", "ports-reversed", "duplicate-name"):
        assert schema_errors(mutate(files.resources, change), "resources_schema.xsd") == [], change
    for change in ("drop-workingdir", "duplicate-name"):
        assert schema_errors(mutate(files.project, change), "project_schema.xsd") == [], change


def test_files_naming_different_nodes_are_rejected(settings: PartitionSettings) -> None:
    one, other = compss_files([entry("a")], settings), compss_files([entry("b")], settings)
    with pytest.raises(CompssDocumentError, match="only one of resources.xml and project.xml"):
        validate_files(one.resources, other.project)


def test_text_that_is_not_the_expected_xml_is_rejected(settings: PartitionSettings) -> None:
    files = good(settings)
    with pytest.raises(CompssDocumentError, match="not XML"):
        validate_files("<ResourcesList>", files.project)
    with pytest.raises(CompssDocumentError, match="expected <Project>"):
        validate_files(files.resources, files.resources)


@pytest.mark.parametrize(("change", "message"), [
    ({"min_port": 43002, "max_port": 43002}, "min_port < max_port"),
    ({"min_port": -1}, "min_port"),
    ({"remote_execution_command": "rsh"}, "remote_execution_command"),
    ({"limit_of_tasks": 0}, "limit_of_tasks"),
    ({"service": "Not_A_Label"}, "compss.service"),
    ({"agents": {"url": "compss-master:46101"}}, "compss.agents.url"),
    ({"agents": {"timeout_s": 0}}, "compss.agents.timeout_s"),
])
def test_bad_compss_settings_are_refused_with_the_key(tmp_path: Path, change: dict[str, object],
                                                       message: str) -> None:
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    config.setdefault("compss", {}).update(change)
    path = tmp_path / "partition.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load_partition_settings(path, environ={})


# --- membership calls ------------------------------------------------------------------------


def worker(name: str, cpus: int = 4, gpus: int = 0, memory: str = "8.000") -> CompssWorker:
    return CompssWorker(name, f"pod-{name}", f"node-{name}", cpus, gpus, memory)


def test_membership_calls_add_the_new_lose_the_gone_and_resize_the_changed(
        settings: PartitionSettings) -> None:
    announced = {w.name: w for w in (worker("a"), worker("b"), worker("c"))}
    current = [worker("a"), worker("c", cpus=2), worker("d", gpus=1)]
    calls = membership_calls(announced, current, settings.compss.agents)
    assert [(c.path, c.worker) for c in calls] == [
        ("lostNode", "b"), ("removeResources", "c"), ("addResources", "c"), ("addResources", "d")]
    assert membership_calls({w.name: w for w in current}, current, settings.compss.agents) == []


def test_what_a_master_was_told_is_read_back_from_the_published_resources(
        settings: PartitionSettings) -> None:
    files = compss_files([entry("a", gpus=2), entry("b")], settings)
    told = workers_in(files.resources)
    assert membership_calls(told, files.workers, settings.compss.agents) == []
    assert workers_in("not xml") == {}


def test_the_template_starts_the_nio_worker_with_the_published_name_share_and_paths(
        settings: PartitionSettings) -> None:
    """The 7 + 40 positional arguments of COMPSs's persistent_worker_starter.sh (3.3), in its order
    (setup.sh load_parameters), carry what resources.xml and project.xml say about the worker."""
    import subprocess

    view = ObservedNode("gpu-1", Resources(16000, 64 * GIB, 2))
    pod = render_worker(view, settings)
    container = next(c for c in pod["spec"]["containers"] if c["name"] == settings.sizing.container)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    script = container["command"][2].replace(
        "exec /opt/COMPSs/Runtime/scripts/system/adaptors/nio/persistent_worker_starter.sh", "starter"
    ).replace('mkdir -p "$sandbox"', ":")
    starter = 'starter() { echo "$#"; shift 7; printf "%s\\n" "$@"; }\n'
    done = subprocess.run(["bash", "-c", starter + script], env=env | {"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=10, check=True)
    total, *nio = done.stdout.splitlines()
    assert (int(total), len(nio)) == (47, 40)
    published = compss_files([entry("gpu-1", cpu=12800, memory=int(64 * GIB * 0.8), gpus=2)],
                             settings).workers[0]
    compss_settings = settings.compss
    assert nio[3] == published.name
    assert int(nio[4]) == compss_settings.min_port
    assert (nio[8], nio[9], nio[15]) == (str(published.cpus), str(published.gpus), str(published.cpus))
    assert nio[17] == "python"
    assert nio[18].startswith(compss_settings.working_dir + "/")
    assert nio[19] == compss_settings.install_dir
    assert (nio[20], nio[23]) == (compss_settings.app_dir, compss_settings.pythonpath)
    ports = {p["containerPort"] for p in container["ports"]}
    assert {compss_settings.min_port, compss_settings.max_port} <= ports


def test_a_new_service_name_makes_every_worker_stale(settings: PartitionSettings) -> None:
    """The workers' subdomain and published names follow compss.service: they are replaced."""
    from extender.partition.plan import HASH_ANNOTATION

    view = ObservedNode("a", Resources(8000, 32 * GIB, 0))
    renamed = make_settings(compss={"service": "compss-workers"})
    old, new = render_worker(view, settings), render_worker(view, renamed)
    assert old["metadata"]["annotations"][HASH_ANNOTATION] != new["metadata"]["annotations"][HASH_ANNOTATION]
    assert new["spec"]["subdomain"] == "compss-workers"
