"""Loading the OpenB node list into emulated nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from extender.demo.emulator import load_fleet, node_ip
from extender.errors import ConfigError
from tests.support import OPENB

OPENB_NODES = OPENB / "openb_node_list_all_node.csv"


def test_every_row_becomes_a_node_with_a_distinct_fake_ip() -> None:
    nodes = load_fleet(OPENB_NODES)
    assert len(nodes) == 1523
    assert nodes[0].name == "openb-node-0000" and nodes[0].ip == "10.20.0.1"
    assert len({node.ip for node in nodes}) == len(nodes)
    assert all(node.ip.startswith("10.") for node in nodes)


def test_gpu_columns_are_kept_and_cpu_only_nodes_have_no_model() -> None:
    nodes = load_fleet(OPENB_NODES)
    assert all(node.gpu_model == "" for node in nodes if node.gpus == 0)
    assert {node.gpu_model for node in nodes if node.gpus} >= {"T4", "V100M32", "G2", "A10"}


def test_limit_keeps_cpu_only_nodes_and_every_gpu_model() -> None:
    nodes = load_fleet(OPENB_NODES, limit=12, seed=3)
    assert len(nodes) == 12
    assert any(node.gpus == 0 for node in nodes)
    all_models = {node.gpu_model for node in load_fleet(OPENB_NODES) if node.gpus}
    assert {node.gpu_model for node in nodes if node.gpus} == all_models


def test_a_sample_keeps_csv_order_and_the_rows_ips() -> None:
    everything = {node.name: node for node in load_fleet(OPENB_NODES)}
    sample = load_fleet(OPENB_NODES, limit=20, seed=5)
    assert [node.name for node in sample] == sorted(node.name for node in sample)
    assert all(everything[node.name] == node for node in sample)


def test_sampling_is_deterministic_per_seed() -> None:
    first = load_fleet(OPENB_NODES, limit=30, seed=7)
    assert load_fleet(OPENB_NODES, limit=30, seed=7) == first
    assert load_fleet(OPENB_NODES, limit=30, seed=8) != first


def test_ips_follow_the_row_number() -> None:
    assert node_ip(0) == "10.20.0.1"
    assert node_ip(249) == "10.20.0.250"
    assert node_ip(250) == "10.20.1.1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sn,cpu_milli,memory_mib\nn1,1000,1024\n",
         ": missing column(s) gpu (has: sn, cpu_milli, memory_mib)"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn1,lots,1024,0,\n",
         ":2: cpu_milli: expected a number, got 'lots'"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn1,1000,1024,0,\nn2,1000,0,0,\n",
         ":3: memory_mib: an emulated node needs >= 1, got 0"),
        ("sn,cpu_milli,memory_mib,gpu,model\n,1000,1024,0,\n", ":2: sn: empty node name"),
        ("sn,cpu_milli,memory_mib,gpu,model\nn1,1000,1024,0,\nn1,1000,1024,0,\n",
         ": duplicate node names n1"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_fleet(path)
    assert str(info.value) == f"{path}{message}"


def test_missing_file_and_bad_limit_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_fleet(tmp_path / "absent.csv")
    with pytest.raises(ConfigError, match="limit: expected >= 1, got 0"):
        load_fleet(OPENB_NODES, limit=0)
