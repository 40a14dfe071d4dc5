"""Pure COMPSs files: the published partition -> `resources.xml` and `project.xml`. No I/O.

Design decisions:
- Only ready workers are listed: a COMPSs master that reads a worker it cannot reach waits for
  it and then fails the tasks sent there. Names are the workers' DNS names through the headless
  Service (`plan.compute_node_name`), the shares are `plan.compss_units` of the partition entry,
  the same values the controller puts in the worker's environment.
- Compact text (no indentation): about 960 bytes per worker for both files, so one ConfigMap
  (1 MiB, shared with resources.json) holds about 950 workers; beyond that the reconciler
  publishes resources.json alone and says so (benchmarks/partition_bench.py measures it).
- Deterministic text: nodes sorted by name, fixed element order, fixed number formatting. Equal
  partitions give byte-equal files, so the ConfigMap is rewritten (and the master rolled) only
  when a worker joined, left or changed, and the content hash can stand for the files.
- The XML schemas of the runtime (shipped in `schemas/`) are loose; the runtime's Java validators
  check more. `validate_files` repeats those checks here so that the controller never publishes
  a file the master would reject; the tests also validate against the schemas with lxml.
- The agents' REST bodies (`add_resources_body`, ...) are built here too, element for element as
  the COMPSs scripts `compss_agent_add_resources`, `compss_agent_reduce_resources` and
  `compss_agent_lost_resources` write them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from extender.errors import ExtenderError
from extender.partition.plan import PartitionEntry, Resources, compss_units, compute_node_name
from extender.partition.settings import AgentSettings, PartitionSettings

NIO_ADAPTOR = "es.bsc.compss.nio.master.NIOAdaptor"
CPU_PROCESSOR = "MainProcessor"
GPU_PROCESSOR = "GPU"
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
XSI = "http://www.w3.org/2001/XMLSchema-instance"
UNASSIGNED = "[unassigned]"
"""The agent scripts' value for fields they leave unset."""
DEADLINE_METRIC_PREFIX = "deadlines_missed_"
"""COMPSs's real-time heuristics scheduler pushes `deadlines_missed_<worker>` (job `compss`)."""


def metric_safe(name: str) -> str:
    """`name` as it can appear in a Prometheus metric name: every other character becomes `_`.

    The `<worker>` of COMPSs's `deadlines_missed_<worker>` gauge is the ComputeNode Name, whose
    dots and dashes a metric name cannot hold.
    """
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class CompssDocumentError(ExtenderError):
    """A generated COMPSs file breaks a rule of the runtime: nothing is published."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True, order=True)
class CompssWorker:
    """One ComputeNode as COMPSs sees it."""

    name: str
    """The DNS name (`ComputeNode Name`)."""
    pod: str
    node: str
    cpus: int
    gpus: int
    memory_gb: str
    """GiB rounded to three decimals, as written in the files."""

    @property
    def share(self) -> tuple[int, int, str]:
        """What COMPSs is told: (ComputingUnits, GPUs, memory in GB)."""
        return self.cpus, self.gpus, self.memory_gb


@dataclass(frozen=True, slots=True)
class CompssFiles:
    """The two files, the workers they list and a digest of their content."""

    resources: str
    project: str
    workers: tuple[CompssWorker, ...]
    skipped: Mapping[str, str]
    """Pod -> why a ready worker is not listed."""
    digest: str
    """sha256 of both files (hex, 16 characters): what the master's rollout annotation carries."""


def compss_workers(
    entries: Iterable[PartitionEntry], settings: PartitionSettings
) -> tuple[list[CompssWorker], dict[str, str]]:
    """The ready entries as ComputeNodes, sorted by name, and the ready ones left out (pod -> why)."""
    workers = []
    skipped = {}
    for entry in entries:
        if not entry.ready:
            continue
        cpus, gpus, memory_gb = compss_units(Resources(entry.cpu_millis, entry.memory_bytes, entry.gpus))
        if memory_gb == "0.000":
            skipped[entry.pod] = f"memory share {entry.memory_bytes} bytes is below half a MiB"
            continue
        name = compute_node_name(entry.pod, settings)
        workers.append(CompssWorker(name, entry.pod, entry.node, cpus, gpus, memory_gb))
    return sorted(workers), skipped


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    child = ET.SubElement(parent, tag)
    child.text = text
    return child


