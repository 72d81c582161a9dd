"""`python -m bench swarm`: ours, direct download and BitTorrent on one shaped network, against the bound."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import release_builds_missing
from bench.swarm import bencode
from bench.swarm.bound import kumar_ross_bound
from bench.swarm.cpu import CpuHogs, CpuMeter
from bench.swarm.cpu_samples import CpuSampler
from bench.swarm.faults import FAULT_HOSTS, run_ours_faults
from bench.swarm.hosts import (
    Host,
    NamespacesUnavailable,
    NetnsTopology,
    Shaping,
    Topology,
    cleanup_leftovers,
    probe_namespaces,
)
from bench.swarm.origin import nginx_config
from bench.swarm.ours import DFGET, OursCluster
from bench.swarm.report import (
    SwarmRun,
    SystemResult,
    counter_delta,
    host_result_from_events,
    target_misses,
    wire_first_bytes,
    write_plot,
)
from bench.swarm.services import PYTHON, REPO, Agent, Service, drive, python_env, wait_ready
from bench.swarm.timeline import analyse, read_pieces
from bench.swarm.units import format_size, parse_rate, parse_size

# "ours" runs with mutual TLS (the default); "ours-plaintext" is the same cluster without TLS, to price it in one run;
# "ours-faults" is ours while a parent is killed and three misbehaving peers claim the file (bench/swarm/faults.py);
# "-hardlink" runs the peers with download.hardLinkOutput: true (output linked to the cache, not copied);
# "ours-python-tls" runs them with download.nativeTls: false (Vortex downloads over Python's ssl, not rustls);
# "ours-python-tls-server" runs the seed and peers with storage.server.nativeTls: false (serving over Python's ssl).
SYSTEMS = (
    "ours", "direct", "bittorrent", "ours-plaintext", "ours-faults", "ours-hardlink", "ours-plaintext-hardlink",
    "ours-python-tls", "ours-python-tls-server",
)  # fmt: skip
DEFAULT_SYSTEMS = ("ours", "direct", "bittorrent")
BLOB = "blob"
TRACKER_PORT = 6969


@dataclass
class SwarmConfig:
    peers: int
    size: int
    origin_rate: float
    peer_rate: float
    delay_ms: float
    systems: tuple[str, ...]
    loopback: bool
    disk: bool
    origin: str
    out: Path
    timeout: float | None
    torrent_piece_length: int
    #: Busy processes competing for the CPU during each system's run.
    cpu_hogs: int = 0

    def system_timeout(self) -> float:
        """Return the per-system time limit: the caller's, or 3× the client-server time plus a minute."""
        if self.timeout:
            return self.timeout
        client_server = self.peers * self.size / self.origin_rate if self.origin_rate else self.size / 50e6
        return max(300.0, 3 * client_server + 60)


