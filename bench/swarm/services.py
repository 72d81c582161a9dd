"""Start long-running processes on test hosts and wait, with a bound, for the line that says they are up."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.swarm.hosts import Host, Topology

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def python_env() -> dict[str, str]:
    """Return the environment that makes this checkout importable in child processes."""
    return {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


class Service:
    """A process whose stdout lines are copied to a log while we watch for its "ready" line."""

    def __init__(
        self,
        topology: Topology,
        host: Host,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.log = log
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._ready_marker: str | None = None
        self.proc = topology.popen(host, argv, log=log.with_suffix(".err"), env=env, stdout=subprocess.PIPE)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a") as sink:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                sink.write(line + "\n")
                sink.flush()
                if self._ready_marker and self._ready_marker in line:
                    self._ready.set()
        self._ready.set()

    def wait_for(self, marker: str, timeout: float) -> None:
        """Wait until a stdout line contains `marker`; raise RuntimeError (with the log's tail) if it never does."""
        self._ready_marker = marker
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(marker in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            self._ready.wait(0.1)
        tail = self.log.with_suffix(".err").read_text(errors="replace")[-1500:] if self.log.exists() else ""
        exited = self.proc.poll() is not None
        state = f"exited with {self.proc.returncode}" if exited else f"no {marker!r} in {timeout} s"
        raise RuntimeError(f"{self.host.name}: {' '.join(map(str, self.proc.args))[:200]}: {state}\n{tail}")

    def listening(self, service: str) -> str | None:
        """Return the address from this process's "dragonfly: <service> listening on <addr>" line."""
        prefix = f"dragonfly: {service} listening on "
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None


class Agent:
    """One bench.swarm.agent process: its events arrive on a queue as they are printed."""

    def __init__(self, topology: Topology, host: Host, spec: dict[str, Any], log: Path) -> None:
        self.host = host
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        argv = [PYTHON, "-m", "bench.swarm.agent", json.dumps(spec)]
        # The child keeps its own copy of the log's descriptor.
        with log.open("ab") as stderr:
            self.proc = subprocess.Popen(
                host.command(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **python_env()},
                start_new_session=True,
            )
        topology.track(self.proc)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for raw in self.proc.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                self.events.append(event)
                self._queue.put(event)
        self._queue.put(None)

    def has(self, kind: str) -> bool:
        return any(e["event"] == kind for e in self.events)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def wait_event(self, kinds: set[str], deadline: float) -> bool:
        """Wait until one event of `kinds` has arrived (or the agent ended); return whether it did."""
        while not any(e["event"] in kinds for e in self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if self._queue.get(timeout=min(remaining, 0.5)) is None:
                    return any(e["event"] in kinds for e in self.events)
            except queue.Empty:
                continue
        return True

    def close(self, timeout: float = 10) -> None:
        """Tell the agent to stop and wait for it to exit (it stops its client); kill it after `timeout`."""
        self.send("stop")
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_ready(agents: Mapping[str, Agent], ready_timeout: float = 180) -> None:
    """Wait until every agent is ready (started and waiting for "go").

    The benchmarks call it before their CPU meter starts: an agent's interpreter start and imports (~60 ms of CPU
    each) are the harness's, not the system's, and were counted with the system's CPU ("reaped") before.
    """
    deadline = time.monotonic() + ready_timeout
    for name, agent in agents.items():
        if not agent.wait_event({"ready", "finish"}, deadline) or agent.has("finish"):
            raise RuntimeError(f"{name}: agent not ready: {agent.events[-1:] or 'no events'}")


def drive(agents: Mapping[str, Agent], timeout: float, ready_timeout: float = 180) -> float:
    """Wait until every agent is ready, start them all at once, wait until all finished; return the start time."""
    wait_ready(agents, ready_timeout)
    t0 = time.time()
    for agent in agents.values():
        agent.send("go")
    deadline = time.monotonic() + timeout
    for agent in agents.values():
        agent.wait_event({"finish"}, deadline)
    return t0
