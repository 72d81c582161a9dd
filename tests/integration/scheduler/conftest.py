"""A real scheduler process (a LocalCluster without daemons), protocol clients built from the stubs, and a
stand-in seed endpoint.

The scheduler runs with mutual TLS, as every launcher cluster does: each announced test host talks on a channel of
its own with a certificate that owns its host id, and ``SchedulerClient.stub`` is an operator's (manager role)
certificate for reads and deletions. The stand-in seed endpoint serves TLS with a seed certificate of the same CA.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import duration_pb2

from dragonfly.cli.cluster import SCHEDULER, LocalCluster, deep_merge
from dragonfly.common import pki, tls, validation
from dragonfly.common.identity import ROLE_PEER, ROLE_SEED_PEER
from tests.waiting import eventually

# Bound of every wait for the scheduler's answer: a hung call, not a speed requirement (the scheduler is another
# process on a loaded 2-core machine; an answer that comes is read at once, so a generous bound costs nothing).
WAIT = 30.0


def base_config(**scheduler: Any) -> dict[str, Any]:
    """Return a scheduler.yaml for tests: loopback only, fast timers, ``scheduler`` keys overridden."""
    return {
        "server": {"host": "127.0.0.1", "gracefulStopTimeout": "1s"},
        "metrics": {"enable": True, "host": "127.0.0.1", "port": 0},
        "scheduler": {"retryInterval": "100ms", **scheduler},
        "seedPeer": {"refreshInterval": "1h"},
    }


def host_message(
    name: str, *, seed: bool = False, port: int = 40000, ip: str | None = None, **network: Any
) -> common_pb2.Host:
    """Return a common.v2.Host as a dfdaemon announces it; the default IP is never dialled (only seeds are)."""
    ip = ip or f"192.0.2.{sum(name.encode()) % 250 + 1}"
    host_id = f"{ip}-{name}" + ("-seed" if seed else "")
    return common_pb2.Host(
        id=host_id,
        type=1 if seed else 0,
        hostname=name,
        ip=ip,
        port=port,
        download_port=port,
        os="linux",
        network=common_pb2.Network(**network),
    )


def make_download(
    url: str = "http://origin.test/file", *, content_length: int = 4 * 1024 * 4, piece_length: int = 4096, **extra: Any
) -> common_pb2.Download:
    """Return a Download with the ``actual_*`` sizes a client fills from its backend stat."""
    download = common_pb2.Download(url=url, **extra)
    download.actual_content_length = content_length
    download.actual_piece_length = piece_length
    download.actual_piece_count = -(-content_length // piece_length) if piece_length else 0
    return download


def cost(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


class PeerClient:
    """One AnnouncePeer stream of one peer, written and read explicitly."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub, host: common_pb2.Host, task_id: str) -> None:
        self.host = host
        self.task_id = task_id
        self.peer_id = f"{host.ip}-{host.hostname}-{uuid.uuid4()}" + ("-seed" if host.type else "")
        self.call = stub.AnnouncePeer()

    def request(self, **kwargs: Any) -> scheduler_pb2.AnnouncePeerRequest:
        return scheduler_pb2.AnnouncePeerRequest(
            host_id=self.host.id, task_id=self.task_id, peer_id=self.peer_id, **kwargs
        )

    async def send(self, **kwargs: Any) -> None:
        await self.call.write(self.request(**kwargs))

    async def register(self, download: common_pb2.Download) -> None:
        await self.send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download))

    async def response(self, within: float = WAIT) -> scheduler_pb2.AnnouncePeerResponse:
        async with asyncio.timeout(within):
            response = await self.call.read()
        assert response is not grpc.aio.EOF, "the scheduler closed the stream"
        # What the scheduler sends passes Dragonfly's rules too: clients echo candidate parents back.
        assert validation.check(response) is None, validation.check(response)
        return response

    async def error(self, within: float = WAIT) -> grpc.aio.AioRpcError:
        """Wait for the stream to fail and return the error."""
        async with asyncio.timeout(within):
            try:
                while await self.call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc
        raise AssertionError(f"stream ended with {await self.call.code()} instead of an error")

    async def started(self) -> None:
        await self.send(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())

    async def back_to_source_started(self) -> None:
        await self.send(
            download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
        )

    async def piece(self, number: int, *, parent_id: str = "", seconds: float = 0.01, digest: str = "") -> None:
        piece = common_pb2.Piece(
            number=number, offset=number * 4096, length=4096, digest=digest or f"crc32:{number}", cost=cost(seconds)
        )
        piece.created_at.GetCurrentTime()
        if parent_id:
            piece.parent_id = parent_id
            piece.traffic_type = common_pb2.REMOTE_PEER
            await self.send(download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece))
        else:
            piece.traffic_type = common_pb2.BACK_TO_SOURCE
            await self.send(
                download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                    piece=piece
                )
            )

    async def finished(self, *, back_to_source: bool = False) -> None:
        if back_to_source:
            await self.send(
                download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
            )
        else:
            await self.send(download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())
        await self.closed()

    async def closed(self) -> None:
        """Wait for the scheduler to end the stream normally."""
        async with asyncio.timeout(WAIT):
            assert await self.call.read() is grpc.aio.EOF
            assert await self.call.code() == grpc.StatusCode.OK