class Monitor:
    """Wire counters of every host, sampled in the router namespace while one system runs."""

    def __init__(self, topology: Topology) -> None:
        self.samples: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        if isinstance(topology, NetnsTopology):
            argv = ["ip", "netns", "exec", topology.router, PYTHON, "-m", "bench.swarm.monitor", "--interval", "0.05"]
            self._proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env={**os.environ, **python_env()}
            )
            self._thread = threading.Thread(target=self._pump, daemon=True)
            self._thread.start()
            deadline = time.monotonic() + 10
            while not self.samples and time.monotonic() < deadline and self._proc.poll() is None:
                time.sleep(0.02)

    def _pump(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append(json.loads(line))

    def stop(self) -> list[dict[str, Any]]:
        if self._proc:
            time.sleep(0.1)  # one more sample after the last finish
            self._proc.terminate()
            self._proc.wait(timeout=5)
            self._thread.join(timeout=5)
        return self.samples


class Swarm:
    """The network, the origin and the three systems of one invocation."""

    def __init__(self, cfg: SwarmConfig, topology: Topology) -> None:
        self.cfg = cfg
        self.topo = topology
        self.h = topology.hosts
        self.peers = [f"p{i + 1}" for i in range(cfg.peers)]
        self.dir = topology.workdir
        self.origin_dir = self.dir / "origin"
        self.data_dir = self.origin_dir / "data"
        self.sha256 = ""
        self.origin_url = ""
        self._origin_stats_url: str | None = None

    # -- setup -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Write F random bytes as the origin's file and start the origin's HTTP server."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with (self.data_dir / BLOB).open("wb") as f:
            remaining = self.cfg.size
            while remaining:
                chunk = os.urandom(min(remaining, 16 << 20))
                digest.update(chunk)
                f.write(chunk)
                remaining -= len(chunk)
        self.sha256 = digest.hexdigest()
        self.origin_url = self.start_origin() + BLOB

    def start_origin(self) -> str:
        """Start the origin's HTTP server on the files in `data_dir`; return its base URL ("http://ip:port/")."""
        origin = self.h["origin"]
        if self.cfg.origin == "nginx":
            port = origin.port(80)
            conf = self.origin_dir / "nginx.conf"
            (self.origin_dir / "tmp").mkdir(exist_ok=True)
            conf.write_text(nginx_config(self.data_dir, f"{origin.ip}:{port}", self.origin_dir))
            argv = ["nginx", "-c", str(conf), "-p", str(self.origin_dir), "-e", str(self.origin_dir / "error.log")]
            self.topo.popen(origin, argv, log=self.origin_dir / "nginx.out")
        else:
            port = origin.port(8080)
            # In namespaces tc caps the origin; on loopback the server caps itself.
            rate = 0 if self.topo.mode == "netns" else self.cfg.origin_rate
            argv = [PYTHON, "-m", "bench.swarm.origin", "--dir", str(self.data_dir), "--host", origin.ip,
                    "--port", str(port), "--rate", str(rate)]  # fmt: skip
            service = Service(self.topo, origin, argv, self.origin_dir / "origin.out", env=python_env())
            service.wait_for("origin listening on", 30)
            if self.topo.mode == "loopback":
                self._origin_stats_url = f"http://{origin.ip}:{port}/_stats"
        self.wait_tcp(self.h["ctl"], origin.ip, port, 30)
        return f"http://{origin.ip}:{port}/"

    def wait_tcp(self, client: Host, ip: str, port: int, timeout: float) -> None:
        """Wait until `ip:port` accepts connections as seen from `client` (across the bridge in namespaces)."""
        code = (
            "import socket,sys,time\n"
            f"end=time.monotonic()+{timeout}\n"
            "while time.monotonic()<end:\n"
            f"    try: socket.create_connection(({ip!r},{port}),timeout=1).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.05)\n"
            "sys.exit(1)\n"
        )
        if subprocess.run(client.command([PYTHON, "-c", code]), timeout=timeout + 10).returncode != 0:
            raise RuntimeError(f"{ip}:{port} did not accept connections within {timeout} s")

    def _origin_app_bytes(self) -> int | None:
        if not self._origin_stats_url:
            return None
        with urllib.request.urlopen(self._origin_stats_url, timeout=5) as response:
            return int(json.loads(response.read())["bytes_sent"])

    # -- one system ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def measured(self, system: str) -> Iterator[dict[str, Any]]:
        """Run one system's body with the wire monitor on; fill `box` with samples and origin counters."""
        box: dict[str, Any] = {"app_before": self._origin_app_bytes()}
        monitor = Monitor(self.topo)
        hogs = CpuHogs(self.cfg.cpu_hogs)
        cpu = CpuMeter(exclude=hogs.pids)
        cpu.start()
        sampler = CpuSampler(exclude=hogs.pids)
        sampler.start()
        try:
            yield box
        finally:
            box["cpu_seconds"] = cpu.stop()
            box["cpu_by_process"] = cpu.by_process
            box["cpu_samples"] = sampler.stop()
            hogs.stop()
            box["samples"] = monitor.stop()
            box["app_after"] = self._origin_app_bytes()

    def results(self, system: str, agents: dict[str, Agent], t0: float, box: dict[str, Any]) -> SystemResult:
        """Turn agent events and counters into a SystemResult; origin egress from the wire when there is one."""
        result = self._results(system, agents, t0, box)
        result.cpu_seconds = box.get("cpu_seconds")
        result.cpu_by_process = box.get("cpu_by_process") or {}
        result.cpu_timeline = {
            label: [[round(t - t0, 2), share] for t, share in samples if t >= t0]
            for label, samples in (box.get("cpu_samples") or {}).items()
        }
        return result

    def _results(self, system: str, agents: dict[str, Agent], t0: float, box: dict[str, Any]) -> SystemResult:
        samples = box.get("samples") or []
        veths = self.topo.veth_names() if isinstance(self.topo, NetnsTopology) else {}
        wire_first = wire_first_bytes(samples, {p: veths[p] for p in self.peers}) if veths else {}
        hosts = []
        for peer, agent in agents.items():
            result = host_result_from_events(peer, t0, agent.events, wire_first.get(peer))
            if veths and (delta := counter_delta(samples, veths[peer])):
                result.wire_bytes_in = delta[1]
            hosts.append(result)
        return SystemResult(system, hosts, *self.origin_egress(box))

    def origin_egress(self, box: dict[str, Any]) -> tuple[int | None, str]:
        """Return the bytes the origin sent during a `measured` run, and how they were measured."""
        if isinstance(self.topo, NetnsTopology):
            veth = self.topo.veth_names()["origin"]
            if delta := counter_delta(box.get("samples") or [], veth):
                return delta[0], "the origin host's veth counter (bytes on the wire)"
        if box.get("app_before") is not None and box.get("app_after") is not None:
            return box["app_after"] - box["app_before"], "the origin server's own counter"
        return None, "not measured"

    def verify(self, result: SystemResult, outputs: dict[str, Path]) -> None:
        """Mark every host whose output is missing or differs from the origin's file as failed."""
        for host in result.hosts:
            path = outputs[host.host]
            if not host.ok:
                continue
            if not path.is_file():
                host.ok, host.error = False, f"no output at {path}"
                continue
            with path.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != self.sha256:
                host.ok, host.error = False, f"sha256 mismatch at {path}"

    def run_system(self, system: str) -> SystemResult:
        sysdir = self.dir / system
        sysdir.mkdir(parents=True, exist_ok=True)
        mark = self.topo.mark()
        try:
            runs = {
                "direct": self.run_direct,
                "bittorrent": self.run_bittorrent,
                "ours": self.run_ours,
                "ours-plaintext": lambda d: self.run_ours(d, tls=False, system="ours-plaintext"),
                "ours-faults": lambda d: run_ours_faults(self, d),
                "ours-hardlink": lambda d: self.run_ours(d, system="ours-hardlink", hard_link_output=True),
                "ours-plaintext-hardlink": lambda d: self.run_ours(
                    d, tls=False, system="ours-plaintext-hardlink", hard_link_output=True
                ),
                "ours-python-tls": lambda d: self.run_ours(d, system="ours-python-tls", native_tls=False),
                "ours-python-tls-server": lambda d: self.run_ours(
                    d, system="ours-python-tls-server", server_native_tls=False
                ),
            }
            return runs[system](sysdir)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            return SystemResult(system, [], None, "not measured", error=str(exc).strip()[:1000])
        finally:
            self.topo.stop(self.topo.started_since(mark))
            shutil.rmtree(sysdir, ignore_errors=True)

    def _agents(self, sysdir: Path, specs: dict[str, dict[str, Any]]) -> dict[str, Agent]:
        return {name: Agent(self.topo, self.h[name], spec, sysdir / f"{name}.log") for name, spec in specs.items()}

    def run_direct(self, sysdir: Path) -> SystemResult:
        outputs = {p: sysdir / p / BLOB for p in self.peers}
        rate = self.cfg.peer_rate if self.topo.mode == "loopback" else 0
        specs = {}
        for p in self.peers:
            outputs[p].parent.mkdir(parents=True)
            specs[p] = {"kind": "curl", "url": self.origin_url, "output": str(outputs[p]), "rate": rate,
                        "timeout": self.cfg.system_timeout()}  # fmt: skip
        agents = self._agents(sysdir, specs)
        wait_ready(agents)
        with self.measured("direct") as box:
            t0 = drive(agents, self.cfg.system_timeout())
            for agent in agents.values():
                agent.close()
        result = self.results("direct", agents, t0, box)
        self.verify(result, outputs)
        return result

    def run_bittorrent(self, sysdir: Path) -> SystemResult:
        if not shutil.which("aria2c") or not shutil.which("opentracker"):
            raise RuntimeError("aria2c or opentracker is not installed; run scripts/bench-deps.sh")
        ctl, origin = self.h["ctl"], self.h["origin"]
        loopback = self.topo.mode == "loopback"
        tracker_port = ctl.port(TRACKER_PORT)
        announce = f"http://{ctl.ip}:{tracker_port}/announce"
        torrent, info_hash = bencode.make_torrent(self.data_dir / BLOB, announce, self.cfg.torrent_piece_length)
        torrent_path = sysdir / f"{BLOB}.torrent"
        torrent_path.write_bytes(torrent)
        tracker_dir = sysdir / "tracker"
        tracker_dir.mkdir()
        # Debian's opentracker only tracks whitelisted info-hashes; it reads the list after chroot to -d (and
        # after dropping to "nobody", so the list must be world-readable; -u root makes it exit).
        (tracker_dir / "whitelist").write_text(info_hash + "\n")
        self.topo.popen(
            ctl,
            ["opentracker", "-i", ctl.ip, "-p", str(tracker_port), "-P", str(tracker_port), "-d", str(tracker_dir),
             "-w", "whitelist"],
            log=sysdir / "tracker.log",
        )  # fmt: skip
        self.wait_tcp(ctl, ctl.ip, tracker_port, 15)
        timeout = self.cfg.system_timeout()

        def spec(host: Host, directory: Path, *, seed: bool) -> dict[str, Any]:
            return {
                "kind": "aria2", "seed": seed, "torrent": str(torrent_path), "dir": str(directory),
                "rpc_port": host.port(6800), "listen_port": host.port(6881), "timeout": timeout,
                "upload_rate": (self.cfg.origin_rate if seed else self.cfg.peer_rate) if loopback else 0,
                "download_rate": 0 if seed or not loopback else self.cfg.peer_rate,
            }  # fmt: skip

        seeder = Agent(self.topo, origin, spec(origin, self.data_dir, seed=True), sysdir / "seeder.log")
        if not seeder.wait_event({"ready"}, time.monotonic() + 300):
            raise RuntimeError(f"the seeding aria2c did not start: {seeder.events[-1:]}")
        outputs = {p: sysdir / p / BLOB for p in self.peers}
        for p in self.peers:
            outputs[p].parent.mkdir(parents=True)
        try:
            agents = self._agents(sysdir, {p: spec(self.h[p], outputs[p].parent, seed=False) for p in self.peers})
            wait_ready(agents)
            with self.measured("bittorrent") as box:
                t0 = drive(agents, timeout)
                for agent in agents.values():
                    agent.close()
        finally:
            seeder.close()
        result = self.results("bittorrent", agents, t0, box)
        stats = next((e for e in seeder.events if e["event"] == "stats"), None)
        # Without a wire, the origin of BitTorrent is the seeding aria2c, not the HTTP origin (idle here).
        if not isinstance(self.topo, NetnsTopology) and stats:
            result.origin_bytes = int(stats["upload_bytes"])
            result.origin_bytes_method = "the seeding aria2c's uploadLength"
        self.verify(result, outputs)
        return result

    def run_ours(
        self,
        sysdir: Path,
        *,
        tls: bool = True,
        system: str = "ours",
        hard_link_output: bool | None = None,
        native_tls: bool | None = None,
        server_native_tls: bool | None = None,
    ) -> SystemResult:
        loopback = self.topo.mode == "loopback"
        names = ["seed", *self.peers]
        rates = dict.fromkeys(names, self.cfg.peer_rate) if loopback else {}
        b2s = self.cfg.origin_rate if loopback else 0.0
        # None: the daemon's default (download.hardLinkOutput: true).
        download: dict[str, bool] = {} if hard_link_output is None else {"hardLinkOutput": hard_link_output}
        if native_tls is not None:
            download["nativeTls"] = native_tls
        overrides: dict[str, dict[str, Any]] = {p: {"download": dict(download)} for p in self.peers}
        if server_native_tls is not None:
            for name in names:
                overrides.setdefault(name, {})["storage"] = {"server": {"nativeTls": server_native_tls}}
        cluster = OursCluster(
            self.topo, sysdir, self.h["ctl"], [self.h[n] for n in names], rates=rates, back_to_source_rate=b2s,
            tls=tls, daemon_overrides=overrides,
        )  # fmt: skip
        outputs = {p: sysdir / p / "out" / BLOB for p in self.peers}
        specs = {}
        for p in self.peers:
            outputs[p].parent.mkdir(parents=True)
            specs[p] = {"kind": "dfget", "dfget": list(DFGET), "url": self.origin_url, "output": str(outputs[p]),
                        "endpoint": str(cluster.sockets[p]), "timeout": self.cfg.system_timeout()}  # fmt: skip
        agents = self._agents(sysdir, specs)
        wait_ready(agents)
        with self.measured(system) as box:
            t0 = drive(agents, self.cfg.system_timeout())
            for agent in agents.values():
                agent.close()
        cluster.close()
        result = self.results(system, agents, t0, box)
        self.verify(result, outputs)
        result.timeline = self.timeline(sysdir, names, t0)
        return result

    def timeline(self, sysdir: Path, names: list[str], t0: float) -> dict[str, Any] | None:
        """Return the per-piece timeline of a finished run of ours, from its daemons' stored piece metadata."""
        events = [
            event
            for name in names
            for event in read_pieces(sysdir / name / "storage" / "metadata" / "dfdaemon.db", name, t0)
        ]
        return analyse(events, self.peers, self.cfg.size) if events else None


def machine_info() -> dict[str, Any]:
    """Return cores, RAM, kernel, date and tool versions, for RESULTS.md."""
    import psutil

    def version(argv: list[str]) -> str:
        if not shutil.which(argv[0]):
            return "not installed"
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"

    return {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "aria2c": version(["aria2c", "--version"]),
        "nginx": version(["nginx", "-v"]),
        "curl": version(["curl", "--version"]),
    }


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m bench swarm")
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--size", type=parse_size, default=parse_size("256MiB"), help="file size, e.g. 1GiB")
    parser.add_argument("--origin-rate", type=parse_rate, default=parse_rate("400Mbit"), help="origin upload")
    parser.add_argument("--peer-rate", type=parse_rate, default=parse_rate("800Mbit"), help="peer up and down")
    parser.add_argument("--delay", type=float, default=0.0, help="ms of delay on each host's link, each way")
    parser.add_argument(
        "--systems", default=",".join(DEFAULT_SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS)
    )
    parser.add_argument("--loopback", action="store_true", help="no namespaces: app-level limits (lower fidelity)")
    parser.add_argument("--disk", action="store_true", help="store under /var/tmp instead of tmpfs (/dev/shm)")
    parser.add_argument("--origin", choices=("nginx", "python"), default="nginx", help="origin server (netns)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "swarm" / "out", help="report directory")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per system (default from the rates)")
    parser.add_argument("--torrent-piece-length", type=parse_size, default=parse_size("1MiB"))
    parser.add_argument(
        "--cpu-hogs", type=int, default=0, help="busy processes competing for the CPU during each system's run"
    )
    parser.add_argument(
        "--min-efficiency", type=float, default=None, help="exit 1 when ours reaches less than this share of the bound"
    )
    parser.add_argument(
        "--max-origin-ratio",
        type=float,
        default=None,
        help="exit 1 when ours takes more than this many F from the origin",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the swarm benchmark; exit 0 only if every system ran and every peer got the right bytes."""
    args = build_parser().parse_args(argv)
    if release_builds_missing("bench swarm"):
        return 2
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    if unknown := set(systems) - set(SYSTEMS):
        print(f"bench swarm: unknown system(s) {', '.join(sorted(unknown))}; choose from {SYSTEMS}", file=sys.stderr)
        return 2
    if args.peers < 1 or args.size < 1:
        print("bench swarm: --peers and --size must be positive", file=sys.stderr)
        return 2
    if args.cpu_hogs < 0:
        print("bench swarm: --cpu-hogs must not be negative", file=sys.stderr)
        return 2
    if os.geteuid() != 0 and not args.loopback:
        print("bench swarm: network namespaces need root; run as root or use --loopback", file=sys.stderr)
        return 2
    cfg = SwarmConfig(
        peers=args.peers, size=args.size, origin_rate=args.origin_rate, peer_rate=args.peer_rate,
        delay_ms=args.delay, systems=systems, loopback=args.loopback, disk=args.disk,
        origin="python" if args.loopback else args.origin, out=args.out, timeout=args.timeout,
        torrent_piece_length=args.torrent_piece_length, cpu_hogs=args.cpu_hogs,
    )  # fmt: skip
    if cfg.loopback and not shutil.which("curl"):
        print("bench swarm: curl is not installed; run scripts/bench-deps.sh", file=sys.stderr)
        return 2
    cleanup_leftovers()
    if not cfg.loopback and (reason := probe_namespaces()):
        print(f"bench swarm: {reason}.\nRerun with --loopback for application-level rate limits instead "
              "(lower fidelity: no shaped links, all hosts share 127.0.0.1).", file=sys.stderr)  # fmt: skip
        return 2
    if cfg.origin == "nginx" and not shutil.which("nginx"):
        print("bench swarm: nginx is not installed; run scripts/bench-deps.sh or use --origin python", file=sys.stderr)
        return 2
    names = ["origin", "ctl", "seed", *[f"p{i + 1}" for i in range(cfg.peers)]]
    if "ours-faults" in systems:
        names += FAULT_HOSTS
    base = Path("/var/tmp") if cfg.disk else Path("/dev/shm")
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    topology: Topology | None = None
    try:
        if cfg.loopback:
            topology = Topology(names, base)
        else:
            upload = {n: cfg.peer_rate for n in names if n != "ctl"} | {"origin": cfg.origin_rate}
            topology = NetnsTopology(names, base, Shaping(upload=upload, download=dict(upload), delay_ms=cfg.delay_ms))
        bound = kumar_ross_bound(cfg.size, cfg.origin_rate, [cfg.peer_rate] * cfg.peers, [cfg.peer_rate] * cfg.peers)
        run = SwarmRun(
            mode=topology.mode, peers=cfg.peers, size=cfg.size, origin_rate=cfg.origin_rate, peer_rate=cfg.peer_rate,
            delay_ms=cfg.delay_ms, storage="disk (/var/tmp)" if cfg.disk else "tmpfs (/dev/shm)", bound=bound,
            machine=machine_info(), command=shlex.join(["python", "-m", "bench", "swarm", *(argv or sys.argv[1:])]),
            cpu_hogs=cfg.cpu_hogs,
        )  # fmt: skip
        swarm = Swarm(cfg, topology)
        print(f"bench swarm: {topology.mode}, {cfg.peers} peers × {format_size(cfg.size)}; preparing", file=sys.stderr)
        swarm.prepare()
        for system in systems:
            print(f"bench swarm: running {system}", file=sys.stderr)
            run.systems.append(swarm.run_system(system))
    except NamespacesUnavailable as exc:
        print(f"bench swarm: {exc}; rerun with --loopback (lower fidelity)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench swarm: interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        if topology is not None:
            topology.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem = f"swarm-{run.mode}-{cfg.peers}x{format_size(cfg.size).replace(' ', '').replace('.00', '')}"
    (cfg.out / f"{stem}.md").write_text(run.markdown())
    (cfg.out / f"{stem}.json").write_text(json.dumps(run.to_json(), indent=2))
    write_plot(run, cfg.out / f"{stem}.png")
    if args.json:
        print(json.dumps(run.to_json()))
    else:
        print(run.markdown())
        print(f"written: {cfg.out / stem}.md, .json, .png")
    misses = target_misses(run, min_efficiency=args.min_efficiency, max_origin_ratio=args.max_origin_ratio)
    for miss in misses:
        print(f"bench swarm: {miss}", file=sys.stderr)
    return 0 if all(s.ok for s in run.systems) and not misses else 1
