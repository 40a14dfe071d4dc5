"""A COMPSs master agent's REST interface on loopback, as far as membership goes (for tests)."""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from extender.partition.compss import XSI


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


@contextmanager
def serving() -> Iterator[tuple[Agent, str]]:
    """A running agent and its base URL; stopped on exit."""
    state = Agent()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
