"""`python -m bench small-files`: many small files to several peers, ours against every peer pulling from the origin.

Hosts and links are the swarm benchmark's (``bench/swarm``): by default one network namespace per host on a bridge,
the origin's uplink shaped to ``--origin-rate`` (400 Mbit) and every peer's and the seed's links to ``--peer-rate``
(800 Mbit), so the origin's uplink is the bottleneck a swarm is there to relieve. ``--loopback`` runs everything on
127.0.0.1 with no limit at all: the origin is never the bottleneck there, so that mode prices the control plane.

One origin (nginx in namespaces, ``bench.swarm.origin`` on loopback) serves ``--files`` files of ``--size`` each,
all different. Each of ``--peers`` clients fetches every file, one after the other, all clients at once:

- direct: one curl process per peer GETs every file from the origin over one kept-alive connection;
- ours: a scheduler, a seed peer and one dfdaemon per peer (mutual TLS, ``bench/swarm/ours.py``); one client process
  per peer asks its own daemon for each file over the local gRPC API (one channel for all files), with an output
  path, as dfget does;
- ours-dfget: the same cluster, one dfget process per file, as a user's shell loop would run it (so each file pays
  an interpreter start and ``import grpc``).

Reported per system: makespan, origin bytes / total (the total being ``files × size``; on the origin's veth in
namespaces, the origin's own counter on loopback), CPU seconds per GiB delivered of every process the system ran
(origin, scheduler, daemons, clients: ``bench/swarm/cpu.py``) and bytes by source. Targets (issue 14): origin bytes
≤ 1.05 × the total, makespan ≤ 0.5 × direct's. ``--max-makespan-ratio R`` exits 1 when ours' makespan is above R ×
direct's (a regression check).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from bench import release_builds_missing
from bench.swarm.hosts import (
    NamespacesUnavailable,
    NetnsTopology,
    Shaping,
    Topology,
    cleanup_leftovers,
    probe_namespaces,
)
from bench.swarm.ours import DFGET, OursCluster
from bench.swarm.runner import Swarm, SwarmConfig, _raise_interrupt
from bench.swarm.services import Agent, drive, wait_ready
from bench.swarm.units import format_rate, format_size, parse_rate, parse_size

SYSTEMS = ("direct", "ours", "ours-dfget")
#: The client each system's agents run (bench/swarm/agent.py, kind "files").
CLIENTS = {"direct": "curl", "ours": "api", "ours-dfget": "dfget"}


def write_files(directory: Path, files: int, size: int) -> dict[str, str]:
    """Write ``files`` files of ``size`` bytes, each with its own content; return {name: sha256}."""
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(min(size, 1 << 20))
    digests = {}
    for i in range(files):
        name = f"f{i}.bin"
        digest = hashlib.sha256()
        with (directory / name).open("wb") as f:
            for offset in range(0, size, len(block)):
                # A different prefix per file: distinct content, distinct tasks.
                chunk = (i.to_bytes(8, "big") + block[8:])[: size - offset]
                digest.update(chunk)
                f.write(chunk)
        digests[name] = digest.hexdigest()
    return digests


def verify(outputs: dict[str, Path], digests: dict[str, str]) -> str:
    """Return "" if every peer's directory holds every file with the origin's bytes, else what is wrong."""
    for peer, directory in outputs.items():
        for name, expected in digests.items():
            path = directory / name
            if not path.is_file():
                return f"{peer}: no {name}"
            with path.open("rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != expected:
                    return f"{peer}: {name} differs from the origin's"
    return ""


def run_system(swarm: Swarm, system: str, base_url: str, digests: dict[str, str]) -> dict[str, Any]:
    """Run one system's clients on every peer host at once; return its figures (or its error)."""
    topology, hosts = swarm.topo, swarm.h
    sysdir = swarm.dir / system
    sysdir.mkdir(parents=True)
    mark = topology.mark()
    cluster: OursCluster | None = None
    timeout = swarm.cfg.system_timeout()
    try:
        if system != "direct":
            # On loopback the run is unlimited: no daemon limits; in namespaces tc shapes the links.
            cluster = OursCluster(topology, sysdir, hosts["ctl"], [hosts[n] for n in ["seed", *swarm.peers]])
        outputs = {p: sysdir / p / "out" for p in swarm.peers}
        specs = {}
        for peer, directory in outputs.items():
            directory.mkdir(parents=True)
            specs[peer] = {"kind": "files", "client": CLIENTS[system], "base": base_url, "names": list(digests),
                           "dir": str(directory), "dfget": list(DFGET), "timeout": timeout,
                           "endpoint": str(cluster.sockets[peer]) if cluster else ""}  # fmt: skip
        agents = {p: Agent(topology, hosts[p], spec, sysdir / f"{p}.log") for p, spec in specs.items()}
        wait_ready(agents)
        with swarm.measured(system) as box:
            t0 = drive(agents, timeout)
            for agent in agents.values():
                agent.close()
        finishes = [next((e for e in a.events if e["event"] == "finish"), None) for a in agents.values()]
        errors = [f"{p}: {f['error'] if f else 'no finish'}" for p, f in zip(agents, finishes, strict=True)
                  if not f or not f["ok"]]  # fmt: skip
        if errors:
            return {"error": "; ".join(errors)[:1000]}
        if problem := verify(outputs, digests):
            return {"error": problem}
        by_source: dict[str, int] = {}
        for finish in finishes:
            assert finish is not None
            for name, count in finish["by_source"].items():
                by_source[name] = by_source.get(name, 0) + count
        origin_bytes, method = swarm.origin_egress(box)
        delivered = sum(f["bytes"] for f in finishes if f)
        return {
            "makespan": max(f["t"] for f in finishes if f) - t0,
            "origin_bytes": origin_bytes,
            "origin_bytes_method": method,
            "cpu_seconds": box["cpu_seconds"],
            "cpu_seconds_per_gib": box["cpu_seconds"] / (delivered / (1 << 30)),
            "cpu_by_process": box["cpu_by_process"],
            "by_source": by_source,
        }
    finally:
        if cluster is not None:
            cluster.close()
        topology.stop(topology.started_since(mark))
        shutil.rmtree(sysdir, ignore_errors=True)


