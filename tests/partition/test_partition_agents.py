"""`membership: agents`: the COMPSs agents' REST calls, against a local HTTP server checking them."""

from __future__ import annotations

import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest

from extender.partition.compss import XSI, CompssWorker, compss_files
from extender.partition.membership import AgentMembership, MembershipError, membership_for
from extender.partition.plan import PartitionEntry
from extender.partition.settings import AgentSettings, PartitionSettings
from tests.partition.conftest import make_settings

GIB = 2**30
PATHS = ("/COMPSs/addResources", "/COMPSs/removeResources", "/COMPSs/lostNode")


@dataclass
class Agent:
    """A COMPSs master agent's REST interface as far as membership goes: parses each body the way
    the agent's JAXB types read it and keeps the resulting pool."""

    pool: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Worker name -> (cpus, gpus, memory GB)."""
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    """Status codes to answer the next calls with (then 200 again)."""
    delay_s: float = 0.0


def description(element: ET.Element) -> tuple[int, int, float]:
    """cpus, gpus, memory of a MethodResourceDescription; asserts the fields the scripts send."""
    units = {"CPU": 0, "GPU": 0}
    for processor in element.findall("processors/processor"):
        assert processor.findtext("name") in ("MainProcessor", "gpu")
        assert processor.findtext("architecture") == "[unassigned]"
        units[processor.findtext("type", "")] += int(processor.findtext("computingUnits", ""))
    for tag in ("memoryType", "storageSize", "operatingSystemType", "wallClockLimit"):
        assert element.find(tag) is not None, tag
    return units["CPU"], units["GPU"], float(element.findtext("memorySize", ""))


def handler(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            assert self.headers["Content-Type"] == "application/xml"
            assert body.startswith('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>')
            time.sleep(agent.delay_s)
            if agent.fail_next:
                self.send_response(agent.fail_next.pop(0))
                self.end_headers()
                self.wfile.write(b"agent busy")
                return
            root = ET.fromstring(body)
            if self.path == "/COMPSs/addResources":
                assert root.tag == "newResource"
                resource = root.find("externalResource")
                assert resource is not None
                assert resource.findtext("adaptor") == "es.bsc.compss.agent.comm.CommAgentAdaptor"
                conf = resource.find("resourceConf")
                assert conf is not None and conf.get(f"{{{XSI}}}type") == "ResourcesExternalAdaptorProperties"
                assert (conf.findtext("Property/Name"), conf.findtext("Property/Value")) == ("Port", "46102")
                name = resource.findtext("name", "")
                cpus, gpus, memory = description(resource.find("description"))  # type: ignore[arg-type]
                old = agent.pool.get(name, (0, 0, 0.0))
                agent.pool[name] = (old[0] + cpus, old[1] + gpus, old[2] + memory)
            elif self.path == "/COMPSs/removeResources":
                assert root.tag == "reduceNode"
                name = root.findtext("workerName", "")
                cpus, gpus, memory = description(root.find("resources"))  # type: ignore[arg-type]
                old = agent.pool[name]
                left = (old[0] - cpus, old[1] - gpus, old[2] - memory)
                if left[0] <= 0:
                    del agent.pool[name]
                else:
                    agent.pool[name] = left
            elif self.path == "/COMPSs/lostNode":
                assert root.tag == "lostNode"
                name = root.findtext("workerName", "")
                del agent.pool[name]
            else:
                self.send_response(404)
                self.end_headers()
                return
            agent.calls.append((self.path.rsplit("/", 1)[1], name))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def agent() -> Iterator[tuple[Agent, str]]:
    state = Agent()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def settings_for(url: str, timeout_s: float = 2.0) -> PartitionSettings:
    return make_settings(compss={"membership": "agents", "agents": {"url": url, "timeout_s": timeout_s}})


def entry(node: str, cpu: int = 8000, gpus: int = 0, ready: bool = True) -> PartitionEntry:
    return PartitionEntry(node, f"partition-worker-{node}", "10.0.0.1", cpu, 16 * GIB, gpus, ready)


def pool_of(workers: tuple[CompssWorker, ...]) -> dict[str, tuple[int, int, float]]:
    return {w.name: (w.cpus, w.gpus, float(w.memory_gb)) for w in workers}


def test_joins_leaves_and_resizes_reach_the_agent_with_the_scripts_bodies(
        agent: tuple[Agent, str]) -> None:
    state, url = agent
    settings = settings_for(url)
    membership = membership_for(settings, None)  # type: ignore[arg-type]
    assert isinstance(membership, AgentMembership)
    first = compss_files([entry("a"), entry("b", gpus=2)], settings)
    membership.sync(first)
    assert state.pool == pool_of(first.workers)
    # b left, a was resized, c joined: the agent ends with exactly the new pool.
    second = compss_files([entry("a", cpu=4000), entry("c"), entry("b", ready=False)], settings)
    state.calls.clear()
    membership.sync(second)
    assert state.pool == pool_of(second.workers)
    a, b, c = (w.name for w in (*second.workers[:1], first.workers[1], second.workers[1]))
    assert state.calls == [("removeResources", a), ("addResources", a), ("lostNode", b),
                           ("addResources", c)]
    state.calls.clear()
    membership.sync(second)
    assert state.calls == [], "nothing is repeated once acknowledged"


def test_a_refused_call_is_retried_on_the_next_sync_and_never_doubles_a_share(
        agent: tuple[Agent, str]) -> None:
    state, url = agent
    settings = settings_for(url)
    membership = AgentMembership(settings.compss.agents, {})
    first = compss_files([entry("a"), entry("b")], settings)
    membership.sync(first)
    resized = compss_files([entry("a", cpu=4000), entry("b", cpu=2000)], settings)
    state.fail_next = [500]  # a's removeResources fails: its add must wait
    with pytest.raises(MembershipError, match="HTTP 500 agent busy"):
        membership.sync(resized)
    assert state.pool[resized.workers[0].name] == (8, 0, 16.0)
    assert state.pool[resized.workers[1].name] == (2, 0, 16.0)
    membership.sync(resized)
    assert state.pool == pool_of(resized.workers)


def test_a_dead_agent_raises_a_membership_error_quickly(agent: tuple[Agent, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = settings_for(f"http://127.0.0.1:{port}")
    membership = AgentMembership(settings.compss.agents, {})
    files = compss_files([entry("a"), entry("b")], settings)
    with pytest.raises(MembershipError, match="addResources"):
        membership.sync(files)
    assert membership.announced == {}


def test_a_hanging_agent_times_out_after_the_configured_timeout(agent: tuple[Agent, str]) -> None:
    state, url = agent
    state.delay_s = 2.0
    settings = settings_for(url, timeout_s=0.3)
    membership = AgentMembership(settings.compss.agents, {})
    with pytest.raises(MembershipError, match="timed out"):
        membership.sync(compss_files([entry("a")], settings))
    assert membership.announced == {}


def test_the_agent_settings_default_to_the_scripts_ports() -> None:
    agents = AgentSettings()
    assert agents.url.endswith(":46101") and agents.comm_port == 46102
    assert msgspec.structs.asdict(make_settings().compss)["membership"] == "none"
