"""`python -m bench scheduler` (or `python -m bench.scheduler_load`): scheduler load from other processes.

A real scheduler process (`python -m dragonfly.cli.scheduler`), ``--clients`` bulk load-client processes and one
probe process, over gRPC:

0. the hosts announce (1,000 by default); one source peer per task registers, goes to the origin and reports every
   piece;
1. "register": 90 % of the peers register (``--register-concurrency`` in flight over all clients) and keep their
   streams open; each decision's latency is measured from the register message to the response (client side) and
   from the scheduler's histogram (server side); with tens of thousands of streams per bulk client, the client side
   also holds that client's own queueing and collections;
1b. "probe": the probe process registers ``--probe-peers`` peers one at a time (spread over ``--churn`` seconds,
   back to back without churn) and times each decision from the register message to the response, with nothing
   else in flight in that process and its cyclic collector off: the decision latency as a client sees it, without
   the load generator's own queueing. Meanwhile, with ``--churn``, the bulk clients churn ``--churn-rate`` new
   peers a second (register, report every piece, finish, DeletePeer), so the scheduler allocates and frees peers
   at a steady pace for that long (RSS before and after, full collections during it);
2. "flood": those peers report all their pieces and finish (``--flood-streams`` at a time), as fast as the
   clients can send, while the last 10 % register a few at a time (decisions under load: the scheduler is
   saturated, so the client side includes the queue of piece messages ahead of each registration).

Piece reports/s = piece messages of phase 2 / its duration (until every stream was closed by the scheduler, so
every message was processed). Baseline in the same run: the same clients against a no-op AnnouncePeer server
(`--serve-baseline`: bare grpc.aio, answers each register with NeedBackToSource) — its rate is the ceiling the
transport and these clients allow; its probe latency is the floor of the transport and this machine. The
scheduler's RSS is read when it is ready, after the hosts announced, after phases 1 and 1b and at the end (every
peer still held): RSS per host and per 1,000 peers are the differences.

``--scale 1000,10000`` runs the whole benchmark once per host count (peers = hosts × peers/host of
``--hosts``/``--peers``, a fresh scheduler each time) and reports how decision latency and RSS grow with the size.
Targets (``docs/benchmarks.md#targets``): ≥ 5,000 piece reports/s, decision p99 ≤ 10 ms at 10,000 hosts / 100,000
peers.

This module runs the servers and the phases; the load clients are in ``bench/scheduler_clients.py``, the simulated
hosts, tasks and peers in ``bench/scheduler_layout.py``, the figures and tables in ``bench/scheduler_report.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import release_builds_missing
from bench.scheduler_clients import Clients
from bench.scheduler_layout import Layout
from bench.scheduler_report import (
    collected_objects,
    decision_buckets,
    full_collections,
    growth,
    histogram_quantile,
    print_growth,
    print_table,
    quantiles,
    scrape,
    scrape_histogram,
)

REPO = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"^dragonfly: (scheduler|baseline) listening on (\S+)$")
_METRICS = re.compile(r"^dragonfly: scheduler metrics listening on (\S+)$")


# servers under test


class ServerProcess:
    """A server subprocess that prints its address and a ready line."""

    def __init__(self, command: list[str], log: Path, root: Path = REPO) -> None:
        self._command = command
        # The checkout the server's code is imported from (``--scheduler-checkout``).
        self._root = root
        self._log_path = log
        self.addr = ""
        self.metrics_addr = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._log = self._log_path.open("w")
        env = {**os.environ, "PYTHONPATH": str(self._root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            self._command, cwd=self._root, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self._command[2]} exited early: {self._log_path.read_text()[-2000:]}")
            line = line.strip()
            if match := _LISTENING.match(line):
                self.addr = match.group(2)
            elif match := _METRICS.match(line):
                self.metrics_addr = match.group(1)
            elif line.endswith(" ready"):
                return
        raise TimeoutError(f"{self._command} did not become ready within {timeout} s")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return code

    def rss(self) -> int:
        import psutil

        assert self.proc is not None
        return psutil.Process(self.proc.pid).memory_info().rss

    def cpu(self) -> float:
        """Return the CPU seconds (user + system, every thread) the server process used so far."""
        import psutil

        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system


async def serve_baseline() -> int:
    """Run the no-op AnnouncePeer server (the transport baseline) until SIGTERM."""
    import grpc
    from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
    from google.protobuf import empty_pb2

    class Noop(scheduler_pb2_grpc.SchedulerServicer):  # type: ignore[misc]
        async def AnnounceHost(self, request: Any, context: Any) -> Any:
            return empty_pb2.Empty()

        async def DeletePeer(self, request: Any, context: Any) -> Any:
            return empty_pb2.Empty()

        async def AnnouncePeer(self, requests: Any, context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                kind = request.WhichOneof("request")
                if kind == "register_peer_request":
                    yield scheduler_pb2.AnnouncePeerResponse(
                        need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse()
                    )
                elif kind in ("download_peer_finished_request", "download_peer_back_to_source_finished_request"):
                    return

    # The same pending-call limits as the scheduler's server (see dragonfly/scheduler/server.py).
    server = grpc.aio.server(
        options=[
            ("grpc.server.max_pending_requests", 100_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
        ]
    )
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"dragonfly: baseline listening on 127.0.0.1:{port}", flush=True)
    print("dragonfly: baseline ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    return 0


def drive(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    """Run phases 0-2 against one server with ``args.clients`` load clients; return the figures."""
    metrics_addr = server.metrics_addr or None
    rss = {"ready": server.rss()}
    clients = Clients(server.addr, args, args.clients)
    try:
        clients.run("announce")
        rss["hosts"] = server.rss()
        sources = sum(result["peers"] for result in clients.run("sources"))

        before = scrape_histogram(metrics_addr) if metrics_addr else []
        cpu = {"register": server.cpu()}
        register_started = time.perf_counter()
        registered = clients.run("register")
        register_seconds = time.perf_counter() - register_started
        cpu["registered"] = server.cpu()
        rss["registered"] = server.rss()
        register_text = scrape(metrics_addr) if metrics_addr else ""
        after_register = decision_buckets(register_text)

        probe_started = time.perf_counter()
        probed = clients.run("probe")
        probe_seconds = time.perf_counter() - probe_started
        rss["probed"] = server.rss()
        probe_text = scrape(metrics_addr) if metrics_addr else ""
        after_probe = decision_buckets(probe_text)

        cpu["trickle"] = server.cpu()
        trickle_started = time.perf_counter()
        trickled = sum(result["messages"] for result in clients.run("trickle"))
        # The last messages sent are read by now: the scheduler answers each stream's messages in order, and the
        # flood's own CPU starts with its first message.
        trickle_seconds = time.perf_counter() - trickle_started
        cpu["flood"] = server.cpu()
        flood_started = time.perf_counter()
        flooded = clients.run("flood")
        flood_seconds = time.perf_counter() - flood_started
        cpu["end"] = server.cpu()
        rss["end"] = server.rss()
        end_text = scrape(metrics_addr) if metrics_addr else ""
        after_flood = decision_buckets(end_text)
    finally:
        clients.close()
    decisions: dict[str, int] = {}
    for result in flooded:
        for kind, count in result["decisions"].items():
            decisions[kind] = decisions.get(kind, 0) + count
    pieces = sum(result["pieces"] for result in flooded)
    messages = sum(result["messages"] for result in flooded)
    registrations = sum(len(result["latencies"]) for result in registered)
    peers = args.peers
    figures: dict[str, Any] = {
        "hosts": args.hosts,
        "peers": peers,
        "sources": sources,
        "tasks": len(Layout(args).tasks),
        "clients": args.clients,
        "decisions": decisions,
        "register_seconds": register_seconds,
        "decision_idle": quantiles([x for result in registered for x in result["latencies"]]),
        "decision_probe": quantiles(probed[-1]["latencies"]),
        "probe_seconds": probe_seconds,
        "churned_peers": sum(result["churned"] for result in probed),
        "decision_churn": quantiles([x for result in probed[:-1] for x in result["latencies"]]),
        "decision_under_flood": quantiles([x for result in flooded for x in result["latencies"]]),
        "flood_seconds": flood_seconds,
        "piece_reports": pieces,
        "piece_reports_per_second": pieces / flood_seconds,
        "messages_per_second": messages / flood_seconds,
        # CPU the server process spent (every thread: the event loop, grpc's poller and executor): a count of work
        # per message that, unlike the rates, does not depend on how busy the machine is.
        "cpu_seconds": {"register": cpu["registered"] - cpu["register"], "flood": cpu["end"] - cpu["flood"]},
        "cpu_ms_per_registration": (cpu["registered"] - cpu["register"]) * 1000 / max(registrations, 1),
        "cpu_us_per_flood_message": (cpu["end"] - cpu["flood"]) * 1e6 / max(messages, 1),
        "trickle_messages": trickled,
        "trickle_seconds": trickle_seconds,
        "cpu_us_per_trickle_message": (cpu["flood"] - cpu["trickle"]) * 1e6 / trickled if trickled else None,
        "rss_mib": {stage: value / 2**20 for stage, value in rss.items()},
        "rss_kib_per_host": (rss["hosts"] - rss["ready"]) / 1024 / args.hosts,
        "rss_mib_per_1000_peers": (rss["end"] - rss["hosts"]) / 2**20 / peers * 1000,
    }
    if metrics_addr:
        figures["full_gc"] = full_collections(end_text)
        during_probe = (full_collections(register_text), full_collections(probe_text))
        figures["full_gc_probe"] = {key: during_probe[1][key] - during_probe[0][key] for key in ("count", "seconds")}
        collected = (collected_objects(register_text), collected_objects(probe_text))
        figures["gc_collected_probe"] = [after - before for before, after in zip(*collected, strict=True)]
        figures["server_decision_probe"] = {
            "p50_ms": histogram_quantile(after_register, after_probe, 0.5),
            "p99_ms": histogram_quantile(after_register, after_probe, 0.99),
        }
        figures["server_decision_idle"] = {
            "p50_ms": histogram_quantile(before, after_register, 0.5),
            "p99_ms": histogram_quantile(before, after_register, 0.99),
        }
        figures["server_decision_under_flood"] = {
            "p50_ms": histogram_quantile(after_probe, after_flood, 0.5),
            "p99_ms": histogram_quantile(after_probe, after_flood, 0.99),
        }
    return figures


def scheduler_config(workdir: Path, gc_freeze: float | None = None, gc_full_interval: float | None = None) -> Path:
    """Write the scheduler.yaml of the benchmark: loopback, metrics on, a cap that lets every source through.

    Plaintext on purpose: the benchmark plays 10,000 hosts from a few processes (each would need a certificate of
    its own with mTLS), and it measures the scheduling work against a no-op server that is plaintext too.
    """
    import yaml

    python_gc = {}
    if gc_freeze is not None:
        python_gc["pythonGCFreezeInterval"] = f"{gc_freeze}s"
    if gc_full_interval is not None:
        python_gc["pythonGCFullCollectInterval"] = f"{gc_full_interval}s"
    path = workdir / "scheduler.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "metrics": {"enable": True, "host": "127.0.0.1", "port": 0},
                "seedPeer": {"enable": False},
                "security": {"enable": False},
                **({"scheduler": {"gc": python_gc}} if python_gc else {}),
            }
        )
    )
    return path


def run_size(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the baseline (unless ``--no-baseline``) and the scheduler at ``args.hosts`` / ``args.peers``."""
    result: dict[str, Any] = {}
    if not args.no_baseline:
        baseline = ServerProcess(
            [sys.executable, "-m", "bench.scheduler_load", "--serve-baseline"], workdir / "baseline.log"
        )
        try:
            baseline.start()
            result["baseline"] = drive(baseline, args)
        finally:
            baseline.stop()
    config = scheduler_config(workdir, args.gc_freeze, args.gc_full_interval)
    command = [sys.executable, "-m", "dragonfly.cli.scheduler", "--config", str(config), "--log-level", "warning"]
    root = Path(args.scheduler_checkout).resolve() if args.scheduler_checkout else REPO
    scheduler = ServerProcess(command, workdir / "scheduler.log", root)
    profiler: subprocess.Popen[bytes] | None = None
    try:
        scheduler.start()
        if args.profile:
            assert scheduler.proc is not None
            output = args.profile.replace("{hosts}", str(args.hosts))
            profiler = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(scheduler.proc.pid),
                 "--rate", "200", "--format", "speedscope", "--output", output],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        result["scheduler"] = drive(scheduler, args)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                profiler.wait(timeout=120)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait()
        # Holding 100,000 peers, the interpreter's exit alone took over 30 s on the loaded machine: timed, not failed.
        stopping = time.perf_counter()
        code = scheduler.stop(timeout=300)
        if "scheduler" in result:
            result["scheduler"]["exit_seconds"] = time.perf_counter() - stopping
    if code != 0:
        raise RuntimeError(f"the scheduler exited with {code}; log in {workdir}")
    if "baseline" in result:
        result["ratio_to_baseline"] = (
            result["scheduler"]["piece_reports_per_second"] / result["baseline"]["piece_reports_per_second"]
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when it ran fully (targets are reported, not enforced)."""
    parser = argparse.ArgumentParser(prog="python -m bench scheduler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--peers-per-task", type=int, default=100)
    parser.add_argument("--pieces", type=int, default=16, help="pieces per task (4 MiB each, reported, not moved)")
    parser.add_argument("--clients", type=int, default=3, help="load-client processes")
    parser.add_argument("--connections", type=int, default=10, help="HTTP/2 connections over all clients (Rust: 10)")
    parser.add_argument("--register-concurrency", type=int, default=4, help="registrations in flight, all clients")
    parser.add_argument(
        "--flood-streams",
        type=int,
        default=1000,
        help="streams reporting at once in the flood, all clients (all of them at once starve new calls, which "
        "grpc-core cancels after 30 s unrequested)",
    )
    parser.add_argument(
        "--scale",
        help="comma-separated host counts, e.g. 1000,10000: one run per count, peers scaled with hosts, growth table",
    )
    parser.add_argument(
        "--probe-peers",
        type=int,
        default=1000,
        help="peers the probe process registers one at a time after phase 1 (at most half the early ones)",
    )
    parser.add_argument(
        "--churn", type=float, default=0.0, help="seconds of churn while the probe runs (0: the probe alone)"
    )
    parser.add_argument("--churn-rate", type=float, default=100.0, help="new peers a second during the churn")
    parser.add_argument(
        "--churn-concurrency", type=int, default=64, help="churning peers in flight at most, all clients"
    )
    parser.add_argument(
        "--trickle-rate",
        type=float,
        default=0.0,
        help="before the flood, piece reports a second (all clients) for --trickle-seconds: the scheduler's CPU per "
        "message at a swarm's pace (0: skip)",
    )
    parser.add_argument("--trickle-seconds", type=float, default=5.0, help="length of the trickle")
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-op server runs")
    parser.add_argument(
        "--gc-freeze",
        type=float,
        help="the scheduler's scheduler.gc.pythonGCFreezeInterval in seconds, 0: off (default: the scheduler's)",
    )
    parser.add_argument(
        "--gc-full-interval",
        type=float,
        help="the scheduler's scheduler.gc.pythonGCFullCollectInterval in seconds (default: the scheduler's)",
    )
    parser.add_argument("--profile", help="py-spy the scheduler into this speedscope file ({hosts} is replaced)")
    parser.add_argument(
        "--scheduler-checkout",
        help="run the scheduler from this checkout's dragonfly package (e.g. a worktree at the baseline commit, "
        "sharing this venv and its native extensions), to alternate old and new code with the same clients",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 peers and 8 pieces (same 1,000 hosts)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        return asyncio.run(serve_baseline())
    if args.quick:
        args.peers, args.pieces, args.probe_peers = 2000, 8, 200
    if args.hosts < 2 or args.peers < 2 * max(args.peers // args.peers_per_task, 1) or args.clients < 1:
        parser.error("need >= 2 hosts, more children than tasks, and >= 1 client")
    if args.probe_peers < 1 or args.churn < 0 or args.churn_rate <= 0 or args.churn_concurrency < 1:
        parser.error("need --probe-peers >= 1, --churn >= 0, --churn-rate > 0 and --churn-concurrency >= 1")
    sizes = [int(size) for size in args.scale.split(",")] if args.scale else [args.hosts]
    from dragonfly.common import native

    if release_builds_missing("bench scheduler"):
        return 2
    peers_per_host = args.peers / args.hosts
    results: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="dfbench-scheduler-"))
    try:
        for hosts in sizes:
            sized = argparse.Namespace(**{**vars(args), "hosts": hosts, "peers": round(hosts * peers_per_host)})
            results.append({"args": vars(sized), **run_size(sized, workdir)})
    except (RuntimeError, TimeoutError) as exc:
        print(f"bench scheduler: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    native_profile = ",".join(sorted(set(native.build_profiles().values())))
    report: dict[str, Any] = {"native": native_profile, "sizes": results}
    if len(results) > 1:
        report["growth"] = growth(results)
    if args.json:
        print(json.dumps(report))
        return 0
    for result in results:
        print_table(result, result["args"])
    if "growth" in report:
        print_growth(results, report["growth"])
    print(f"native: {native_profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