def run(args: argparse.Namespace, systems: tuple[str, ...]) -> dict[str, Any]:
    """Build the hosts, the origin and its files; run each system; return every figure."""
    loopback = bool(args.loopback)
    names = ["origin", "ctl", "seed", *[f"p{i + 1}" for i in range(args.peers)]]
    base = Path("/var/tmp") if args.disk else Path("/dev/shm")
    topology: Topology
    if loopback:
        topology = Topology(names, base)
    else:
        upload = {n: args.peer_rate for n in names if n != "ctl"} | {"origin": args.origin_rate}
        topology = NetnsTopology(names, base, Shaping(upload=upload, download=dict(upload)))
    try:
        cfg = SwarmConfig(
            peers=args.peers, size=args.files * args.size, origin_rate=0.0 if loopback else args.origin_rate,
            peer_rate=args.peer_rate, delay_ms=0.0, systems=systems, loopback=loopback, disk=args.disk,
            origin="python" if loopback else "nginx", out=Path(), timeout=args.timeout, torrent_piece_length=1 << 20,
        )  # fmt: skip
        if cfg.timeout is None:
            # The swarm's limit (3 × the client-server time plus a minute) plus 2 s per file: a process per file
            # (ours-dfget) takes 0.3-1.5 s on 2 busy cores, more than the bytes.
            cfg.timeout = cfg.system_timeout() + 2.0 * args.files
        swarm = Swarm(cfg, topology)
        digests = write_files(swarm.data_dir, args.files, args.size)
        base_url = swarm.start_origin()
        results: dict[str, Any] = {}
        for system in systems:
            print(f"bench small-files: running {system}", file=sys.stderr)
            results[system] = run_system(swarm, system, base_url, digests)
    finally:
        topology.close()
    total = args.files * args.size
    for entry in results.values():
        if entry.get("origin_bytes") is not None:
            entry["origin_ratio"] = entry["origin_bytes"] / total
    direct = results.get("direct", {}).get("makespan")
    ratios = {
        f"{name}_makespan_vs_direct": entry["makespan"] / direct
        for name, entry in results.items()
        if name != "direct" and direct and "makespan" in entry
    }
    return {"mode": topology.mode, "systems": results, "ratios": ratios}


