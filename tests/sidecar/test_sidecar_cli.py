"""`extender sidecar` as a process: events in by HTTP and file, SIGTERM deletes the group."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from extender import localserver
from extender.errors import ConfigError
from extender.localserver import wait_until
from extender.sidecar.cli import parse_listen
from tests.sidecar.support import gateway_values

pytestmark = pytest.mark.prometheus


# The real `extender` entry point, with only this subcommand registered: building the parser
# imports every registered module, and the other parts' modules may not exist yet.
MAIN = ("import sys; from extender import cli; "
        "cli.SUBCOMMANDS = {'sidecar': cli.SUBCOMMANDS['sidecar']}; sys.exit(cli.main())")


def sidecar_argv(gateway: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-c", MAIN, "sidecar", "--node", "node-cli",
            "--worker", "w-cli", "--pushgateway", gateway, "--listen", f"127.0.0.1:{port}",
            *extra]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text("push:\n  interval_s: 0.2\n  timeout_s: 2.0\n")
    return path


@pytest.fixture
def process(shared_gateway: localserver.LocalServer, config: Path,
            tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = localserver.free_port()
    events = tmp_path / "events.jsonl"
    profile = tmp_path / "profile.csv"
    profile.write_text("type,seconds\nfit,0.001\n")
    argv = sidecar_argv(shared_gateway.url, port, "--config", str(config), "--profile",
                        str(profile), "--events-file", str(events))
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(url + "/healthz", timeout=1).ok, timeout_s=30,
                   what="the sidecar's /healthz")
        yield child, url, events
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        assert child.stdout is not None
        child.stdout.close()


def test_sidecar_process_counts_http_and_file_events_and_deletes_its_group_on_sigterm(
        shared_gateway: localserver.LocalServer,
        process: tuple[subprocess.Popen[str], str, Path]) -> None:
    child, url, events = process
    requests.post(url + "/v1/tasks/start", json={"id": "h1", "type": "fit"}, timeout=5)
    events.write_text(json.dumps({"event": "start", "id": "f1", "type": "other"}) + "\n"
                      + json.dumps({"event": "end", "id": "f1"}) + "\n")
    wait_until(lambda: (v := gateway_values(shared_gateway.url, "node-cli", "w-cli"))
               and v["deadline_tasks_total"] == 2, timeout_s=20,
               what="the pushed totals of both event sources")
    values = gateway_values(shared_gateway.url, "node-cli", "w-cli")
    assert values is not None
    # h1 is still running but passed its profiled limit (0.001 * 1.5 + 1 s): a miss.
    assert values["deadline_tasks_missed_total"] == 1
    assert values["deadline_tasks_running"] == 1

    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=20) == 0
    assert gateway_values(shared_gateway.url, "node-cli", "w-cli") is None
    assert child.stdout is not None
    output = child.stdout.read()
    assert "deleting /metrics/job/extract-deadline/node/node-cli/worker/w-cli" in output


@pytest.mark.parametrize(("extra", "message"), [
    (["--listen", "localhost"], "--listen: expected HOST:PORT"),
    (["--profile", "/nonexistent/profile.yaml"], "/nonexistent/profile.yaml: cannot read"),
    (["--pushgateway", "pushgateway:9091"], "--pushgateway: expected http(s)://HOST:PORT"),
    (["--node", " "], "--node: must not be empty"),
])
def test_bad_flags_exit_2_with_a_clear_message(extra: list[str], message: str) -> None:
    argv = sidecar_argv("http://127.0.0.1:1", localserver.free_port(), *extra)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_config_value_names_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("jitter:\n  relative: lots\n")
    argv = sidecar_argv("http://127.0.0.1:1", localserver.free_port(), "--config", str(config))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{config}: jitter.relative: Expected `float`, got `str`" in result.stderr


def test_listen_is_parsed_as_host_and_port() -> None:
    assert parse_listen("127.0.0.1:9465") == ("127.0.0.1", 9465)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen(":99999")
