"""bench scheduler's load clients: processes that each play a share of the peers over gRPC, phase by phase."""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import time
import uuid
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from bench.scheduler_layout import Layout, download_message, host_message

# Every phase of a client ends within this (a lost client fails the run instead of hanging it).
PHASE_TIMEOUT_SECONDS = 1800.0


class Swarm:
    """One client process's share of the hosts, tasks and peers, over a few HTTP/2 connections."""

    def __init__(
        self, addr: str, args: argparse.Namespace, index: int = 0, count: int = 1, *, probe: bool = False
    ) -> None:
        import grpc
        from dragonfly_api import scheduler_pb2_grpc

        self.args = args
        self.index, self.count = index, count
        # The probe process plays only the probe children, on a connection of its own.
        self.probe = probe
        self.layout = Layout(args)
        # Separate subchannel pools give separate TCP connections, as the Rust client's 10 pooled ones.
        self.channels = [
            grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(1 if probe else max(args.connections // count, 1))
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
        host = self._hosts.get(index)
        if host is None:
            host = self._hosts[index] = host_message(index)
        return host

    def download(self, *, source: bool) -> Any:
        return download_message(self.args.pieces, source=source)

    def peer(self, index: int, task: str, host: int) -> PeerStream:
        return PeerStream(self, self.stubs[index % len(self.stubs)], task, self.host(host))

    # phases, run on the parent's command

    async def phase_announce(self) -> dict[str, Any]:
        if self.probe:
            return {}
        from dragonfly_api import scheduler_pb2

        async def announce(index: int) -> None:
            request = scheduler_pb2.AnnounceHostRequest(host=self.host(index))
            # The hosts announce once: an hour's interval keeps them (2 intervals) through runs with minutes of churn.
            request.interval.seconds = 3600
            await self.stubs[index % len(self.stubs)].AnnounceHost(request, timeout=30)

        await bounded(64, [lambda i=i: announce(i) for i in self.mine(self.layout.hosts)])
        return {}

    async def phase_sources(self) -> dict[str, Any]:
        if self.probe:
            return {"peers": 0}
        layout = self.layout
        sources = [self.peer(t, layout.tasks[t], layout.source_host(t)) for t in self.mine(len(layout.tasks))]
        await bounded(32, [lambda p=p: p.register(source=True) for p in sources])
        await bounded(32, [lambda p=p: p.download() for p in sources])
        return {"peers": len(sources)}

    async def phase_register(self) -> dict[str, Any]:
        layout = self.layout
        if self.probe:
            self.early = [self.peer(index, *layout.child(index)) for index in layout.probe_children()]
            return {"latencies": []}
        self.early = [self.peer(index, *layout.child(index)) for index in layout.early(self.index, self.count)]
        self.late = [self.peer(index, *layout.child(index)) for index in layout.late_children(self.index, self.count)]
        latencies = await bounded(self.register_concurrency, [lambda p=p: p.register() for p in self.early])
        return {"latencies": latencies}

    async def phase_probe(self) -> dict[str, Any]:
        """Probe: register the probe children one at a time, spread over ``--churn`` seconds (back to back without
        churn); bulk clients: churn for that long (peers register, report every piece, finish and are deleted).
        """
        if self.probe:
            return {"latencies": await self._probe(), "churned": 0}
        latencies = await self._churn() if self.args.churn > 0 else []
        return {"latencies": latencies, "churned": len(latencies)}

    async def _probe(self) -> list[float]:
        """Time each decision with nothing else in flight in this process and its cyclic collector off.

        So the figure is the scheduler's answer time plus the transport (both ends' gRPC and the loopback), without
        client-side queueing behind other streams or client-side collections.
        """
        interval = self.args.churn / len(self.early) if self.args.churn > 0 and self.early else 0.0
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            started = time.monotonic()
            latencies = []
            for number, peer in enumerate(self.early):
                delay = started + number * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                latencies.append(await peer.register())
            return latencies
        finally:
            gc.enable()
            gc.unfreeze()

    async def _churn(self) -> list[float]:
        """Start this client's share of ``--churn-rate`` new peers a second until ``--churn`` seconds have passed;
        each registers, reports every piece, finishes and is deleted. Return their decision latencies."""
        from dragonfly_api import scheduler_pb2

        layout, args = self.layout, self.args
        indices = layout.early(self.index, self.count)
        interval = self.count / args.churn_rate
        in_flight = asyncio.Semaphore(max(args.churn_concurrency // self.count, 1))
        latencies: list[float] = []

        async def one(index: int) -> None:
            try:
                peer = self.peer(index, *layout.child(index))
                latencies.append(await peer.register())
                await peer.download()
                request = scheduler_pb2.DeletePeerRequest(host_id=peer.host.id, task_id=peer.task, peer_id=peer.id)
                await peer.stub.DeletePeer(request, timeout=30)
            finally:
                in_flight.release()

        started = time.monotonic()
        jobs: list[asyncio.Task[None]] = []
        for number in range(int(args.churn / interval)):
            delay = started + number * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()  # a peer starts late rather than piling up when the scheduler falls behind
            jobs.append(asyncio.create_task(one(indices[number % len(indices)])))
        await asyncio.gather(*jobs)
        return latencies

    async def phase_trickle(self) -> dict[str, Any]:
        """Report pieces of the early children one at a time, paced at this client's share of ``--trickle-rate``
        for ``--trickle-seconds`` (a swarm's pace: each message reaches an idle scheduler); the flood reports them
        again."""
        from google.protobuf import timestamp_pb2

        args = self.args
        if self.probe or args.trickle_rate <= 0 or not self.early:
            return {"messages": 0}
        interval = self.count / args.trickle_rate
        created_at = timestamp_pb2.Timestamp(seconds=int(time.time()))
        started = time.monotonic()
        messages = 0
        for sent in range(int(args.trickle_seconds / interval)):
            peer = self.early[sent % len(self.early)]
            if not peer.started:
                await peer.start()
                messages += 1
            await peer.call.write(peer.piece_request(sent // len(self.early) % args.pieces, created_at))
            messages += 1
            delay = started + (sent + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return {"messages": messages}

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
        self.stub = stub
        # Opened on register: tens of thousands of idle calls opened up front would queue in grpc-core, which
        # cancels calls the server has not picked up in time.
        self.call: Any = None
        self.parents: list[str] = []
        self.back_to_source = False
        self.started = False

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
        self.call = self.stub.AnnouncePeer()
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

    def piece_request(self, number: int, created_at: Any) -> Any:
        """Return the report of piece ``number`` (4 MiB) from the given parents, or the origin."""
        from dragonfly_api import common_pb2, scheduler_pb2
        from google.protobuf import duration_pb2

        length = 4 * 1024 * 1024
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
            return self._request(
                download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                    piece=piece
                )
            )
        piece.parent_id = self.parents[number % len(self.parents)]
        piece.traffic_type = common_pb2.REMOTE_PEER
        return self._request(download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece))

    async def start(self) -> None:
        """Tell the scheduler the download started (once)."""
        from dragonfly_api import scheduler_pb2

        if self.started:
            return
        self.started = True
        if self.back_to_source:
            await self.call.write(
                self._request(
                    download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
                )
            )
        else:
            await self.call.write(
                self._request(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
            )

    async def download(self) -> None:
        """Report every piece (from the given parents, or the origin) and finish; wait for the stream's end."""
        import grpc
        from dragonfly_api import scheduler_pb2
        from google.protobuf import timestamp_pb2

        swarm = self.swarm
        write = self.call.write
        sent_start = not self.started
        await self.start()
        created_at = timestamp_pb2.Timestamp(seconds=int(time.time()))  # required by Dragonfly's rules, as cost is
        for number in range(swarm.args.pieces):
            await write(self.piece_request(number, created_at))
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
        swarm.messages += swarm.args.pieces + 1 + sent_start


# the load-client processes


def client_process(
    conn: Connection, addr: str, args: argparse.Namespace, index: int, count: int, probe: bool = False
) -> None:
    """Entry point of load-client ``index`` of ``count`` (or of the probe): run the phases the parent sends, answer
    with figures."""
    asyncio.run(_client_loop(conn, addr, args, index, count, probe))


async def _client_loop(
    conn: Connection, addr: str, args: argparse.Namespace, index: int, count: int, probe: bool
) -> None:
    swarm = Swarm(addr, args, index, count, probe=probe)
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
    """``count`` bulk load-client processes and the probe process, driven phase by phase; every phase waits for all
    of them. ``run`` returns the probe's result last."""

    def __init__(self, addr: str, args: argparse.Namespace, count: int) -> None:
        context = multiprocessing.get_context("spawn")  # no grpc state inherited through fork
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for index in range(count + 1):
            probe = index == count
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=client_process,
                args=(child_end, addr, args, index, count, probe),
                name="bench-probe" if probe else f"bench-client-{index}",
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
