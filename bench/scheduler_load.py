"""`python -m bench scheduler` (or `python -m bench.scheduler_load`): scheduler load from another process.

A real scheduler process (`python -m dragonfly.cli.scheduler`) and this process as the client, over gRPC:

0. 1,000 hosts announce; one source peer per task registers, goes to the origin and reports every piece;
1. "register": 90 % of the peers register (a few at a time) and keep their streams open; each decision's
   latency is measured from the register message to the response (client side) and from the scheduler's
   histogram (server side);
2. "flood": those peers report all their pieces and finish, as fast as the client can send, while the last
   10 % register a few at a time (decisions under load).

Piece reports/s = piece messages of phase 2 / its duration (until every stream was closed by the scheduler, so
every message was processed). Baseline in the same run: the same client against a no-op AnnouncePeer server
(`--serve-baseline`: bare grpc.aio, answers each register with NeedBackToSource) — its rate is the ceiling the
transport and this client allow. Targets (``docs/benchmarks.md#targets``): ≥ 5,000 piece reports/s, decision p99 ≤ 10
ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import release_builds_missing

REPO = Path(__file__).resolve().parents[1]
TARGET_REPORTS_PER_SECOND = 5000.0
TARGET_P99_SECONDS = 0.010
_LISTENING = re.compile(r"^dragonfly: (scheduler|baseline) listening on (\S+)$")
_METRICS = re.compile(r"^dragonfly: scheduler metrics listening on (\S+)$")
_BUCKET = re.compile(r'^dragonfly_scheduler_schedule_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)


# servers under test


class ServerProcess:
    """A server subprocess that prints its address and a ready line."""

    def __init__(self, command: list[str], log: Path) -> None:
        self._command = command
        self._log_path = log
        self.addr = ""
        self.metrics_addr = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._log = self._log_path.open("w")
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            self._command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
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

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
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


async def serve_baseline() -> int:
    """Run the no-op AnnouncePeer server (the transport baseline) until SIGTERM."""
    import grpc
    from dragonfly_api import scheduler_pb2, scheduler_pb2_grpc
    from google.protobuf import empty_pb2

    class Noop(scheduler_pb2_grpc.SchedulerServicer):  # type: ignore[misc]
        async def AnnounceHost(self, request: Any, context: Any) -> Any:
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


# the simulated swarm


class Swarm:
    """Hosts, tasks and peers simulated over a few HTTP/2 connections."""

    def __init__(self, addr: str, args: argparse.Namespace) -> None:
        import grpc
        from dragonfly_api import scheduler_pb2_grpc

        self.args = args
        # Separate subchannel pools give separate TCP connections, as the Rust client's 10 pooled ones.
        self.channels = [
            grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(args.connections)
        ]
        self.stubs = [scheduler_pb2_grpc.SchedulerStub(channel) for channel in self.channels]
        self.tasks = [f"{index:064x}" for index in range(max(args.peers // args.peers_per_task, 1))]
        self.hosts: list[Any] = []
        self.messages = 0
        self.pieces = 0
        self.decisions: dict[str, int] = {}

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def host(self, index: int) -> Any:
        from dragonfly_api import common_pb2

        ip = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
        return common_pb2.Host(
            id=f"{ip}-host-{index}",
            type=0,
            hostname=f"host-{index}",
            ip=ip,
            port=4000,
            download_port=4000,
            network=common_pb2.Network(
                idc=f"idc-{index % 4}",
                location=f"region-{index % 2}|zone-{index % 8}",
                max_tx_bandwidth=10_000_000_000,
                max_rx_bandwidth=10_000_000_000,
            ),
        )

    def download(self, *, source: bool) -> Any:
        from dragonfly_api import common_pb2

        pieces = self.args.pieces
        download = common_pb2.Download(url="http://origin.bench/blob", need_back_to_source=source)
        download.actual_piece_length = 4 * 1024 * 1024
        download.actual_content_length = pieces * 4 * 1024 * 1024
        download.actual_piece_count = pieces
        download.concurrent_piece_count = 8
        return download

    async def announce_hosts(self) -> None:
        from dragonfly_api import scheduler_pb2

        self.hosts = [self.host(index) for index in range(self.args.hosts)]

        async def announce(index: int) -> None:
            request = scheduler_pb2.AnnounceHostRequest(host=self.hosts[index])
            request.interval.seconds = 300
            await self.stubs[index % len(self.stubs)].AnnounceHost(request, timeout=30)

        await bounded(64, [lambda i=i: announce(i) for i in range(len(self.hosts))])

    def peer(self, index: int, task: str, host: Any) -> PeerStream:
        return PeerStream(self, self.stubs[index % len(self.stubs)], task, host)


class PeerStream:
    """One peer's AnnouncePeer stream."""

    def __init__(self, swarm: Swarm, stub: Any, task: str, host: Any) -> None:
        self.swarm = swarm
        self.task = task
        self.host = host
        self.id = f"{host.ip}-{host.hostname}-{uuid.uuid4()}"
        self.call = stub.AnnouncePeer()
        self.parents: list[str] = []
        self.back_to_source = False

    def _request(self, **kwargs: Any) -> Any:
        from dragonfly_api import scheduler_pb2

        return scheduler_pb2.AnnouncePeerRequest(host_id=self.host.id, task_id=self.task, peer_id=self.id, **kwargs)

    async def register(self, *, source: bool = False) -> float:
        """Register and wait for the decision; return its latency in seconds."""
        from dragonfly_api import scheduler_pb2

        request = self._request(
            register_peer_request=scheduler_pb2.RegisterPeerRequest(download=self.swarm.download(source=source))
        )
        started = time.perf_counter()
        try:
            await self.call.write(request)
        except asyncio.InvalidStateError:
            raise RuntimeError(
                f"peer {self.id}: stream ended: {await self.call.code()} {await self.call.details()}"
            ) from None
        response = await self.call.read()
        latency = time.perf_counter() - started
        kind = response.WhichOneof("response")
        self.swarm.decisions[kind] = self.swarm.decisions.get(kind, 0) + 1
        self.parents = [parent.id for parent in response.normal_task_response.candidate_parents]
        self.back_to_source = not self.parents
        return latency

    async def download(self) -> None:
        """Report every piece (from the given parents, or the origin) and finish; wait for the stream's end."""
        import grpc
        from dragonfly_api import common_pb2, scheduler_pb2
        from google.protobuf import duration_pb2, timestamp_pb2

        swarm = self.swarm
        write = self.call.write
        if self.back_to_source:
            await write(
                self._request(
                    download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
                )
            )
        else:
            await write(self._request(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest()))
        length = 4 * 1024 * 1024
        created_at = timestamp_pb2.Timestamp(seconds=int(time.time()))  # required by Dragonfly's rules, as cost is
        for number in range(swarm.args.pieces):
            piece = common_pb2.Piece(
                number=number,
                offset=number * length,
                length=length,
                digest=f"crc32:{number}",
                cost=duration_pb2.Duration(nanos=10_000_000 + number * 100_000),
                created_at=created_at,
            )
            if self.back_to_source:
                piece.traffic_type = common_pb2.BACK_TO_SOURCE
                request = self._request(
                    download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                        piece=piece
                    )
                )
            else:
                piece.parent_id = self.parents[number % len(self.parents)]
                piece.traffic_type = common_pb2.REMOTE_PEER
                request = self._request(
                    download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece)
                )
            await write(request)
        if self.back_to_source:
            finished = self._request(
                download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
            )
        else:
            finished = self._request(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())
        await write(finished)
        if await self.call.read() is not grpc.aio.EOF:
            raise RuntimeError(f"peer {self.id}: unexpected response after finishing")
        code = await self.call.code()
        if code != grpc.StatusCode.OK:
            raise RuntimeError(f"peer {self.id}: stream ended with {code}: {await self.call.details()}")
        swarm.pieces += swarm.args.pieces
        swarm.messages += swarm.args.pieces + 2


