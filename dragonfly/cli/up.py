"""``dragonfly up``: a manager, a scheduler, a seed peer and N peers on 127.0.0.1 until Ctrl-C; ``--demo`` shows the
swarm. The peers find the scheduler through the manager (``--no-manager``: they are given its address).

With ``--demo`` it also serves a generated random file from a local origin, runs dfget on every peer at the same
time, checks every output's sha256 and prints where each peer's bytes came from (or one JSON object with
``--json``), then stops everything. Exit status 0 only when every download succeeded and verified.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dragonfly.cli.arguments import description, parse_args
from dragonfly.cli.cluster import SOURCES, LocalCluster, OriginProcess, ProcessStartError, run_dfget
from dragonfly.common.config import parse_duration, parse_size


class _Stop(Exception):
    """SIGINT or SIGTERM arrived while starting or in the demo; unwind so every process is stopped."""


class _Signals:
    """SIGINT (Ctrl-C) and SIGTERM for ``dragonfly up``, installed explicitly.

    Explicitly, because a SIGINT ignored by whoever started us (a background job of a non-interactive shell, as in
    CI, inherits SIGINT ignored) would otherwise never reach us. While the cluster starts or the demo runs a signal
    raises ``_Stop``, so a slow start can be interrupted. While the cluster just runs, and while it stops, a signal
    is only noted: an exception raised at an arbitrary point could land inside ``subprocess.Popen.poll`` after it
    took its waitpid lock and before its ``try``, leaving the lock held, so that child could never be reaped; and a
    second Ctrl-C must not abandon the stop half way.
    """

    def __init__(self) -> None:
        self.raising = True
        self.received: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        if self.raising:
            raise _Stop


def _say(message: str) -> None:
    print(f"dragonfly: {message}", file=sys.stderr, flush=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def generate_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` and return their sha256 hex digest."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * 1024 * 1024))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def _run_dfget(cluster: LocalCluster, name: str, url: str, output: Path, timeout: float) -> dict[str, Any]:
    result = run_dfget(cluster.socket_path(name), url, output, "--timeout", f"{timeout:g}s", timeout=timeout + 30)
    return {
        "name": name,
        "exit_status": result.returncode,
        "seconds": round(result.seconds, 3),
        "bytes": result.traffic,
        "error": result.error,
    }


def run_demo(cluster: LocalCluster, workdir: Path, size: int, timeout: float) -> dict[str, Any]:
    """Serve a random file, fetch it on every peer at once, verify, and return the report."""
    origin_dir = workdir / "origin"
    origin_dir.mkdir(parents=True, exist_ok=True)
    # A fresh name per run: a reused work dir keeps old tasks, and the same URL with new bytes would be stale.
    name = f"demo-{secrets.token_hex(4)}.bin"
    _say(f"generating a {_human(size)} random file {origin_dir / name}")
    expected = generate_file(origin_dir / name, size)
    origin = OriginProcess(origin_dir, workdir / "logs" / "origin.log")
    origin.start()
    try:
        origin.wait_ready(30)
        url = origin.url(name)
        downloads = workdir / "downloads"
        downloads.mkdir(exist_ok=True)
        _say(f"downloading {url} on {len(cluster.peer_names)} peers at once")
        began = time.monotonic()
        with ThreadPoolExecutor(max(len(cluster.peer_names), 1)) as pool:
            outputs = {peer: downloads / f"{peer}-{name}" for peer in cluster.peer_names}
            results = list(
                pool.map(lambda peer: _run_dfget(cluster, peer, url, outputs[peer], timeout), cluster.peer_names)
            )
            makespan = time.monotonic() - began
            digests = list(pool.map(_sha256, outputs.values()))
        for result, digest in zip(results, digests, strict=True):
            result["sha256_ok"] = digest == expected
            result["ok"] = result["exit_status"] == 0 and result["sha256_ok"]
            if result["exit_status"] == 0 and not result["sha256_ok"]:
                result["error"] = f"sha256 of the output is {digest}, expected {expected}"
        served = origin.bytes_served(name)
    finally:
        origin.stop()
    return {
        "ok": bool(results) and all(r["ok"] for r in results),
        "file": {"url": url, "size": size, "sha256": expected},
        "origin_bytes_served": served,
        "origin_ratio": round(served / size, 4) if size else 0.0,
        "makespan_seconds": round(makespan, 3),
        "peers": results,
        "workdir": str(workdir),
    }


def format_report(report: dict[str, Any]) -> str:
    """Render the demo report as a table."""
    header = ("peer", "from origin", "from seed", "from peers", "local", "seconds", "result")
    rows = [header]
    for r in report["peers"]:
        counts = r["bytes"] or {}
        rows.append(
            (
                r["name"],
                *(_human(counts[s]) if s in counts else "-" for s in SOURCES),
                f"{r['seconds']:.2f}",
                "sha256 ok" if r["ok"] else f"FAILED: {r['error']}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
    size = report["file"]["size"]
    fetched = sum(sum((r["bytes"] or {}).values()) for r in report["peers"])
    from_peers = sum((r["bytes"] or {}).get("peers", 0) for r in report["peers"])
    lines.append("")
    lines.append(
        f"origin served {_human(report['origin_bytes_served'])} for a {_human(size)} file "
        f"({report['origin_ratio']:.2f}x); peers fetched {_human(fetched)} in {report['makespan_seconds']:.2f}s, "
        f"{100 * from_peers / fetched if fetched else 0:.0f}% of it from other peers"
    )
    lines.append("all downloads complete and verified" if report["ok"] else "SOME DOWNLOADS FAILED")
    return "\n".join(lines)


def _print_endpoints(cluster: LocalCluster, as_json: bool, root_password: str | None = None) -> None:
    info = cluster.describe()
    if root_password and "manager" in info:
        info["manager"]["user"] = "root"
        info["manager"]["password"] = root_password
    if as_json:
        print(json.dumps(info), flush=True)
        return
    lines = []
    if "manager" in info:
        manager = info["manager"]
        lines.append(
            f"manager     REST and console {manager['rest']}/ (user root, password {root_password}); "
            f"gRPC {manager['grpc']}"
        )
    lines.append(f"scheduler   {info['scheduler']['addr']}")
    for name, daemon in info["daemons"].items():
        listening = ", ".join(f"{k} {v}" for k, v in daemon["listening"].items() if v != daemon["socket"])
        lines.append(f"{name:<11} socket {daemon['socket']}; {listening}")
    first = cluster.peer_names[0] if cluster.peer_names else "seed-peer"
    lines += [
        f"logs        {cluster.workdir / 'logs'}",
        f"pki         {cluster.pki_dir} (a throwaway CA: mutual TLS on every port)",
        "",
        f"try: dfget -e {cluster.socket_path(first)} http://example.com/file -O /tmp/file",
    ]
    proxy = info["daemons"].get(first, {}).get("listening", {}).get("proxy")
    if proxy:
        lines.append(f"     dragonfly init containerd --proxy http://{proxy}   (pull images through {first}'s proxy)")
    lines.append("Ctrl-C stops the cluster.")
    print("\n".join(lines), flush=True)


def _wait_until_interrupted(cluster: LocalCluster, signals: _Signals) -> int:
    """Watch the processes until a signal arrives (0) or one of them exits (1)."""
    signals.raising = False
    while signals.received is None:
        dead = cluster.check_alive()
        if dead:
            for line in dead:
                _say(line)
            return 1
        time.sleep(0.2)
    _say("stopping")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``dragonfly up``."""
    parser = argparse.ArgumentParser(prog="dragonfly up", description=description(__doc__))
    parser.add_argument("--peers", type=int, default=3, help="number of normal peers (default 3)")
    parser.add_argument("--workdir", help="configs, logs and storage go here (default: a new temporary directory)")
    parser.add_argument("--demo", action="store_true", help="download a generated file on every peer, then stop")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--size", default="256MiB", help="demo file size (default 256MiB)")
    parser.add_argument("--timeout", default="10m", help="demo download timeout per peer (default 10m)")
    parser.add_argument(
        "--no-manager",
        action="store_true",
        help="run without a manager: the daemons are given the scheduler's address (scheduler.addrs)",
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS anywhere (security.enable: false), e.g. beside components without TLS; nothing is authenticated",
    )
    args = parse_args(parser, argv)
    try:
        size = parse_size(args.size)
        timeout = parse_duration(args.timeout)
    except ValueError as exc:
        parser.error(str(exc))
    if args.peers < 1:
        parser.error("--peers must be at least 1")

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="dragonfly-up-") if own_workdir else args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    signals = _Signals()
    signals.install()
    manager_config: dict[str, Any] = {}
    if not args.no_manager:
        # Known to the user (printed with the endpoints), so the console and the REST API can be tried at once.
        manager_config = {"auth": {"rootPassword": secrets.token_urlsafe(12)}}
    cluster = LocalCluster(
        workdir,
        peers=args.peers,
        tls=not args.plaintext,
        manager=not args.no_manager,
        manager_config=manager_config,
    )
    if args.plaintext:
        _say("--plaintext: every port speaks plaintext and no caller is authenticated")
    status = 1
    try:
        manager = "" if args.no_manager else "a manager, "
        _say(f"starting {manager}a scheduler, a seed peer and {args.peers} peers in {workdir}")
        cluster.start()
        _say("cluster ready")
        if args.demo:
            report = run_demo(cluster, workdir, size, timeout)
            print(json.dumps(report) if args.json else format_report(report), flush=True)
            status = 0 if report["ok"] else 1
        else:
            _print_endpoints(cluster, args.json, manager_config.get("auth", {}).get("rootPassword"))
            status = _wait_until_interrupted(cluster, signals)
    except ProcessStartError as exc:
        _say(f"error: {exc}")
    except (KeyboardInterrupt, _Stop):
        _say("stopping")
        status = 0 if not args.demo else 130
    finally:
        signals.raising = False
        cluster.stop()
    if own_workdir and status == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    elif status != 0:
        _say(f"logs kept in {workdir / 'logs'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