def format_report(args: argparse.Namespace, report: dict[str, Any], command: str) -> str:
    if report["mode"] == "loopback":
        links = "loopback, no limits"
    else:
        links = f"namespaces, origin {format_rate(args.origin_rate)}, peers {format_rate(args.peer_rate)}"
    lines = [
        f"small files: {args.peers} peers × {args.files} files × {format_size(args.size)}, {links}, mTLS",
        f"command: {command}",
        "| system | makespan s | origin bytes / total | CPU s / GiB delivered | bytes by source |",
        "|---|---|---|---|---|",
    ]
    for name, entry in report["systems"].items():
        if "error" in entry:
            lines.append(f"| {name} | failed: {entry['error']} | | | |")
            continue
        ratio = f"{entry['origin_ratio']:.3f}" if "origin_ratio" in entry else "?"
        sources = ", ".join(f"{k} {v / (1 << 20):.0f} MiB" for k, v in entry["by_source"].items() if v) or "origin"
        lines.append(f"| {name} | {entry['makespan']:.2f} | {ratio} | {entry['cpu_seconds_per_gib']:.2f} | {sources} |")
    lines.append("")
    for key, value in report["ratios"].items():
        lines.append(f"{key.replace('_', ' ')}: {value:.2f} (target ≤ 0.5)")
    for name, entry in report["systems"].items():
        if "cpu_by_process" in entry:
            top = sorted(entry["cpu_by_process"].items(), key=lambda kv: -kv[1])[:6]
            lines.append(f"{name} CPU s by process: " + ", ".join(f"{k} {v:.1f}" for k, v in top))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print a table (or --json); exit 0 only if every system ran and met the limits given."""
    parser = argparse.ArgumentParser(prog="python -m bench small-files", description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size", type=parse_size, default=parse_size("1MiB"))
    parser.add_argument("--origin-rate", type=parse_rate, default=parse_rate("400Mbit"), help="origin upload")
    parser.add_argument("--peer-rate", type=parse_rate, default=parse_rate("800Mbit"), help="peer up and down")
    parser.add_argument("--loopback", action="store_true", help="no namespaces, no limits")
    parser.add_argument("--disk", action="store_true", help="store under /var/tmp instead of tmpfs (/dev/shm)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--timeout", type=float, default=None, help="seconds per system (default from the rates)")
    parser.add_argument(
        "--max-makespan-ratio", type=float, default=None, metavar="R",
        help="exit 1 when ours' makespan is above R × direct's (measured in the same run)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown system(s) {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")
    if args.peers < 1 or args.files < 1 or args.size < 1:
        parser.error("--peers, --files and --size must be positive")
    if args.max_makespan_ratio is not None and not {"direct", "ours"} <= set(systems):
        parser.error("--max-makespan-ratio needs the systems direct and ours")
    if release_builds_missing("bench small-files"):
        return 2
    if not args.loopback:
        if os.geteuid() != 0:
            print("bench small-files: network namespaces need root; run as root or use --loopback", file=sys.stderr)
            return 2
        if reason := probe_namespaces():
            print(f"bench small-files: {reason}; rerun with --loopback", file=sys.stderr)
            return 2
        if not shutil.which("nginx"):
            print("bench small-files: nginx is not installed; run scripts/bench-deps.sh", file=sys.stderr)
            return 2
    if "direct" in systems and not shutil.which("curl"):
        print("bench small-files: curl is not installed; run scripts/bench-deps.sh", file=sys.stderr)
        return 2
    cleanup_leftovers()
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        report = run(args, systems)
    except NamespacesUnavailable as exc:
        print(f"bench small-files: {exc}; rerun with --loopback", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"bench small-files: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench small-files: interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    command = shlex.join(["python", "-m", "bench", "small-files", *(argv if argv is not None else sys.argv[1:])])
    report.update(peers=args.peers, files=args.files, size=args.size, command=command)
    print(json.dumps(report) if args.json else format_report(args, report, command))
    failures = [f"{name} failed" for name, entry in report["systems"].items() if "error" in entry]
    if (problem := over_limit(report, args.max_makespan_ratio)) is not None:
        failures.append(problem)
    for failure in failures:
        print(f"bench small-files: {failure}", file=sys.stderr)
    return 1 if failures else 0


def over_limit(report: dict[str, Any], max_ratio: float | None) -> str | None:
    """Return why ours' makespan breaks ``--max-makespan-ratio`` (None: no limit, or within it)."""
    if max_ratio is None:
        return None
    ratio = report["ratios"].get("ours_makespan_vs_direct")
    if ratio is None:
        return "--max-makespan-ratio: ours or direct did not finish, no ratio to check"
    if ratio > max_ratio:
        return f"ours' makespan is {ratio:.2f} × direct's, above --max-makespan-ratio {max_ratio:g}"
    return None


if __name__ == "__main__":
    sys.exit(main())
