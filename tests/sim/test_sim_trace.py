from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extender.openb import TraceError, load_nodes, load_pods
from tests.support import OPENB


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "list.csv"
    path.write_text(text)
    return path


def test_pod_list_without_optional_columns_loads_with_defaults(tmp_path: Path) -> None:
    pods = load_pods(write(tmp_path, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
                                     "a,1000,512,1,500\nb,2000,1024,0,0\n"))
    assert pods.spec == ((), ())
    assert pods.qos == ("LS", "LS")
    assert not pods.has_times
    assert pods.total_gpu_milli.tolist() == [500, 0]


def test_gpu_spec_is_split_on_bars(tmp_path: Path) -> None:
    pods = load_pods(write(tmp_path, "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
                                     "a,1000,512,1,1000,V100M16|V100M32\n"))
    assert pods.spec == (("V100M16", "V100M32"),)


def test_spreadsheet_export_with_byte_order_mark_crlf_and_padded_header_loads(
        tmp_path: Path) -> None:
    path = tmp_path / "nodes.csv"
    path.write_bytes("\ufeffsn, cpu_milli ,memory_mib,gpu,model\r\nn1,64000,1024,2,V100M16\r\n"
                     .encode())
    nodes = load_nodes(path)
    assert nodes.names == ("n1",)
    assert nodes.cpu_milli.tolist() == [64000]
    assert nodes.gpus.tolist() == [2]


def test_gpu_tasks_without_a_share_use_whole_gpus(tmp_path: Path) -> None:
    pods = load_pods(write(tmp_path, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
                                     "a,1000,512,2,\nb,1000,512,1,0\nc,1000,512,0,0\n"))
    assert pods.gpu_milli.tolist() == [1000, 1000, 0]
    assert pods.total_gpu_milli.tolist() == [2000, 1000, 0]


def test_unknown_qos_class_is_modelled_as_the_default_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pods = load_pods(write(tmp_path, "name,cpu_milli,memory_mib,num_gpu,gpu_milli,qos\n"
                                     "a,1000,512,0,0,LSR\nb,1000,512,0,0,LSR\nc,1000,512,0,0,BE\n"))
    assert pods.qos == ("LS", "LS", "BE")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "LSR (2 tasks)" in warnings[0]


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "name,cpu_milli,num_gpu,gpu_milli\na,1,0,0\n")
    with pytest.raises(TraceError, match=r"list\.csv: missing column\(s\) memory_mib"):
        load_pods(path)


def test_bad_number_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "sn,cpu_milli,memory_mib,gpu,model\nn1,lots,1024,0,\n")
    with pytest.raises(TraceError, match=r"list\.csv:2: cpu_milli: expected a number, got 'lots'"):
        load_nodes(path)


def test_multi_gpu_task_with_partial_share_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\na,1,1,2,500\n")
    with pytest.raises(TraceError, match="whole GPUs"):
        load_pods(path)


def test_missing_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        load_nodes(tmp_path / "absent.csv")


def test_nodes_without_gpus_have_no_model(tmp_path: Path) -> None:
    nodes = load_nodes(write(tmp_path, "sn,cpu_milli,memory_mib,gpu,model\n"
                                       "a,32000,1024,0,\nb,64000,2048,8,G2\n"))
    assert nodes.model.tolist() == [-1, 0]
    assert nodes.models == ("G2",)
    assert nodes.max_gpus == 8


def test_openb_lists_load() -> None:
    base = OPENB
    assert len(load_nodes(base / "openb_node_list_gpu_node.csv")) == 1213
    pods = load_pods(base / "openb_pod_list_default.csv")
    assert len(pods) == 8152 and pods.has_times
    assert int(np.sum(load_nodes(base / "openb_node_list_gpu_node.csv").gpus)) == 6212
    assert not load_pods(base / "openb_pod_list_multigpu50.csv").has_times
