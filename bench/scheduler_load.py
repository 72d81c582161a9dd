"""`python -m bench scheduler` (or `python -m bench.scheduler_load`): scheduler load from other processes.

A real scheduler process (`python -m dragonfly.cli.scheduler`) and ``--clients`` load-client processes, over gRPC:

0. the hosts announce (1,000 by default); one source peer per task registers, goes to the origin and reports every
   piece;
1. "register": 90 % of the peers register (``--register-concurrency`` in flight over all clients) and keep their
   streams open; each decision's latency is measured from the register message to the response (client side) and
   from the scheduler's histogram (server side);
2. "flood": those peers report all their pieces and finish (``--flood-streams`` at a time), as fast as the
   clients can send, while the last 10 % register a few at a time (decisions under load: the scheduler is
   saturated, so the client side includes the queue of piece messages ahead of each registration).

Piece reports/s = piece messages of phase 2 / its duration (until every stream was closed by the scheduler, so
every message was processed). Baseline in the same run: the same clients against a no-op AnnouncePeer server
(`--serve-baseline`: bare grpc.aio, answers each register with NeedBackToSource) — its rate is the ceiling the
transport and these clients allow. The scheduler's RSS is read when it is ready, after the hosts announced, after
phase 1 and at the end (every peer still held): RSS per host and per 1,000 peers are the differences.

``--scale 1000,10000`` runs the whole benchmark once per host count (peers = hosts × peers/host of
``--hosts``/``--peers``, a fresh scheduler each time) and reports how decision latency and RSS grow with the size.
Targets (``docs/benchmarks.md#targets``): ≥ 5,000 piece reports/s, decision p99 ≤ 10 ms at 10,000 hosts / 100,000
peers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import release_builds_missing

REPO = Path(__file__).resolve().parents[1]
TARGET_REPORTS_PER_SECOND = 5000.0
TARGET_P99_SECONDS = 0.010
# Every phase of a client ends within this (a lost client fails the run instead of hanging it).
PHASE_TIMEOUT_SECONDS = 1800.0
_LISTENING = re.compile(r"^dragonfly: (scheduler|baseline) listening on (\S+)$")
_METRICS = re.compile(r"^dragonfly: scheduler metrics listening on (\S+)$")
_BUCKET = re.compile(r'^dragonfly_scheduler_schedule_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)
_GC_BUCKET = re.compile(
    r'^dragonfly_scheduler_python_gc_pause_seconds_bucket\{generation="2",le="([^"]+)"\} (\S+)$', re.M
)
_GC_SUM = re.compile(r'^dragonfly_scheduler_python_gc_pause_seconds_sum\{generation="2"\} (\S+)$', re.M)


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


class Layout:
    """Which host and task every peer has; the same in every client process (client k plays indices ≡ k mod n).

    Task t's source peer is on host t; children never share a host with their task's source, so the source is
    always a candidate.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.hosts = args.hosts
        self.tasks = [f"{index:064x}" for index in range(max(args.peers // args.peers_per_task, 1))]
        self.first_child_host = min(len(self.tasks), self.hosts - 1)
        self.children = args.peers - len(self.tasks)
        self.late = self.children // 10

    def source_host(self, task: int) -> int:
        return task % self.hosts

    def child(self, index: int) -> tuple[str, int]:
        """Return the task id and host index of child ``index``."""
        child_hosts = self.hosts - self.first_child_host
        return self.tasks[index % len(self.tasks)], self.first_child_host + index % child_hosts


class Swarm:
    """One client process's share of the hosts, tasks and peers, over a few HTTP/2 connections."""

    def __init__(self, addr: str, args: argparse.Namespace, index: int = 0, count: int = 1) -> None:
        import grpc
        from dragonfly_api import scheduler_pb2_grpc

        self.args = args
        self.index, self.count = index, count
        self.layout = Layout(args)
        # Separate subchannel pools give separate TCP connections, as the Rust client's 10 pooled ones.
        self.channels = [
            grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(max(args.connections // count, 1))
        ]
        self.stubs = [scheduler_pb2_grpc.SchedulerStub(channel) for channel in self.channels]
        self.register_concurrency = max(args.register_concurrency // count, 1)
        self.flood_streams = max(args.flood_streams // count, 1)
        self._hosts: dict[int, Any] = {}
        self.early: list[PeerStream] = []
        self.late: list[PeerStream] = []
        self.messages = 0
        self.pieces = 0
        self.decisions: dict[str, int] = {}

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def mine(self, count: int) -> range:
        """Return the indices below ``count`` this client plays."""
        return range(self.index, count, self.count)

    def host(self, index: int) -> Any:
        from dragonfly_api import common_pb2

        host = self._hosts.get(index)
        if host is not None:
            return host
        ip = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
        host = self._hosts[index] = common_pb2.Host(
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
        return host

    def download(self, *, source: bool) -> Any:
        from dragonfly_api import common_pb2

        pieces = self.args.pieces
        download = common_pb2.Download(url="http://origin.bench/blob", need_back_to_source=source)
        download.actual_piece_length = 4 * 1024 * 1024
        download.actual_content_length = pieces * 4 * 1024 * 1024
        download.actual_piece_count = pieces
        download.concurrent_piece_count = 8
        return download

    def peer(self, index: int, task: str, host: int) -> PeerStream:
        return PeerStream(self, self.stubs[index % len(self.stubs)], task, self.host(host))

    # phases, run on the parent's command

    async def phase_announce(self) -> dict[str, Any]:
        from dragonfly_api import scheduler_pb2

        async def announce(index: int) -> None:
            request = scheduler_pb2.AnnounceHostRequest(host=self.host(index))
            request.interval.seconds = 300
            await self.stubs[index % len(self.stubs)].AnnounceHost(request, timeout=30)

        await bounded(64, [lambda i=i: announce(i) for i in self.mine(self.layout.hosts)])
        return {}

    async def phase_sources(self) -> dict[str, Any]:
        layout = self.layout
        sources = [self.peer(t, layout.tasks[t], layout.source_host(t)) for t in self.mine(len(layout.tasks))]
        await bounded(32, [lambda p=p: p.register(source=True) for p in sources])
        await bounded(32, [lambda p=p: p.download() for p in sources])
        return {"peers": len(sources)}

    async def phase_register(self) -> dict[str, Any]:
        layout = self.layout
        for index in self.mine(layout.children):
            peer = self.peer(index, *layout.child(index))
            (self.late if index >= layout.children - layout.late else self.early).append(peer)
        latencies = await bounded(self.register_concurrency, [lambda p=p: p.register() for p in self.early])
        return {"latencies": latencies}

    async def phase_flood(self) -> dict[str, Any]:
        async def late_peer(peer: PeerStream) -> float:
            latency = await peer.register()
            await peer.download()
            return latency

        self.pieces = self.messages = 0
        _, latencies = await asyncio.gather(
            bounded(self.flood_streams, [lambda p=p: p.download() for p in self.early]),
            bounded(self.register_concurrency, [lambda p=p: late_peer(p) for p in self.late]),
        )
        return {"latencies": latencies, "pieces": self.pieces, "messages": self.messages, "decisions": self.decisions}


class PeerStream:
    """One peer's AnnouncePeer stream."""

    def __init__(self, swarm: Swarm, stub: Any, task: str, host: Any) -> None:
        self.swarm = swarm
        self.task = task
        self.host = host
        self.id = f"{host.ip}-{host.hostname}-{uuid.uuid4()}"
        self._stub = stub
        # Opened on register: tens of thousands of idle calls opened up front would queue in grpc-core, which
        # cancels calls the server has not picked up in time.
        self.call: Any = None
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
        self.call = self._stub.AnnouncePeer()
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


# the load-client processes


def client_process(conn: Connection, addr: str, args: argparse.Namespace, index: int, count: int) -> None:
    """Entry point of load-client ``index`` of ``count``: run the phases the parent sends, answer with figures."""
    asyncio.run(_client_loop(conn, addr, args, index, count))


async def _client_loop(conn: Connection, addr: str, args: argparse.Namespace, index: int, count: int) -> None:
    swarm = Swarm(addr, args, index, count)
    try:
        while True:
            # Waiting on a thread keeps this loop serving the open streams meanwhile.
            command = await asyncio.to_thread(conn.recv)
            if command == "close":
                return
            try:
                result = await getattr(swarm, f"phase_{command}")()
            except Exception as exc:  # reported to the parent, which fails the run with it
                conn.send({"error": f"client {index}: {command}: {exc!r}"})
                return
            conn.send(result)
    finally:
        await swarm.close()
        conn.close()


class Clients:
    """``count`` load-client processes driven phase by phase; every phase waits for all of them."""

    def __init__(self, addr: str, args: argparse.Namespace, count: int) -> None:
        context = multiprocessing.get_context("spawn")  # no grpc state inherited through fork
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for index in range(count):
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=client_process, args=(child_end, addr, args, index, count), name=f"bench-client-{index}"
            )
            proc.start()
            child_end.close()
            self._conns.append(parent_end)
            self._procs.append(proc)

    def run(self, phase: str) -> list[dict[str, Any]]:
        """Run ``phase`` in every client at once; return their results, or raise the first client's error."""
        for conn in self._conns:
            conn.send(phase)
        results = []
        deadline = time.monotonic() + PHASE_TIMEOUT_SECONDS
        for conn in self._conns:
            if not conn.poll(max(deadline - time.monotonic(), 0)):
                raise TimeoutError(f"a load client did not finish phase {phase} within {PHASE_TIMEOUT_SECONDS} s")
            result: dict[str, Any] = conn.recv()
            if "error" in result:
                raise RuntimeError(result["error"])
            results.append(result)
        return results

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send("close")
            except OSError:
                pass  # that client has gone already
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()


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


def scrape(metrics_addr: str) -> str:
    """Return the scheduler's metrics text."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=30) as response:
        text: str = response.read().decode()
    return text


def scrape_histogram(metrics_addr: str) -> list[tuple[float, float]]:
    """Return the scheduler's cumulative decision-duration buckets [(upper bound, count)]."""
    return [(float(bound), float(count)) for bound, count in _BUCKET.findall(scrape(metrics_addr))]


def full_collections(text: str) -> dict[str, float]:
    """Return the scheduler's full garbage collections so far: count, total and longest pause (bucket bound)."""
    buckets = [(float(bound), float(count)) for bound, count in _GC_BUCKET.findall(text)]
    total = buckets[-1][1] if buckets else 0.0
    longest = next((bound for bound, count in buckets if count >= total), 0.0) if total else 0.0
    seconds = _GC_SUM.search(text)
    return {"count": total, "seconds": float(seconds.group(1)) if seconds else 0.0, "longest_le_s": longest}


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
        register_started = time.perf_counter()
        registered = clients.run("register")
        register_seconds = time.perf_counter() - register_started
        rss["registered"] = server.rss()
        after_register = scrape_histogram(metrics_addr) if metrics_addr else []

        flood_started = time.perf_counter()
        flooded = clients.run("flood")
        flood_seconds = time.perf_counter() - flood_started
        rss["end"] = server.rss()
        end_text = scrape(metrics_addr) if metrics_addr else ""
        after_flood = [(float(bound), float(count)) for bound, count in _BUCKET.findall(end_text)]
    finally:
        clients.close()
    decisions: dict[str, int] = {}
    for result in flooded:
        for kind, count in result["decisions"].items():
            decisions[kind] = decisions.get(kind, 0) + count
    pieces = sum(result["pieces"] for result in flooded)
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
        "decision_under_flood": quantiles([x for result in flooded for x in result["latencies"]]),
        "flood_seconds": flood_seconds,
        "piece_reports": pieces,
        "piece_reports_per_second": pieces / flood_seconds,
        "messages_per_second": sum(result["messages"] for result in flooded) / flood_seconds,
        "rss_mib": {stage: value / 2**20 for stage, value in rss.items()},
        "rss_kib_per_host": (rss["hosts"] - rss["ready"]) / 1024 / args.hosts,
        "rss_mib_per_1000_peers": (rss["end"] - rss["hosts"]) / 2**20 / peers * 1000,
    }
    if metrics_addr:
        figures["full_gc"] = full_collections(end_text)
        figures["server_decision_idle"] = {
            "p50_ms": histogram_quantile(before, after_register, 0.5),
            "p99_ms": histogram_quantile(before, after_register, 0.99),
        }
        figures["server_decision_under_flood"] = {
            "p50_ms": histogram_quantile(after_register, after_flood, 0.5),
            "p99_ms": histogram_quantile(after_register, after_flood, 0.99),
        }
    return figures


def scheduler_config(workdir: Path, gc_freeze: float = 0.0) -> Path:
    """Write the scheduler.yaml of the benchmark: loopback, metrics on, a cap that lets every source through.

    Plaintext on purpose: the benchmark plays 10,000 hosts from a few processes (each would need a certificate of
    its own with mTLS), and it measures the scheduling work against a no-op server that is plaintext too.
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
                **({"scheduler": {"gc": {"pythonGCFreezeInterval": f"{gc_freeze}s"}}} if gc_freeze else {}),
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
    config = scheduler_config(workdir, args.gc_freeze)
    command = [sys.executable, "-m", "dragonfly.cli.scheduler", "--config", str(config), "--log-level", "warning"]
    scheduler = ServerProcess(command, workdir / "scheduler.log")
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


def stage(figures: dict[str, Any] | None, first: str, second: str) -> str:
    """Return "a/b MiB" of two RSS stages, or "-"."""
    if not figures:
        return "-"
    rss = figures["rss_mib"]
    return f"{rss[first]:.0f}/{rss[second]:.0f} MiB"


def print_table(result: dict[str, Any], args: dict[str, Any]) -> None:
    ours, base = result["scheduler"], result.get("baseline")

    def baseline(key: str) -> str:
        return f"{base[key]:,.0f}" if base else "-"

    rss = ours["rss_mib"]
    gc = ours["full_gc"]
    rows = [
        ("piece reports/s", f"{ours['piece_reports_per_second']:,.0f}", baseline("piece_reports_per_second")),
        ("decision p50 (idle, client)", f"{ours['decision_idle']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (idle, client)", f"{ours['decision_idle']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (flood, client)", f"{ours['decision_under_flood']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (flood, client)", f"{ours['decision_under_flood']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (idle, server)", f"{ours['server_decision_idle']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (idle, server)", f"{ours['server_decision_idle']['p99_ms']:.2f} ms", "-"),
        ("decision p50 (flood, server)", f"{ours['server_decision_under_flood']['p50_ms']:.2f} ms", "-"),
        ("decision p99 (flood, server)", f"{ours['server_decision_under_flood']['p99_ms']:.2f} ms", "-"),
        ("RSS ready/hosts", f"{rss['ready']:.0f}/{rss['hosts']:.0f} MiB", stage(base, "ready", "hosts")),
        ("RSS registered/end", f"{rss['registered']:.0f}/{rss['end']:.0f} MiB", stage(base, "registered", "end")),
        ("RSS per host", f"{ours['rss_kib_per_host']:.1f} KiB", "-"),
        ("RSS per 1,000 peers", f"{ours['rss_mib_per_1000_peers']:.2f} MiB", "-"),
        ("full GCs: count / total", f"{gc['count']:.0f} / {gc['seconds']:.2f} s", "-"),
        ("longest full GC", f"<= {gc['longest_le_s']:g} s", "-"),
        ("exit after SIGTERM", f"{ours['exit_seconds']:.1f} s", "-"),
    ]
    print(
        f"scheduler load: {ours['hosts']} hosts, {ours['peers']} peers, {ours['tasks']} tasks, "
        f"{args['pieces']} pieces/peer, {args['clients']} client processes, {args['connections']} connections"
    )
    print(f"{'figure':<32}{'scheduler':>18}{'no-op baseline':>18}")
    for name, value, base_value in rows:
        print(f"{name:<32}{value:>18}{base_value:>18}")
    ratio = f"ratio to baseline: {result['ratio_to_baseline']:.2f}; " if "ratio_to_baseline" in result else ""
    print(f"{ratio}targets: >= {TARGET_REPORTS_PER_SECOND:,.0f} reports/s, p99 <= {TARGET_P99_SECONDS * 1000:.0f} ms")


def growth(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Return how the scheduler's figures grow from the smallest size to the largest."""
    small, large = sizes[0]["scheduler"], sizes[-1]["scheduler"]
    extra_hosts = (large["hosts"] - small["hosts"]) / 1000
    figures: dict[str, Any] = {"hosts": [small["hosts"], large["hosts"]]}
    for key in ("server_decision_idle", "server_decision_under_flood", "decision_idle", "decision_under_flood"):
        for quantile in ("p50_ms", "p99_ms"):
            a, b = small[key][quantile], large[key][quantile]
            figures[f"{key}.{quantile}"] = {
                "ratio": b / a if a else None,
                "us_per_1000_hosts": (b - a) * 1000 / extra_hosts if extra_hosts else None,
            }
    figures["rss_end_ratio"] = large["rss_mib"]["end"] / small["rss_mib"]["end"]
    return figures


def print_growth(sizes: list[dict[str, Any]], figures: dict[str, Any]) -> None:
    print()
    print("growth (largest size against the smallest, one run, side by side):")
    columns = "".join(f"{s['scheduler']['hosts']:>9,}/{s['scheduler']['peers']:<9,}" for s in sizes)
    print(f"{'hosts / peers':<18}{columns}{'ratio':>9}{'µs per 1k hosts':>17}")
    for key, label in (
        ("server_decision_idle", "server idle"),
        ("server_decision_under_flood", "server flood"),
        ("decision_idle", "client idle"),
        ("decision_under_flood", "client flood"),
    ):
        for quantile in ("p50_ms", "p99_ms"):
            grown = figures[f"{key}.{quantile}"]
            ratio = f"{grown['ratio']:.2f}" if grown["ratio"] is not None else "-"
            values = "".join(f"{s['scheduler'][key][quantile]:>16.2f} ms" for s in sizes)
            print(f"{label + ' ' + quantile[:3]:<18}{values}{ratio:>9}{grown['us_per_1000_hosts']:>17.1f}")
    if all("baseline" in s for s in sizes):
        print(f"{'no-op RSS end MiB':<18}" + "".join(f"{s['baseline']['rss_mib']['end']:>19,.2f}" for s in sizes))
    for label, pick in (
        ("full GCs", lambda s: s["full_gc"]["count"]),
        ("full GC seconds", lambda s: s["full_gc"]["seconds"]),
        ("RSS end MiB", lambda s: s["rss_mib"]["end"]),
        ("RSS/1k peers MiB", lambda s: s["rss_mib_per_1000_peers"]),
        ("RSS/host KiB", lambda s: s["rss_kib_per_host"]),
        ("piece reports/s", lambda s: s["piece_reports_per_second"]),
    ):
        print(f"{label:<18}" + "".join(f"{pick(s['scheduler']):>19,.2f}" for s in sizes))


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
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-op server runs")
    parser.add_argument(
        "--gc-freeze", type=float, default=0.0, help="the scheduler's scheduler.gc.pythonGCFreezeInterval (seconds)"
    )
    parser.add_argument("--profile", help="py-spy the scheduler into this speedscope file ({hosts} is replaced)")
    parser.add_argument("--quick", action="store_true", help="2,000 peers and 8 pieces (same 1,000 hosts)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline:
        return asyncio.run(serve_baseline())
    if args.quick:
        args.peers, args.pieces = 2000, 8
    if args.hosts < 2 or args.peers < 2 * max(args.peers // args.peers_per_task, 1) or args.clients < 1:
        parser.error("need >= 2 hosts, more children than tasks, and >= 1 client")
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
