"""`ours-faults`: our swarm while parents fail, for `python -m bench swarm --systems ours,ours-faults`.

The same cluster and peers as `ours`, plus four hosts that turn on the swarm once it runs:

- ``victim``: an honest peer that downloads with the others and is killed (SIGKILL) once it has served pieces to
  them, i.e. while it is somebody's parent;
- ``h-trickle``, ``h-silent``, ``h-corrupt``: misbehaving peers (``tests/e2e/misbehaving_peer.py``, each a process
  in its own host's namespace, with a certificate of the cluster CA) that claim the whole file at the scheduler a
  moment after the start and then send bytes a kilobyte at a time, never report a piece, or flip a byte per piece.

The makespan is over the measured peers only (the victim's download dies with it); every one of them must end with
the origin's bytes. The table's "makespan ÷ ours" column is the cost of the faults against the clean run of the
same invocation (docs/robustness.md#fault-injection).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.swarm.ours import DFGET, OursCluster
from bench.swarm.report import SystemResult
from bench.swarm.services import PYTHON, REPO, Agent, Service, drive, python_env, wait_ready

if TYPE_CHECKING:
    from bench.swarm.runner import Swarm

VICTIM = "victim"
HOSTILE = {"h-trickle": "trickle", "h-silent": "silent", "h-corrupt": "corrupt"}
FAULT_HOSTS = (VICTIM, *HOSTILE)
MISBEHAVING_PEER = REPO / "tests" / "e2e" / "misbehaving_peer.py"
# After the start: when the misbehaving peers claim the file (the peers are registering then).
CLAIM_DELAY = 0.3
_POLL = 0.25


class FaultInjector:
    """Turns the faults on during one run, in a thread, and records when and what happened."""

    def __init__(self, swarm: Swarm, cluster: OursCluster, sysdir: Path, agents: dict[str, Agent]) -> None:
        self.swarm = swarm
        self.cluster = cluster
        self.sysdir = sysdir
        self.agents = agents
        self.hostile: dict[str, Service] = {}
        self.events: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)

    def prepare(self) -> None:
        """Start the misbehaving peers (serving, claiming nothing yet): a process start takes seconds here."""
        for name, mode in HOSTILE.items():
            self.hostile[name] = self._start_hostile(name, mode)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """End the faults; return what the misbehaving peers were asked."""
        self._done.set()
        self._thread.join(30)
        asked: dict[str, Any] = {}
        for name, service in self.hostile.items():
            if service.proc.poll() is None:
                os.kill(service.proc.pid, signal.SIGTERM)
                try:
                    service.proc.wait(15)
                except subprocess.TimeoutExpired:
                    service.proc.kill()
            time.sleep(0.1)  # the pump thread copies the last line
            for line in reversed(service.lines):
                if line.startswith("{"):
                    asked[name] = json.loads(line)
                    break
        return asked

    def _since_start(self, t0: float) -> str:
        return f"{time.time() - t0:.2f}s"

    def _run(self) -> None:
        try:
            self._inject()
        except Exception as exc:  # reported in the result's note, never a silent no-fault run
            self.events.append(f"fault injection failed: {exc!r}")

    def _inject(self) -> None:
        # Wait for the start signal (an agent's "start" event), bounded by the run's own timeout.
        deadline = time.monotonic() + self.swarm.cfg.system_timeout()
        while not any(agent.has("start") for agent in self.agents.values()):
            if self._done.wait(0.01) or time.monotonic() > deadline:
                return
        t0 = min(e["t"] for agent in self.agents.values() for e in agent.events if e["event"] == "start")
        if self._done.wait(CLAIM_DELAY):
            return
        for service in self.hostile.values():
            os.kill(service.proc.pid, signal.SIGUSR1)
        for service in self.hostile.values():
            service.wait_for("misbehaving peer ready", 30)
        self.events.append(f"trickling, silent and corrupting peers claimed the file at {self._since_start(t0)}")
        while not self._done.is_set() and time.monotonic() < deadline:
            served = self._uploaded(VICTIM)
            if served > 0:
                os.kill(self.cluster.pid(VICTIM), signal.SIGKILL)
                self.events.append(f"{VICTIM} killed at {self._since_start(t0)}, having served {served:.0f} bytes")
                return
            self._done.wait(_POLL)

    def _start_hostile(self, name: str, mode: str) -> Service:
        from dragonfly.common import pki

        host = self.swarm.h[name]
        pki_dir = self.sysdir / "pki"
        ca = pki.CertificateAuthority.load(pki_dir / "ca.crt", pki_dir / "ca.key")
        cert, key = pki.issue(ca, name, ips=[host.ip], roles=("peer",)).write(pki_dir, name)
        argv = [
            PYTHON, str(MISBEHAVING_PEER), "--mode", mode, "--scheduler", self.cluster.scheduler_address,
            "--url", self.swarm.origin_url, "--content", str(self.swarm.data_dir / "blob"), "--ip", host.ip,
            "--hostname", name, "--ca-cert", str(pki_dir / "ca.crt"), "--cert", str(cert), "--key", str(key),
            "--claim-on-signal",
        ]  # fmt: skip
        service = Service(self.swarm.topo, host, argv, self.sysdir / f"{name}.log", env=python_env())
        service.wait_for("misbehaving peer serving", 60)
        return service

    def _uploaded(self, name: str) -> float:
        """Return the bytes the daemon on ``name`` has served, from its metrics (0 if unknown)."""
        addr = self.cluster.daemons[name].listening("metrics")
        if addr is None:
            return 0.0
        code = (
            "import re,sys,urllib.request\n"
            f"t=urllib.request.urlopen('http://{addr}/metrics',timeout=2).read().decode()\n"
            "m=re.search(r'^dragonfly_client_upload_traffic (\\S+)$',t,re.M)\n"
            "print(m.group(1) if m else 0)\n"
        )
        host = self.cluster.daemons[name].host
        try:
            out = subprocess.run(host.command([PYTHON, "-c", code]), capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip() or 0)
        except (subprocess.SubprocessError, ValueError):
            return 0.0


def run_ours_faults(swarm: Swarm, sysdir: Path) -> SystemResult:
    """Run our swarm with the faults above; the result covers the measured peers only."""
    loopback = swarm.topo.mode == "loopback"
    names = ["seed", *swarm.peers, VICTIM]
    rates = dict.fromkeys(names, swarm.cfg.peer_rate) if loopback else {}
    b2s = swarm.cfg.origin_rate if loopback else 0.0
    cluster = OursCluster(
        swarm.topo, sysdir, swarm.h["ctl"], [swarm.h[n] for n in names], rates=rates, back_to_source_rate=b2s
    )
    downloaders = [*swarm.peers, VICTIM]
    outputs = {p: sysdir / p / "out" / "blob" for p in downloaders}
    specs = {}
    for p in downloaders:
        outputs[p].parent.mkdir(parents=True)
        specs[p] = {"kind": "dfget", "dfget": list(DFGET), "url": swarm.origin_url, "output": str(outputs[p]),
                    "endpoint": str(cluster.sockets[p]), "timeout": swarm.cfg.system_timeout()}  # fmt: skip
    agents = swarm._agents(sysdir, specs)
    wait_ready(agents)
    with swarm.measured("ours-faults") as box:
        injector = FaultInjector(swarm, cluster, sysdir, agents)
        injector.prepare()
        injector.start()
        try:
            t0 = drive(agents, swarm.cfg.system_timeout())
        finally:
            asked = injector.stop()
            for agent in agents.values():
                agent.close()
    cluster.close()
    measured = {p: agents[p] for p in swarm.peers}
    result = swarm.results("ours-faults", measured, t0, box)
    swarm.verify(result, {p: outputs[p] for p in swarm.peers})
    victim = next((e for e in agents[VICTIM].events if e["event"] == "finish"), None)
    fate = "finished before the kill" if victim and victim.get("ok") else "died with its daemon"
    requests = ", ".join(f"{name} asked {counts}" for name, counts in asked.items())
    result.note = "; ".join([*injector.events, f"{VICTIM}'s own download {fate}", requests])
    if not any(event.startswith(f"{VICTIM} killed") for event in injector.events) and not result.error:
        result.error = "the victim was never killed (it served nothing): the run had no parent failure"
    return result
