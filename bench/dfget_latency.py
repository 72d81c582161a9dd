"""`python -m bench dfget-latency`: wall time of `dfget` for 1 MiB, process start included.

Two cases on a loopback cluster (scheduler, seed peer, daemons "a" and "b"): a local hit (the task is already
on the daemon dfget talks to) and a peer fetch (the task is on "a", dfget asks "b"). Each run uses a fresh task (a
distinct query string). The baseline in the same run is the bare start of the same interpreter (`python -c pass`).

dfget runs as installed: with its modules byte-compiled (pip compiles them at install; here ``compileall`` into a
``PYTHONPYCACHEPREFIX`` in the work directory), so an environment with ``PYTHONDONTWRITEBYTECODE=1`` and a source
checkout does not charge it a compile of every module at each start. The local hit is also timed without the
byte-compiled modules, side by side, to show what that costs.
Target (issue 14): local hit ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import release_builds_missing
from bench.swarm.hosts import Host, Topology
from bench.swarm.services import PYTHON, REPO, Service, python_env

TARGET_LOCAL_HIT = 0.100


def interpreter_start(repeat: int) -> float:
    """Return the median wall time of `python -c pass` with the benchmark's interpreter."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([PYTHON, "-c", "pass"], check=True, timeout=30)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def byte_compile(prefix: Path) -> None:
    """Byte-compile the package into ``prefix``, to be used as PYTHONPYCACHEPREFIX."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix)}
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "dragonfly")], check=True, env=env, timeout=300)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the processes started inside (they inherit os.environ: OursCluster.dfget)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _stats(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def main(argv: list[str] | None = None) -> int:
    """Run the dfget latency benchmark; exit 0 only if every dfget succeeded."""
    parser = argparse.ArgumentParser(prog="python -m bench dfget-latency")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if release_builds_missing("bench dfget-latency"):
        return 2
    from bench.swarm.ours import OursCluster

    workdir = Path("/dev/shm") / f"dfbench{os.getpid()}-latency"
    topology = Topology([], Path("/dev/shm"))
    result: dict[str, Any] = {"repeat": args.repeat, "interpreter": PYTHON}
    try:
        (workdir / "data").mkdir(parents=True)
        (workdir / "data" / "blob").write_bytes(os.urandom(1 << 20))
        origin = Service(
            topology, Host("origin", "127.0.0.1"),
            [PYTHON, "-m", "bench.swarm.origin", "--dir", str(workdir / "data"), "--port", "0"],
            workdir / "origin.log", env=python_env(),
        )  # fmt: skip
        origin.wait_for("origin listening on", 30)
        base = "http://" + origin.lines[0].rsplit(" ", 1)[-1] + "/blob"
        result["python_c_pass"] = interpreter_start(args.repeat)
        byte_compile(workdir / "pycache")
        (workdir / "no-pycache").mkdir()
        hosts = [Host(name, "127.0.0.1") for name in ("seed", "a", "b")]
        local, local_source, peer = [], [], []
        with (
            environment(PYTHONPYCACHEPREFIX=str(workdir / "pycache")),
            OursCluster(topology, workdir / "ours", Host("ctl", "127.0.0.1"), hosts) as cluster,
        ):
            for i in range(args.repeat):
                url = f"{base}?run={i}"
                cluster.dfget("a", url, workdir / f"first-{i}")
                elapsed, _ = cluster.dfget("a", url, workdir / f"hit-{i}")
                local.append(elapsed)
                # An empty byte-code prefix that may not be written to: every module compiled at each start.
                with environment(PYTHONPYCACHEPREFIX=str(workdir / "no-pycache"), PYTHONDONTWRITEBYTECODE="1"):
                    elapsed, _ = cluster.dfget("a", url, workdir / f"hit-source-{i}")
                local_source.append(elapsed)
                elapsed, by_source = cluster.dfget("b", url, workdir / f"peer-{i}")
                peer.append(elapsed)
                if by_source.get("origin"):
                    result.setdefault("warnings", []).append(f"run {i}: b fetched {by_source['origin']} B from origin")
        result["local_hit"] = _stats(local)
        result["local_hit_from_source"] = _stats(local_source)
        result["from_peer"] = _stats(peer)
        result["local_hit_target_met"] = result["local_hit"]["median"] <= TARGET_LOCAL_HIT
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result["error"] = str(exc)[:1000]
    finally:
        topology.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    elif "error" in result:
        print(f"dfget-latency: error: {result['error']}", file=sys.stderr)
    else:
        print(f"dfget latency, 1 MiB, median of {args.repeat} (min–max), interpreter {PYTHON}")
        print("| case | ms |")
        print("|---|---|")
        print(f"| `python -c pass` | {result['python_c_pass'] * 1000:.0f} |")
        rows = (
            ("local_hit", "dfget, local hit"),
            ("local_hit_from_source", "dfget, local hit, every module compiled from source at start"),
            ("from_peer", "dfget, from a peer"),
        )
        for key, label in rows:
            s = result[key]
            print(f"| {label} | {s['median'] * 1000:.0f} ({s['min'] * 1000:.0f}–{s['max'] * 1000:.0f}) |")
        verdict = "met" if result["local_hit_target_met"] else "MISSED"
        print(f"local hit target ≤ {TARGET_LOCAL_HIT * 1000:.0f} ms: {verdict}")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