async def bounded(limit: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the jobs with at most ``limit`` in flight; return their results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


def quantiles(samples: list[float]) -> dict[str, float]:
    """Return p50/p99/max in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "count": 0}
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": ordered[-1] * 1000,
        "count": len(ordered),
    }


async def scrape_histogram(metrics_addr: str) -> list[tuple[float, float]]:
    """Return the scheduler's cumulative decision-duration buckets [(upper bound, count)]."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"http://{metrics_addr}/metrics") as response:
        text = await response.text()
    return [(float(bound), float(count)) for bound, count in _BUCKET.findall(text)]


def histogram_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    """Return the q-quantile (ms) of the observations between two scrapes, interpolated within its bucket."""
    buckets = [(bound, a - b) for (bound, a), (_, b) in zip(after, before, strict=True)]
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return 0.0
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound * 1000
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return (lower_bound + (bound - lower_bound) * share) * 1000
        lower_bound, lower_count = bound, count
    return lower_bound * 1000


async def drive(addr: str, metrics_addr: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Run phases 0-2 against one server; return the figures."""
    swarm = Swarm(addr, args)
    try:
        await swarm.announce_hosts()
        sources = [swarm.peer(i, task, swarm.hosts[i % len(swarm.hosts)]) for i, task in enumerate(swarm.tasks)]
        await bounded(32, [lambda p=p: p.register(source=True) for p in sources])
        await bounded(32, [lambda p=p: p.download() for p in sources])

        # Children never share a host with their task's source, so the source is always a candidate.
        first_child_host = min(len(swarm.tasks), len(swarm.hosts) - 1)
        child_hosts = swarm.hosts[first_child_host:]
        children = args.peers - len(sources)
        peers = [
            swarm.peer(i, swarm.tasks[i % len(swarm.tasks)], child_hosts[i % len(child_hosts)]) for i in range(children)
        ]
        late_count = children // 10
        early, late = peers[: children - late_count], peers[children - late_count :]

        before = await scrape_histogram(metrics_addr) if metrics_addr else []
        register_started = time.perf_counter()
        idle_latencies = await bounded(args.register_concurrency, [lambda p=p: p.register() for p in early])
        register_seconds = time.perf_counter() - register_started
        after_register = await scrape_histogram(metrics_addr) if metrics_addr else []

        async def late_peer(peer: PeerStream) -> float:
            latency = await peer.register()
            await peer.download()
            return latency

        swarm.pieces = swarm.messages = 0
        flood_started = time.perf_counter()
        results = await asyncio.gather(
            bounded(len(early), [lambda p=p: p.download() for p in early]),
            bounded(args.register_concurrency, [lambda p=p: late_peer(p) for p in late]),
        )
        flood_seconds = time.perf_counter() - flood_started
        loaded_latencies = results[1]
        after_flood = await scrape_histogram(metrics_addr) if metrics_addr else []
    finally:
        await swarm.close()
    figures: dict[str, Any] = {
        "hosts": len(swarm.hosts),
        "peers": len(sources) + len(peers),
        "tasks": len(swarm.tasks),
        "decisions": swarm.decisions,
        "register_seconds": register_seconds,
        "decision_idle": quantiles(idle_latencies),
        "decision_under_flood": quantiles(loaded_latencies),
        "flood_seconds": flood_seconds,
        "piece_reports": swarm.pieces,
        "piece_reports_per_second": swarm.pieces / flood_seconds,
        "messages_per_second": swarm.messages / flood_seconds,
    }
    if metrics_addr:
        figures["server_decision_idle"] = {
            "p50_ms": histogram_quantile(before, after_register, 0.5),
            "p99_ms": histogram_quantile(before, after_register, 0.99),
        }
        figures["server_decision_under_flood"] = {
            "p50_ms": histogram_quantile(after_register, after_flood, 0.5),
            "p99_ms": histogram_quantile(after_register, after_flood, 0.99),
        }
    return figures


def scheduler_config(workdir: Path) -> Path:
    """Write the scheduler.yaml of the benchmark: loopback, metrics on, a cap that lets every source through.

    Plaintext on purpose: the benchmark plays 10,000 hosts from one process (each would need a certificate of its
    own with mTLS), and it measures the scheduling work against a no-op server that is plaintext too.
    """
    import yaml

    path = workdir / "scheduler.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "metrics": {"enable": True, "host": "127.0.0.1", "port": 0},
                "seedPeer": {"enable": False},
                "security": {"enable": False},
            }
        )
    )
    return path


def print_table(result: dict[str, Any]) -> None:
    ours, base = result["scheduler"], result["baseline"]
    rows = [
        ("piece reports/s", f"{ours['piece_reports_per_second']:,.0f}", f"{base['piece_reports_per_second']:,.0f}"),
        ("decision p50 (idle, client)", f"{ours['decision_idle']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (idle, client)", f"{ours['decision_idle']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (flood, client)", f"{ours['decision_under_flood']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (flood, client)", f"{ours['decision_under_flood']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (idle, server)", f"{ours['server_decision_idle']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (idle, server)", f"{ours['server_decision_idle']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (flood, server)", f"{ours['server_decision_under_flood']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (flood, server)", f"{ours['server_decision_under_flood']['p99_ms']:.2f} ms", "-"),
        ("scheduler RSS after", f"{ours['rss_mib']:.0f} MiB", "-"),
    ]
    print(
        f"scheduler load: {ours['hosts']} hosts, {ours['peers']} peers, {ours['tasks']} tasks, "
        f"{result['args']['pieces']} pieces/peer, {result['args']['connections']} connections; "
        f"native: {result['native']}"
    )
    print(f"{'figure':<32}{'scheduler':>16}{'no-op baseline':>18}")
    for name, value, baseline in rows:
        print(f"{name:<32}{value:>16}{baseline:>18}")
    print(
        f"ratio to baseline: {result['ratio_to_baseline']:.2f}; "
        f"targets: >= {TARGET_REPORTS_PER_SECOND:,.0f} reports/s, p99 <= {TARGET_P99_SECONDS * 1000:.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when it ran fully (targets are reported, not enforced)."""
    parser = argparse.ArgumentParser(prog="python -m bench scheduler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--peers-per-task", type=int, default=100)
    parser.add_argument("--pieces", type=int, default=16, help="pieces per task (4 MiB each, reported, not moved)")
    parser.add_argument("--connections", type=int, default=10, help="HTTP/2 connections (Rust client: 10)")
    parser.add_argument("--register-concurrency", type=int, default=4, help="registrations in flight")
    parser.add_argument("--quick", action="store_true", help="2,000 peers and 8 pieces (same 1,000 hosts)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        return asyncio.run(serve_baseline())
    if args.quick:
        args.peers, args.pieces = 2000, 8
    from dragonfly.common import native

    if release_builds_missing("bench scheduler"):
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="dfbench-scheduler-"))
    scheduler = ServerProcess(
        [sys.executable, "-m", "dragonfly.cli.scheduler", "--config", str(scheduler_config(workdir)),
         "--log-level", "warning"],
        workdir / "scheduler.log",
    )  # fmt: skip
    baseline = ServerProcess(
        [sys.executable, "-m", "bench.scheduler_load", "--serve-baseline"], workdir / "baseline.log"
    )
    result: dict[str, Any] = {"args": vars(args), "native": ",".join(sorted(set(native.build_profiles().values())))}
    try:
        baseline.start()
        result["baseline"] = asyncio.run(drive(baseline.addr, None, args))
        baseline.stop()
        scheduler.start()
        result["scheduler"] = asyncio.run(drive(scheduler.addr, scheduler.metrics_addr, args))
        result["scheduler"]["rss_mib"] = scheduler.rss() / 2**20
    finally:
        baseline.stop()
        code = scheduler.stop()
    if code != 0:
        print(f"bench scheduler: the scheduler exited with {code}; log in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    result["ratio_to_baseline"] = (
        result["scheduler"]["piece_reports_per_second"] / result["baseline"]["piece_reports_per_second"]
    )
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