def _nio_adaptor(parent: ET.Element, settings: PartitionSettings, *, resources: bool) -> None:
    adaptor = ET.SubElement(ET.SubElement(parent, "Adaptors"), "Adaptor", Name=NIO_ADAPTOR)
    ET.SubElement(ET.SubElement(adaptor, "SubmissionSystem"), "Interactive")
    ports = ET.SubElement(adaptor, "Ports")
    _text(ports, "MinPort", str(settings.compss.min_port))
    _text(ports, "MaxPort", str(settings.compss.max_port))
    if resources:
        _text(ports, "RemoteExecutionCommand", settings.compss.remote_execution_command)


def _serialise(root: ET.Element) -> str:
    # No indentation: it would cost 40% of a ConfigMap that holds at most 1 MiB.
    return XML_DECLARATION + ET.tostring(root, encoding="unicode") + "\n"


def resources_xml(workers: Iterable[CompssWorker], settings: PartitionSettings) -> str:
    """`resources.xml`: per worker its CPU (and GPU) Processor, Memory and the NIO adaptor."""
    root = ET.Element("ResourcesList")
    for worker in workers:
        node = ET.SubElement(root, "ComputeNode", Name=worker.name)
        cpu = ET.SubElement(node, "Processor", Name=CPU_PROCESSOR)
        _text(cpu, "ComputingUnits", str(worker.cpus))
        if worker.gpus:
            gpu = ET.SubElement(node, "Processor", Name=GPU_PROCESSOR)
            _text(gpu, "Type", "GPU")
            _text(gpu, "ComputingUnits", str(worker.gpus))
        _text(ET.SubElement(node, "Memory"), "Size", worker.memory_gb)
        _nio_adaptor(node, settings, resources=True)
    return _serialise(root)


def project_xml(workers: Iterable[CompssWorker], settings: PartitionSettings) -> str:
    """`project.xml`: the MasterNode, then per worker its paths, application and task limit."""
    compss = settings.compss
    root = ET.Element("Project")
    ET.SubElement(root, "MasterNode")
    for worker in workers:
        node = ET.SubElement(root, "ComputeNode", Name=worker.name)
        _text(node, "InstallDir", compss.install_dir)
        _text(node, "WorkingDir", compss.working_dir)
        if compss.user:
            _text(node, "User", compss.user)
        if compss.app_dir or compss.pythonpath:
            app = ET.SubElement(node, "Application")
            if compss.app_dir:
                _text(app, "AppDir", compss.app_dir)
            if compss.pythonpath:
                _text(app, "Pythonpath", compss.pythonpath)
        _text(node, "LimitOfTasks", str(compss.limit_of_tasks or worker.cpus))
        _nio_adaptor(node, settings, resources=False)
    return _serialise(root)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    # Building and parsing ~30 elements per worker makes the cyclic collector run full passes
    # over them again and again: 2.3 s instead of 0.9 s at 5000 workers (benchmarks/compss_bench).
    # Nothing here creates cycles; the collector runs again right after.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compss_files(entries: Iterable[PartitionEntry], settings: PartitionSettings) -> CompssFiles:
    """Both files for the published partition (ready workers only), validated.

    Raises CompssDocumentError when the result breaks a rule of the COMPSs runtime (e.g. two
    workers with the same DNS name); the caller must then publish neither file.
    """
    with _collector_paused():
        workers, skipped = compss_workers(entries, settings)
        resources = resources_xml(workers, settings)
        project = project_xml(workers, settings)
        validate_files(resources, project)
    return CompssFiles(resources, project, tuple(workers), skipped, files_digest(resources, project))


def files_digest(resources: str, project: str) -> str:
    """The digest that stands for the two files (sha256, 16 hex characters)."""
    return hashlib.sha256(f"{resources}\0{project}".encode()).hexdigest()[:16]


# --- the runtime's rules -------------------------------------------------------------------------


def _parse(text: str, root_tag: str, file: str, problems: list[str]) -> ET.Element | None:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        problems.append(f"{file}: not XML: {exc}")
        return None
    if root.tag != root_tag:
        problems.append(f"{file}: root element is <{root.tag}>, expected <{root_tag}>")
        return None
    return root


def _int(element: ET.Element | None) -> int | None:
    try:
        return int((element.text or "").strip()) if element is not None else None
    except ValueError:
        return None


def _float(element: ET.Element | None) -> float | None:
    try:
        return float((element.text or "").strip()) if element is not None else None
    except ValueError:
        return None