class SeedEndpoint(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    """Stands in for a seed daemon's DfdaemonUpload server: this test is about the scheduler's decisions, so the
    endpoint only records DownloadTask calls and ends each one as the test says (succeed or fail)."""

    def __init__(self, files: tls.TLSFiles) -> None:
        self.files = files
        self.calls: list[dfdaemon_pb2.DownloadTaskRequest] = []
        self.called = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_with: grpc.StatusCode | None = None
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def DownloadTask(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.calls.append(request)
        self.called.set()
        if self.fail_with is not None:
            await context.abort(self.fail_with, "seed stand-in: origin returned 404")
        await self.release.wait()
        yield dfdaemon_pb2.DownloadTaskResponse(
            host_id="seed",
            task_id="t",
            peer_id="p",
            download_task_started_response=dfdaemon_pb2.DownloadTaskStartedResponse(content_length=1),
        )

    async def start(self) -> None:
        self._server = grpc.aio.server()
        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(self, self._server)
        self.port = tls.add_port(self._server, "127.0.0.1:0", self.files)
        await self._server.start()

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            await self._server.stop(0)


class SchedulerClient:
    """A channel to the scheduler of a LocalCluster, plus its process figures and metrics."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.process = cluster.process(SCHEDULER)
        self.channel = tls.aio_channel(cluster.scheduler_addr, cluster.client_files())
        self.stub = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self._host_channels: dict[tuple[str, str, bool], grpc.aio.Channel] = {}

    def host_stub(self, host: common_pb2.Host) -> scheduler_pb2_grpc.SchedulerStub:
        """Return a stub on a channel whose certificate owns ``host``'s id (one channel per host)."""
        key = (host.hostname, host.ip, host.type != 0)
        channel = self._host_channels.get(key)
        if channel is None:
            files = self.cluster.issue_cert(
                f"host-{host.hostname}-{host.ip}-{int(key[2])}",
                roles=(ROLE_SEED_PEER,) if key[2] else (ROLE_PEER,),
                hostname=host.hostname,
                ips=(host.ip,),
            )
            channel = self._host_channels[key] = tls.aio_channel(self.cluster.scheduler_addr, files)
        return scheduler_pb2_grpc.SchedulerStub(channel)

    async def close(self) -> None:
        for channel in [self.channel, *self._host_channels.values()]:
            await channel.close()

    def rss(self) -> int:
        """Return the scheduler's resident set size in bytes."""
        assert self.process.pid is not None
        return psutil.Process(self.process.pid).memory_info().rss

    async def metrics(self) -> str:
        """Return the Prometheus exposition text."""
        url = f"http://{self.process.listening['scheduler metrics']}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return await resp.text()

    async def metric(self, name: str, labels: str = "") -> float:
        """Return one sample's value (0 when absent)."""
        text = await self.metrics()
        pattern = re.compile(rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", re.M)
        match = pattern.search(text)
        return float(match.group(1)) if match else 0.0

    async def announce(self, host: common_pb2.Host, interval: float | None = None) -> common_pb2.Host:
        request = scheduler_pb2.AnnounceHostRequest(host=host)
        if interval is not None:
            request.interval.CopyFrom(cost(interval))
        await self.host_stub(host).AnnounceHost(request, timeout=WAIT)
        return host

    def peer(self, host: common_pb2.Host, task_id: str = "a" * 64) -> PeerClient:
        return PeerClient(self.host_stub(host), host, task_id)

    async def wait_pieces(self, peer: PeerClient, count: int) -> common_pb2.Peer:
        """Return StatPeer once the scheduler has processed ``count`` piece reports of ``peer``.

        A write on a stream returns before the scheduler reads it, and other RPCs may overtake it; the
        scheduler is another process, so polling its answers (bounded) is the only way to wait.
        """
        request = scheduler_pb2.StatPeerRequest(host_id="test-client", task_id=peer.task_id, peer_id=peer.peer_id)

        async def processed() -> common_pb2.Peer | None:
            stat = await self.stub.StatPeer(request)
            return stat if len(stat.pieces) >= count else None

        done: common_pb2.Peer = await eventually(processed, WAIT, f"{count} piece reports processed", interval=0.01)
        return done


@pytest.fixture
def authority() -> pki.CertificateAuthority:
    """The CA of the test's scheduler, made first so the stand-in seed endpoint can serve a certificate of it."""
    return pki.create_ca("scheduler integration tests")


@pytest.fixture
async def start_scheduler(tmp_path: Path, authority: pki.CertificateAuthority) -> AsyncIterator[Callable[..., Any]]:
    """Start a scheduler with ``base_config(**scheduler_keys)`` (plus ``extra`` top-level sections)."""
    started: list[tuple[LocalCluster, SchedulerClient]] = []

    async def start(
        extra: dict[str, Any] | None = None, *, env: dict[str, str] | None = None, **scheduler_keys: Any
    ) -> SchedulerClient:
        cluster = LocalCluster(
            tmp_path / f"scheduler-{len(started)}",
            peers=0,
            seed_peer=False,
            scheduler_config=deep_merge(base_config(**scheduler_keys), extra or {}),
            start_timeout=20.0,
            stop_timeout=15.0,
            ca=authority,
            env=env,
        )
        await asyncio.to_thread(cluster.start)
        client = SchedulerClient(cluster)
        started.append((cluster, client))
        return client

    yield start
    for cluster, client in started:
        await client.close()
        status = await asyncio.to_thread(cluster.terminate, SCHEDULER)
        cluster.stop()
        assert status == 0, cluster.log_path(SCHEDULER).read_text()


@pytest.fixture
async def seed_endpoint(tmp_path: Path, authority: pki.CertificateAuthority) -> AsyncIterator[SeedEndpoint]:
    ca_cert, _ = authority.write(tmp_path / "seed-endpoint")
    cert, key = pki.issue(authority, "seed-1", ips=["127.0.0.1"], roles=["seed-peer"]).write(
        tmp_path / "seed-endpoint", "seed-1"
    )
    endpoint = SeedEndpoint(tls.TLSFiles(ca_cert=str(ca_cert), cert=str(cert), key=str(key)))
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
def helpers() -> Any:
    """The module's helper functions, for tests (conftest modules are not importable)."""

    class Helpers:
        host = staticmethod(host_message)
        download = staticmethod(make_download)
        cost = staticmethod(cost)

    return Helpers
