"""`membership: agents`: the COMPSs agents' REST calls, against a local HTTP server checking them."""

from __future__ import annotations

import socket

import msgspec
import pytest

from extender.partition.compss import CompssWorker, compss_files
from extender.partition.membership import AgentMembership, MembershipError, membership_for
from extender.partition.plan import PartitionEntry
from extender.partition.settings import AgentSettings, PartitionSettings
from tests.partition.agentserver import Agent
from tests.partition.conftest import make_settings

GIB = 2**30
PATHS = ("/COMPSs/addResources", "/COMPSs/removeResources", "/COMPSs/lostNode")


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