def _check_adaptors(where: str, node: ET.Element, problems: list[str], *, required: bool) -> None:
    lists = node.findall("Adaptors")
    if len(lists) > 1:
        problems.append(f"{where}: Adaptors appears {len(lists)} times")
    if not lists:
        if required:
            problems.append(f"{where}: no Adaptors")
        return
    adaptors = lists[0].findall("Adaptor")
    if not adaptors:
        problems.append(f"{where}: Adaptors lists no Adaptor")
    for adaptor in adaptors:
        name = adaptor.get("Name", "")
        if not name:
            problems.append(f"{where}: an Adaptor has no Name")
        if len(adaptor.findall("SubmissionSystem")) != 1:
            problems.append(f"{where}: Adaptor {name}: needs exactly one SubmissionSystem")
        if name != NIO_ADAPTOR:
            continue
        ports = adaptor.find("Ports")
        if ports is None:
            if required:
                problems.append(f"{where}: NIO adaptor without Ports")
            continue
        low, high = _int(ports.find("MinPort")), _int(ports.find("MaxPort"))
        if low is None or high is None or not 0 <= low < high:
            problems.append(f"{where}: NIO Ports need MaxPort > MinPort >= 0, got {low}..{high}")


def _names(file: str, nodes: list[ET.Element], problems: list[str]) -> list[str]:
    names = [node.get("Name", "") for node in nodes]
    seen: set[str] = set()
    for name in names:
        if not name:
            problems.append(f"{file}: a ComputeNode has no Name")
        elif name in seen:
            problems.append(f"{file}: ComputeNode {name}: name already in use")
        seen.add(name)
    return names


def _compute_nodes(text: str, root_tag: str, file: str,
                   problems: list[str]) -> tuple[ET.Element | None, list[tuple[ET.Element, str]]]:
    """The parsed root (None if unusable) and its ComputeNodes with their names, checked unique."""
    root = _parse(text, root_tag, file, problems)
    if root is None:
        return None, []
    nodes = root.findall("ComputeNode")
    return root, list(zip(nodes, _names(file, nodes, problems), strict=True))


def _resources_rules(text: str, problems: list[str]) -> set[str]:
    """Append what the runtime would reject in a `resources.xml`; return its ComputeNode names."""
    file = "resources.xml"
    _, nodes = _compute_nodes(text, "ResourcesList", file, problems)
    for node, name in nodes:
        where = f"{file}: ComputeNode {name}"
        processors = node.findall("Processor")
        if not processors:
            problems.append(f"{where}: no Processor")
        processor_names = [p.get("Name", "") for p in processors]
        if len(set(processor_names)) != len(processor_names):
            problems.append(f"{where}: a Processor name appears more than once")
        for processor, pname in zip(processors, processor_names, strict=True):
            units = processor.findall("ComputingUnits")
            value = _int(units[0]) if len(units) == 1 else None
            if value is None or value <= 0:
                problems.append(f"{where}: Processor {pname}: needs one ComputingUnits > 0")
        memories = node.findall("Memory")
        if len(memories) > 1:
            problems.append(f"{where}: Memory appears {len(memories)} times")
        for memory in memories:
            sizes = memory.findall("Size")
            size = _float(sizes[0]) if len(sizes) == 1 else None
            if size is None or not size > 0:
                problems.append(f"{where}: Memory needs one Size > 0 (GB)")
        _check_adaptors(where, node, problems, required=True)
    return {name for _, name in nodes}


def _project_rules(text: str, problems: list[str]) -> set[str]:
    """Append what the runtime would reject in a `project.xml`; return its ComputeNode names."""
    file = "project.xml"
    root, nodes = _compute_nodes(text, "Project", file, problems)
    if root is None:
        return set()
    masters = len(root.findall("MasterNode"))
    if masters != 1:
        problems.append(f"{file}: expected exactly one MasterNode, found {masters}")
    for node, name in nodes:
        where = f"{file}: ComputeNode {name}"
        for tag in ("InstallDir", "WorkingDir"):
            found = node.findall(tag)
            if len(found) != 1 or not (found[0].text or "").strip():
                problems.append(f"{where}: needs exactly one non-empty {tag}")
        limits = node.findall("LimitOfTasks")
        if limits and (len(limits) > 1 or (_int(limits[0]) or -1) < 0):
            problems.append(f"{where}: LimitOfTasks must appear once, as an integer >= 0")
        _check_adaptors(where, node, problems, required=False)
    return {name for _, name in nodes}


def validate_files(resources: str, project: str) -> None:
    """Raise CompssDocumentError listing every rule of the runtime the two files break.

    Besides each file's own rules, both must name the same ComputeNodes: a project node without
    resources is ignored by the master, a resources node without project paths cannot start.
    """
    problems: list[str] = []
    in_resources = _resources_rules(resources, problems)
    in_project = _project_rules(project, problems)
    if not problems:
        for name in sorted(in_resources ^ in_project):
            problems.append(f"ComputeNode {name}: listed in only one of resources.xml and project.xml")
    if problems:
        raise CompssDocumentError(problems)


# --- the agents' REST bodies ---------------------------------------------------------------------


