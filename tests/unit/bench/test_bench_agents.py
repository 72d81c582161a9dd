"""Agents of the swarm benchmarks: ready before the measured window, started together by drive()."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.swarm.hosts import Host, Topology
from bench.swarm.services import Agent, drive, wait_ready


def test_agents_are_ready_and_idle_before_the_go(tmp_path: Path) -> None:
    """wait_ready returns once every agent has started its interpreter and imports (the harness's CPU, which the
    benchmarks keep out of the system's) and none has started its client; drive then runs them."""
    topology = Topology([], tmp_path)
    try:
        host = Host("p1", "127.0.0.1")
        specs = {
            name: {
                "kind": "dfget",
                "dfget": [sys.executable, "-c", "import sys; print('dfget: saved x; from origin=0 seed=0 peers=5')"],
                "url": "http://origin/blob",
                "output": str(tmp_path / f"{name}.out"),
                "endpoint": "unused",
                "timeout": 60,
            }
            for name in ("a", "b")
        }
        agents = {name: Agent(topology, host, spec, tmp_path / f"{name}.log") for name, spec in specs.items()}
        wait_ready(agents)
        assert all(agent.has("ready") and not agent.has("start") for agent in agents.values())
        drive(agents, 60)
        for agent in agents.values():
            agent.close()
        finishes = [next(e for e in agent.events if e["event"] == "finish") for agent in agents.values()]
        assert [(f["ok"], f["by_source"]) for f in finishes] == [(True, {"origin": 0, "seed": 0, "peers": 5})] * 2
    finally:
        topology.close()


def test_an_agent_that_ends_before_it_is_ready_is_named(tmp_path: Path) -> None:
    topology = Topology([], tmp_path)
    try:
        agents = {"broken": Agent(topology, Host("p1", "127.0.0.1"), {"kind": "nope"}, tmp_path / "broken.log")}
        with pytest.raises(RuntimeError, match="broken: agent not ready"):
            wait_ready(agents, ready_timeout=60)
        agents["broken"].close()
    finally:
        topology.close()
