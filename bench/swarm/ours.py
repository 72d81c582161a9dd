"""Our system on test hosts: a scheduler, an optional seed peer and one dfdaemon per peer, plus dfget runs.

Mutual TLS is on, as in a real deployment: a throwaway CA in the work directory and one certificate per host
(its name and IP); ``tls=False`` runs the same cluster in plaintext, to measure what TLS costs in one run.
"""

from __future__ import annotations

import importlib.util
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.swarm.agent import parse_dfget_output
from bench.swarm.hosts import Host, Topology
from bench.swarm.services import PYTHON, Service, python_env

OURS_MODULES = ("dragonfly.cli.scheduler", "dragonfly.cli.dfdaemon", "dragonfly.cli.dfget")
SCHEDULER_PORT = 8002
DFGET = (PYTHON, "-m", "dragonfly.cli.dfget")


def ours_missing() -> list[str]:
    """Return the CLI modules of our system that do not exist yet."""
    return [m for m in OURS_MODULES if importlib.util.find_spec(m) is None]


def security_config(pki_dir: Path | None, host: Host, roles: tuple[str, ...]) -> dict[str, Any]:
    """Return the ``security`` section: a certificate for ``host`` from the CA in ``pki_dir``; None = plaintext."""
    if pki_dir is None:
        return {"enable": False}
    from dragonfly.common import pki

    ca = pki.CertificateAuthority.load(pki_dir / "ca.crt", pki_dir / "ca.key")
    cert, key = pki.issue(ca, host.name, ips=[host.ip], roles=roles).write(pki_dir, host.name)
    return {"enable": True, "caCert": str(pki_dir / "ca.crt"), "cert": str(cert), "key": str(key)}


def daemon_config(
    host: Host,
    hostdir: Path,
    scheduler: str,
    *,
    seed: bool,
    rate: float = 0.0,
    back_to_source_rate: float = 0.0,
    pki_dir: Path | None = None,
) -> dict[str, Any]:
    """Return one dfdaemon.yaml (keys from common_api.md); on loopback every port is 0 (the daemon picks)."""
    loopback = host.netns is None

    def port(usual: int) -> int:
        return 0 if loopback else usual

    config: dict[str, Any] = {
        "host": {"hostname": host.name, "ip": host.ip},
        "seedPeer": {"enable": seed},
        "scheduler": {"addrs": [scheduler]},
        "download": {"server": {"socketPath": str(hostdir / "dfdaemon.sock")}},
        "upload": {"server": {"ip": host.ip, "port": port(4000)}},
        "storage": {"dir": str(hostdir / "storage"), "server": {"ip": host.ip, "tcpPort": port(4005)}},
        "metrics": {"server": {"port": port(4002)}},
        "health": {"server": {"port": port(4003)}},
        "security": security_config(pki_dir, host, ("seed-peer",) if seed else ("peer",)),
        "proxy": {"server": {"port": port(4001)}},
    }
    if loopback:
        # The origin is on loopback too, and the seed peer fetches it on the scheduler's order (the SSRF guard).
        config["security"]["allowedOriginNetworks"] = ["127.0.0.0/8", "::1"]
    if rate:
        config["download"]["bandwidthLimit"] = rate
        config["upload"]["bandwidthLimit"] = rate
    if back_to_source_rate:
        config["download"]["backToSourceBandwidthLimit"] = back_to_source_rate
    return config


class OursCluster:
    """Start a scheduler on `scheduler_host` and a dfdaemon on each of `daemon_hosts` (a host named "seed" is
    started as the seed peer); `rates` are per-host daemon limits (loopback's stand-in for shaped links)."""

    def __init__(
        self,
        topology: Topology,
        workdir: Path,
        scheduler_host: Host,
        daemon_hosts: Sequence[Host],
        *,
        rates: dict[str, float] | None = None,
        back_to_source_rate: float = 0.0,
        ready_timeout: float = 90,
        tls: bool = True,
        daemon_overrides: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        missing = ours_missing()
        if missing:
            raise RuntimeError(f"our system is not runnable yet: missing {', '.join(missing)}")
        self.topology = topology
        self.workdir = workdir
        self.daemons: dict[str, Service] = {}
        self.sockets: dict[str, Path] = {}
        workdir.mkdir(parents=True, exist_ok=True)
        pki_dir: Path | None = None
        if tls:
            from dragonfly.common import pki

            pki_dir = workdir / "pki"
            pki.create_ca("bench CA", days=2).write(pki_dir)
        conf = workdir / "scheduler.yaml"
        port = 0 if scheduler_host.netns is None else SCHEDULER_PORT
        host_ip = scheduler_host.ip
        scheduler_yaml = {
            "server": {"host": host_ip, "port": port, "advertiseIP": host_ip},
            # A free port on loopback: another cluster on this machine (a concurrent benchmark) may hold 8000.
            "metrics": {"port": 0 if scheduler_host.netns is None else 8000},
            "security": security_config(pki_dir, scheduler_host, ("scheduler",)),
        }
        conf.write_text(yaml.safe_dump(scheduler_yaml))
        self.scheduler = Service(
            topology, scheduler_host, [PYTHON, "-m", "dragonfly.cli.scheduler", "--config", str(conf)],
            workdir / "scheduler.log", env=python_env(),
        )  # fmt: skip
        self.scheduler.wait_for("dragonfly: scheduler ready", ready_timeout)
        address = f"{host_ip}:{port}"
        if port == 0:
            line = next((ln for ln in self.scheduler.lines if " listening on " in ln), "")
            address = line.rsplit(" ", 1)[-1] or address
        self.scheduler_address = address
        for host in daemon_hosts:
            hostdir = workdir / host.name
            hostdir.mkdir(parents=True, exist_ok=True)
            self.sockets[host.name] = hostdir / "dfdaemon.sock"
            config = daemon_config(
                host, hostdir, address, seed=host.name == "seed", rate=(rates or {}).get(host.name, 0.0),
                back_to_source_rate=back_to_source_rate if host.name == "seed" else 0.0, pki_dir=pki_dir,
            )  # fmt: skip
            if daemon_overrides and host.name in daemon_overrides:
                from dragonfly.cli.cluster import deep_merge

                config = deep_merge(config, daemon_overrides[host.name])
            (hostdir / "dfdaemon.yaml").write_text(yaml.safe_dump(config))
            self.daemons[host.name] = Service(
                topology, host, [PYTHON, "-m", "dragonfly.cli.dfdaemon", "--config", str(hostdir / "dfdaemon.yaml")],
                hostdir / "dfdaemon.log", env=python_env(),
            )  # fmt: skip
        for daemon in self.daemons.values():
            daemon.wait_for("ready", ready_timeout)

    def pid(self, name: str) -> int:
        """Return the pid of the dfdaemon on host `name`."""
        return self.daemons[name].proc.pid

    def dfget(self, name: str, url: str, output: Path, timeout: float = 600) -> tuple[float, dict[str, int]]:
        """Run dfget on host `name` (process start included); return (wall seconds, bytes by source)."""
        host = self.daemons[name].host
        argv = host.command([*DFGET, url, "-O", str(output), "-e", str(self.sockets[name]), "--no-progress"])
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env())
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"dfget on {name} exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return elapsed, parse_dfget_output(proc.stderr + proc.stdout)

    def close(self) -> None:
        self.topology.stop([self.scheduler.proc, *(d.proc for d in self.daemons.values())])

    def __enter__(self) -> OursCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _env() -> dict[str, str]:
    import os

    return {**os.environ, **python_env()}