def _description(parent: ET.Element, worker: CompssWorker) -> None:
    """A MethodResourceDescription, field for field as the agent scripts write it."""
    processors = ET.SubElement(parent, "processors")
    for name, kind, units in ((CPU_PROCESSOR, "CPU", worker.cpus), ("gpu", "GPU", worker.gpus)):
        if units <= 0:
            continue
        processor = ET.SubElement(processors, "processor")
        for tag, value in (("name", name), ("type", kind), ("architecture", UNASSIGNED),
                           ("computingUnits", str(units)), ("internalMemory", "-1.0"),
                           ("propName", UNASSIGNED), ("propValue", UNASSIGNED), ("speed", "-1.0")):
            _text(processor, tag, value)
    for tag, value in (("memorySize", worker.memory_gb), ("memoryType", UNASSIGNED),
                       ("storageSize", "-1.0"), ("storageType", UNASSIGNED),
                       ("operatingSystemDistribution", UNASSIGNED),
                       ("operatingSystemType", UNASSIGNED), ("operatingSystemVersion", UNASSIGNED),
                       ("pricePerUnit", "-1.0"), ("priceTimeUnit", "-1"), ("value", "0.0"),
                       ("wallClockLimit", "-1")):
        _text(parent, tag, value)


def add_resources_body(worker: CompssWorker, agents: AgentSettings) -> str:
    """Body of `PUT /COMPSs/addResources`: the worker agent, its share and its comm port."""
    root = ET.Element("newResource")
    resource = ET.SubElement(root, "externalResource")
    _text(resource, "name", worker.name)
    _description(ET.SubElement(resource, "description"), worker)
    _text(resource, "adaptor", agents.adaptor)
    conf = ET.SubElement(resource, "resourceConf", {f"{{{XSI}}}type": "ResourcesExternalAdaptorProperties"})
    prop = ET.SubElement(conf, "Property")
    _text(prop, "Name", "Port")
    _text(prop, "Value", str(agents.comm_port))
    return _serialise(root)


def reduce_resources_body(worker: CompssWorker) -> str:
    """Body of `PUT /COMPSs/removeResources`: take `worker`'s share away from its node."""
    root = ET.Element("reduceNode")
    _text(root, "workerName", worker.name)
    _description(ET.SubElement(root, "resources"), worker)
    return _serialise(root)


def lost_node_body(name: str) -> str:
    """Body of `PUT /COMPSs/lostNode`: the worker is gone, its running tasks are to be redone."""
    root = ET.Element("lostNode")
    _text(root, "workerName", name)
    return _serialise(root)


@dataclass(frozen=True, slots=True)
class AgentCall:
    """One REST call to the master agent."""

    path: str
    """`addResources`, `removeResources` or `lostNode` (under `/COMPSs/`)."""
    worker: str
    body: str


def membership_calls(
    announced: Mapping[str, CompssWorker], current: Iterable[CompssWorker], agents: AgentSettings
) -> list[AgentCall]:
    """The calls that turn what the master agent was told (`announced`, by name) into `current`.

    A new worker is added; a worker no longer listed is lost (its pod is gone or unready: the
    tasks running there are redone elsewhere); a worker whose share changed has its old share
    removed, then its new one added. Sorted by worker name, removals of a name before its add.
    """
    wanted = {w.name: w for w in current}
    calls = []
    for name in sorted(announced.keys() | wanted.keys()):
        old, new = announced.get(name), wanted.get(name)
        if old is not None and new is not None and old.share == new.share:
            continue
        if new is None:
            calls.append(AgentCall("lostNode", name, lost_node_body(name)))
            continue
        if old is not None:
            calls.append(AgentCall("removeResources", name, reduce_resources_body(old)))
        calls.append(AgentCall("addResources", name, add_resources_body(new, agents)))
    return calls


def workers_in(resources: str) -> dict[str, CompssWorker]:
    """The ComputeNodes of a `resources.xml` this controller published (name -> worker).

    Used at start to learn what a master was last told. Pod and node are not in the file and are
    left empty; unparseable text gives {}.
    """
    try:
        root = ET.fromstring(resources)
    except ET.ParseError:
        return {}
    found = {}
    for node in root.iter("ComputeNode"):
        name = node.get("Name", "")
        units = {p.get("Name"): _int(p.find("ComputingUnits")) or 0 for p in node.iter("Processor")}
        size = node.find("Memory/Size")
        memory = (size.text or "").strip() if size is not None else "0.000"
        found[name] = CompssWorker(name, "", "", units.get(CPU_PROCESSOR, 0), units.get(GPU_PROCESSOR, 0),
                                   memory)
    return found
