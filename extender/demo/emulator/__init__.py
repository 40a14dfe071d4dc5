"""An emulated metrics estate: exporter-shaped series for emulated nodes, served on loopback.

Used by the demo and by integration tests that need a real Prometheus with realistic data and no
cluster. One HTTP server plays every exporter a metrics-aware scheduler reads:

    /node-exporter/metrics        node-exporter, all nodes, each series with instance="<ip>:9100"
    /kube-state-metrics/metrics   kube-state-metrics (nodes, pods, containers)
    /cadvisor/metrics             kubelet cAdvisor (containers, and pod cgroups as container="")
    /dcgm/metrics                 dcgm-exporter, GPU nodes only
    /scaphandre/<node>/metrics    Scaphandre, one endpoint per node, no host label at all
    /kepler/metrics               Kepler >= 0.10, every node (node_name label, nested RAPL zones);
                                  /kepler/<node>/metrics one node's page

    fleet.py      nodes of an OpenB node list (`load_fleet`), GPU models
    workload.py   pods, background load, the power model
    model.py      the load model (`Emulator`) and its ground truth (`NodeReading`)
    exporters.py  each exporter's page, rendered from the model
    server.py     the HTTP server (`EmulatorServer`)
"""

from extender.demo.emulator.exporters import CONTENT_TYPE
from extender.demo.emulator.fleet import GIB, GPU_MODELS, MIB, EmulatedNode, GpuModel, load_fleet, node_ip
from extender.demo.emulator.model import Emulator, GpuReading, NodeReading
from extender.demo.emulator.server import EmulatorServer
from extender.demo.emulator.workload import Background, EmulatedContainer, EmulatedPod, PowerModel

__all__ = [
    "CONTENT_TYPE", "GIB", "GPU_MODELS", "MIB", "Background", "EmulatedContainer", "EmulatedNode",
    "EmulatedPod", "Emulator", "EmulatorServer", "GpuModel", "GpuReading", "NodeReading",
    "PowerModel", "load_fleet", "node_ip",
]
