"""`python -m bench pcache`: export a persistent cache task over a shaped link, zstd against raw, in one run.

Four network namespaces on a bridge (bench/swarm/hosts.py), every link shaped to `--rate` (100 Mbit/s by default)
both ways: a scheduler, an importer and two exporters, with mutual TLS as deployed. The exporter `zstd` runs with
the default `download.persistentCacheCompression: zstd`, the exporter `raw` with `off`; both fetch from the
importer only (each drops its copy before the other exports). Two files are imported: text-like log lines (they
compress) and random bytes (they do not: the check that compression stays out of the way). For each export: wall
seconds of `dfcache export` (process start and the whole-content digest check included), the bytes that reached
the exporter's link, and the output's SHA-256 against the file's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import release_builds_missing
from bench.swarm.hosts import NetnsTopology, Shaping, cleanup_leftovers, probe_namespaces
from bench.swarm.ours import OursCluster
from bench.swarm.services import PYTHON
from bench.swarm.units import format_size, parse_rate, parse_size

NAMES = ("sched", "importer", "zstd", "raw")
DFCACHE = (PYTHON, "-m", "dragonfly.cli.dfcache")


def write_text(path: Path, size: int) -> None:
    """Write ``size`` bytes of log-like lines (timestamps, ids, sizes): typical compressible content."""
    rng = random.Random(16)
    words = ["GET", "PUT", "objects", "models", "layers", "INFO", "WARN", "status=200", "status=404", "cache=hit"]
    with path.open("wb") as f:
        written = 0
        while written < size:
            lines = []
            for _ in range(4096):
                lines.append(
                    f"2026-12-01T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z "
                    f"{rng.choice(words)} /{rng.choice(words)}/{rng.randrange(10**8):08x} "
                    f"{rng.choice(words)} bytes={rng.randrange(10**7)} took={rng.random():.4f}\n"
                )
            chunk = "".join(lines).encode()[: size - written]
            f.write(chunk)
            written += len(chunk)


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            left -= len(chunk)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def dfcache(socket: Path, *args: str, timeout: float = 900) -> str:
    proc = subprocess.run([*DFCACHE, *args, "-e", str(socket)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"dfcache {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def run(args: argparse.Namespace) -> dict[str, Any]:
    rate = parse_rate(args.rate)
    size = parse_size(args.size)
    base = Path(args.workdir)
    base.mkdir(parents=True, exist_ok=True)
    links = dict.fromkeys(NAMES, rate)
    topology = NetnsTopology(list(NAMES), base, Shaping(upload=links, download=dict(links)))
    rows: list[dict[str, Any]] = []
    try:
        hosts = topology.hosts
        cluster = OursCluster(
            topology,
            topology.workdir / "ours",
            hosts["sched"],
            [hosts["importer"], hosts["zstd"], hosts["raw"]],
            daemon_overrides={"raw": {"download": {"persistentCacheCompression": "off"}}},
        )
        with cluster:
            for kind, write in (("text", write_text), ("random", write_random)):
                source = topology.workdir / f"{kind}.bin"
                write(source, size)
                expected = sha256(source)
                task_id = dfcache(cluster.sockets["importer"], "import", str(source), "--persistent-replica-count", "1")
                for name in ("zstd", "raw"):
                    output = topology.workdir / f"{kind}.{name}.out"
                    before = topology.interface_counters()[name][1]
                    started = time.perf_counter()
                    dfcache(cluster.sockets[name], "export", task_id, "-O", str(output))
                    seconds = time.perf_counter() - started
                    wire = topology.interface_counters()[name][1] - before
                    ok = sha256(output) == expected
                    output.unlink()
                    dfcache(cluster.sockets[name], "delete", task_id)
                    row = {"content": kind, "exporter": name, "size": size, "seconds": round(seconds, 3)}
                    row.update(wire_bytes=wire, verified=ok)
                    rows.append(row)
                    print(
                        f"{kind:6} {name:4} {format_size(size):>9} {seconds:7.2f} s "
                        f"{size / seconds / 1e6:7.1f} MB/s  on the link: {format_size(wire):>9}  "
                        f"{'verified' if ok else 'WRONG BYTES'}",
                        flush=True,
                    )
                dfcache(cluster.sockets["importer"], "delete", task_id)
                source.unlink()
    finally:
        topology.close()
    by = {(r["content"], r["exporter"]): r for r in rows}
    summary = {
        kind: round(by[(kind, "raw")]["seconds"] / by[(kind, "zstd")]["seconds"], 2)
        for kind in ("text", "random")
        if (kind, "raw") in by and (kind, "zstd") in by
    }
    return {"rate_bytes_per_second": rate, "size": size, "rows": rows, "raw_over_zstd_seconds": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pcache", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256MiB", help="size of each file (default 256MiB)")
    parser.add_argument("--rate", default="100Mbit", help="every host's link, both ways (default 100Mbit)")
    parser.add_argument("--workdir", default="/tmp", help="where the run's files go (default /tmp)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if release_builds_missing("bench pcache"):
        return 2
    cleanup_leftovers()
    if reason := probe_namespaces():
        print(f"bench pcache: {reason}", file=sys.stderr)
        return 1
    result = run(args)
    for kind, ratio in result["raw_over_zstd_seconds"].items():
        print(f"{kind}: raw takes {ratio}x the time of zstd")
    if args.json:
        print(json.dumps(result))
    return 0 if all(r["verified"] for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
