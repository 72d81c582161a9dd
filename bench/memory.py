"""`python -m bench memory`: dfdaemon RSS while moving one large file, and after each of many small tasks.

A loopback cluster (scheduler, seed peer, daemon "a"): "a" downloads `--size` through the seed peer while both
daemons' RSS is sampled every 20 ms; then "a" downloads `--tasks` distinct 1 MiB tasks one after another and its
RSS is read after each. Targets (``docs/benchmarks.md#targets``): ≤ 150 MiB RSS for 1 GiB; flat (±10 %) over 100 tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from bench import release_builds_missing
from bench.swarm.hosts import Host, Topology
from bench.swarm.services import PYTHON, Service, python_env
from bench.swarm.units import format_size, parse_size

MIB = 1 << 20


class PeakRss:
    """Sample the RSS of some processes every `interval` seconds until stopped; keep each one's peak."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02) -> None:
        self.peaks = dict.fromkeys(pids, 0)
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for name, proc in self._procs.items():
                try:
                    self.peaks[name] = max(self.peaks[name], proc.memory_info().rss)
                except psutil.Error:
                    pass

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peaks


def main(argv: list[str] | None = None) -> int:
    """Run the memory benchmark; exit 0 only if every download succeeded."""
    parser = argparse.ArgumentParser(prog="python -m bench memory")
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if release_builds_missing("bench memory"):
        return 2
    from bench.swarm.ours import OursCluster

    workdir = Path("/dev/shm") / f"dfbench{os.getpid()}-memory"
    topology = Topology([], Path("/dev/shm"))
    result: dict[str, Any] = {"size": args.size, "tasks": args.tasks}
    try:
        data = workdir / "data"
        data.mkdir(parents=True)
        with (data / "big").open("wb") as f:
            for offset in range(0, args.size, 16 * MIB):
                f.write(os.urandom(min(16 * MIB, args.size - offset)))
        (data / "small").write_bytes(os.urandom(MIB))
        origin = Service(
            topology, Host("origin", "127.0.0.1"),
            [PYTHON, "-m", "bench.swarm.origin", "--dir", str(data), "--port", "0"],
            workdir / "origin.log", env=python_env(),
        )  # fmt: skip
        origin.wait_for("origin listening on", 30)
        base = "http://" + origin.lines[0].rsplit(" ", 1)[-1]
        hosts = [Host("seed", "127.0.0.1"), Host("a", "127.0.0.1")]
        with OursCluster(topology, workdir / "ours", Host("ctl", "127.0.0.1"), hosts) as cluster:
            pids = {"a": cluster.pid("a"), "seed": cluster.pid("seed")}
            result["rss_idle"] = {name: psutil.Process(pid).memory_info().rss for name, pid in pids.items()}
            sampler = PeakRss(pids)
            try:
                seconds, by_source = cluster.dfget("a", f"{base}/big", workdir / "big.out")
            finally:
                result["peak_rss"] = sampler.stop()
            result["large"] = {"seconds": seconds, "by_source": by_source}
            (workdir / "big.out").unlink()
            series = []
            for i in range(args.tasks):
                out = workdir / "small.out"
                cluster.dfget("a", f"{base}/small?task={i}", out)
                out.unlink()
                series.append(psutil.Process(pids["a"]).memory_info().rss)
            result["rss_after_task"] = series
            first, last = series[0], series[-1]
            result["drift"] = (last - first) / first
            result["spread"] = (max(series) - min(series)) / first
    except (RuntimeError, OSError, subprocess.SubprocessError, psutil.Error) as exc:
        result["error"] = str(exc)[:1000]
    finally:
        topology.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    elif "error" in result:
        print(f"memory: error: {result['error']}", file=sys.stderr)
    else:
        peak = result["peak_rss"]
        seconds = result["large"]["seconds"]
        print(f"memory: daemon 'a' fetched {format_size(args.size)} via the seed peer in {seconds:.1f} s")
        print("| what | MiB |")
        print("|---|---|")
        print(f"| peer idle RSS | {result['rss_idle']['a'] / MIB:.1f} |")
        print(f"| peer peak RSS while moving {format_size(args.size)} | {peak['a'] / MIB:.1f} |")
        print(f"| seed peer peak RSS (back-to-source + upload) | {peak['seed'] / MIB:.1f} |")
        s = result["rss_after_task"]
        print(f"| peer RSS after task 1 / {len(s)} (max) | {s[0] / MIB:.1f} / {s[-1] / MIB:.1f} ({max(s) / MIB:.1f}) |")
        print(f"drift over {len(s)} tasks: {result['drift'] * 100:+.1f} % (spread {result['spread'] * 100:.1f} %)")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
