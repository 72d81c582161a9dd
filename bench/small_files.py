"""`python -m bench small-files`: many small files to several peers, ours against every peer pulling from the origin.

One origin (``dragonfly.cli.demo_origin``) serves ``--files`` files of ``--size`` each. Each of ``--peers`` clients
fetches every file, all clients at once, one file after the other:

- direct: each client GETs each file from the origin itself (the origin serves ``peers × files`` copies);
- ours: a scheduler, a seed peer and one dfdaemon per client (mutual TLS, ``dragonfly.cli.cluster.LocalCluster``);
  each client asks its own daemon over the local gRPC API (no dfget process per file, so process start-up does
  not swamp the figure), with an output file, as dfget would.

Reported per system: makespan, origin bytes / total (the total being ``files × size``), and CPU seconds of every
process involved (origin included, and this process, where both systems' clients run). Targets
(``docs/benchmarks.md``): origin bytes ≤ 1.05 × the total, makespan ≤ 0.5 × direct's (the latter only where the
origin's uplink is the bottleneck; on loopback it is not).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import release_builds_missing
from bench.swarm.cpu import CpuMeter
from bench.swarm.units import format_size, parse_size


def _each_client(clients: list[str], files: int, fetch: Callable[[str, int], None]) -> float:
    """Run ``fetch(client, i)`` for every file, one thread per client; return the makespan; raise the first error."""
    errors: list[BaseException] = []

    def run(client: str) -> None:
        try:
            for i in range(files):
                fetch(client, i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"a download failed: {errors[0]!r}")
    return time.perf_counter() - started


def _download(socket_path: str, url: str, output: Path) -> dict[str, int]:
    """Download ``url`` through a daemon's local API into ``output``; return piece bytes by traffic type."""
    import grpc
    from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

    request = dfdaemon_pb2.DownloadTaskRequest(download=common_pb2.Download(url=url, output_path=str(output)))
    traffic: dict[str, int] = {}
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        for response in dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel).DownloadTask(request, timeout=120):
            if response.HasField("download_piece_finished_response"):
                piece = response.download_piece_finished_response.piece
                name = common_pb2.TrafficType.Name(piece.traffic_type)
                traffic[name] = traffic.get(name, 0) + piece.length
    return traffic


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(workdir: Path, peers: int, files: int, size: int) -> dict[str, Any]:
    """Run both systems; return their figures."""
    from dragonfly.cli.cluster import LocalCluster, OriginProcess

    data = workdir / "origin"
    data.mkdir(parents=True)
    block = os.urandom(min(size, 1 << 20))
    for i in range(files):
        with (data / f"f{i}.bin").open("wb") as f:
            for offset in range(0, size, len(block)):
                # A different prefix per file: distinct content, distinct tasks.
                f.write((i.to_bytes(8, "big") + block[8:])[: size - offset])
    clients = [f"peer-{i + 1}" for i in range(peers)]
    total = files * size
    results: dict[str, Any] = {}
    with OriginProcess(data, workdir / "origin.log") as origin:
        outputs = workdir / "direct"
        for client in clients:
            (outputs / client).mkdir(parents=True)

        def direct(client: str, i: int) -> None:
            target = outputs / client / f"f{i}.bin"
            with urllib.request.urlopen(origin.url(f"f{i}.bin"), timeout=120) as response, target.open("wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)

        origin.reset_stats()
        meter = CpuMeter()
        meter.start()
        own = _self_cpu()
        makespan = _each_client(clients, files, direct)
        results["direct"] = {
            "makespan": makespan,
            "origin_ratio": origin.bytes_served() / total,
            "cpu_seconds": meter.stop() + _self_cpu() - own,
        }
        shutil.rmtree(outputs)

        with LocalCluster(workdir / "cluster", peers=peers) as cluster:
            outputs = workdir / "ours"
            for client in clients:
                (outputs / client).mkdir(parents=True)
            by_source: dict[str, int] = {}
            lock = threading.Lock()

            def ours(client: str, i: int) -> None:
                got = _download(cluster.socket_path(client), origin.url(f"f{i}.bin"), outputs / client / f"f{i}.bin")
                with lock:
                    for name, count in got.items():
                        by_source[name] = by_source.get(name, 0) + count

            origin.reset_stats()
            meter = CpuMeter()
            meter.start()
            own = _self_cpu()
            makespan = _each_client(clients, files, ours)
            results["ours"] = {
                "makespan": makespan,
                "origin_ratio": origin.bytes_served() / total,
                "cpu_seconds": meter.stop() + _self_cpu() - own,
                "by_source": by_source,
            }
            for client in clients:
                for i in range(files):
                    if (outputs / client / f"f{i}.bin").stat().st_size != size:
                        raise RuntimeError(f"{client}'s copy of f{i}.bin has the wrong size")
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print a table (or --json); exit 0 only if both systems ran."""
    parser = argparse.ArgumentParser(prog="python -m bench small-files")
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size", type=parse_size, default=parse_size("1MiB"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if release_builds_missing("bench small-files"):
        return 2
    workdir = Path("/dev/shm") / f"dfbench{os.getpid()}-small-files"
    try:
        results = run(workdir, args.peers, args.files, args.size)
    except (RuntimeError, OSError) as exc:
        print(f"bench small-files: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    delivered_gib = args.peers * args.files * args.size / (1 << 30)
    for entry in results.values():
        entry["cpu_seconds_per_gib"] = entry["cpu_seconds"] / delivered_gib
    results["ours_makespan_vs_direct"] = results["ours"]["makespan"] / results["direct"]["makespan"]
    if args.json:
        print(json.dumps({"peers": args.peers, "files": args.files, "size": args.size, "systems": results}))
        return 0
    print(f"small files: {args.peers} peers × {args.files} files × {format_size(args.size)}, loopback, mTLS")
    print("| system | makespan s | origin bytes / total | CPU s / GiB delivered |")
    print("|---|---|---|---|")
    for name in ("direct", "ours"):
        entry = results[name]
        print(
            f"| {name} | {entry['makespan']:.2f} | {entry['origin_ratio']:.3f} | {entry['cpu_seconds_per_gib']:.2f} |"
        )
    print(f"ours makespan ÷ direct: {results['ours_makespan_vs_direct']:.2f}")
    print(f"ours, bytes by source: {results['ours']['by_source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
