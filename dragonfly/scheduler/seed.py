"""Seed peers: pick one per task on a consistent-hash ring and trigger its download
(``docs/reference/scheduler.md#seed-peers``).

Seed hosts are learnt from AnnounceHost (type ≠ normal) and presumed healthy until a check fails. Every
``seedPeer.refreshInterval`` each is checked with grpc.health.v1 on its upload port; a server that answers
UNIMPLEMENTED (no health service) is up, so it counts as healthy. A trigger that cannot reach its seed marks it
unhealthy at once. The ring (``dragonfly.common.hashring``) holds the ids of healthy seed hosts; a task always
maps to the same seed while the set is stable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dragonfly.common import tls
from dragonfly.common.background import BackgroundJobs
from dragonfly.common.hashring import HashRing

if TYPE_CHECKING:
    from dragonfly.scheduler.config import SeedPeerConfig
    from dragonfly.scheduler.metrics import Metrics
    from dragonfly.scheduler.resource.host import Host
    from dragonfly.scheduler.resource.task import Task

log = logging.getLogger(__name__)

# Dragonfly's SeedPeerFailedTimeout: a task whose seed download failed recently is not sent to a seed again.
SEED_PEER_FAILED_TIMEOUT = 30 * 60.0
_HEALTHY_CODES = frozenset((grpc.StatusCode.UNIMPLEMENTED,))
# The trailer of gRPC's Status.details, where a dfdaemon puts the origin's error (errordetails.v2.Backend).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def seed_download(download: common_pb2.Download) -> common_pb2.Download:
    """Return the Download a seed gets: the child's request, told to go to the origin, without its output path.

    A child's ``disable_back_to_source`` is its own constraint (it must not fetch from the origin itself); fetching
    from the origin for the swarm is what the seed is for, so the flag is not passed on.
    """
    forwarded = common_pb2.Download()
    forwarded.CopyFrom(download)
    forwarded.need_back_to_source = True
    forwarded.disable_back_to_source = False
    forwarded.metadata_only = False
    forwarded.ClearField("output_path")
    return forwarded


def _reported_by_seed(exc: grpc.aio.AioRpcError) -> bool:
    """Tell whether the seed itself ended the call with an origin failure (its status carries Dragonfly's
    ``errordetails.v2.Backend``): the seed is reachable and healthy; only failing to reach it counts against it."""
    trailers = exc.trailing_metadata() or ()
    return any(key == STATUS_DETAILS_KEY for key, _value in trailers)


class SeedPeers:
    """The healthy seed hosts, the ring over them, and the background downloads they were asked for."""

    def __init__(self, config: SeedPeerConfig, metrics: Metrics, *, tls_files: tls.TLSFiles | None = None) -> None:
        self._config = config
        self._tls = tls_files
        self._metrics = metrics
        self._hosts: dict[str, Host] = {}
        self._unhealthy: set[str] = set()
        self._ring = HashRing(())
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._downloads = BackgroundJobs()
        self._refresher: asyncio.Task[None] | None = None

    # ring

    def set_hosts(self, hosts: list[Host]) -> None:
        """Replace the known seed hosts (called whenever AnnounceHost or DeleteHost changes them)."""
        self._hosts = {host.id: host for host in hosts}
        self._unhealthy &= set(self._hosts)
        for addr in set(self._channels) - {host.address for host in hosts}:
            channel = self._channels.pop(addr)
            self._downloads.spawn(channel.close())
        if self._refresher is not None:
            for host in hosts:
                if host.address not in self._channels:
                    self._connect(host)
        self._rebuild()

    def _rebuild(self) -> None:
        nodes = [host_id for host_id in self._hosts if host_id not in self._unhealthy]
        if set(nodes) != set(self._ring.nodes):
            self._ring = HashRing(nodes)
            log.info("seed peer ring rebuilt", extra={"seed_hosts": ",".join(sorted(nodes)) or "-"})

    def available(self) -> bool:
        """Return whether any healthy seed host is known (Dragonfly's HasAvailable)."""
        return self._config.enable and len(self._ring) > 0

    def select(self, task_id: str) -> Host | None:
        """Return the seed host that owns ``task_id``."""
        if not self.available():
            return None
        return self._hosts.get(self._ring.owner(task_id))

    def _set_health(self, host_id: str, healthy: bool) -> None:
        if healthy:
            self._unhealthy.discard(host_id)
        else:
            self._unhealthy.add(host_id)
        self._rebuild()

    def _connect(self, host: Host) -> None:
        """Have the channel to a seed host connect now, in the background.

        A trigger is on the path to the first byte of every peer of its task: on a channel created by the trigger
        itself it would also wait for the TCP and TLS handshakes (the first task after a seed joins; the health
        checks keep the channel up from then on).
        """
        self._channel(host).get_state(try_to_connect=True)

    def _channel(self, host: Host) -> grpc.aio.Channel:
        channel = self._channels.get(host.address)
        if channel is None:
            # With mTLS the seed must present a certificate for the IP it announced (checked by the handshake).
            channel = self._channels[host.address] = tls.aio_channel(host.address, self._tls)
        return channel

    # health

    def start(self) -> None:
        """Start the periodic health checks, and connect to the seed hosts known so far (and later to each new one)."""
        self._refresher = asyncio.create_task(self._refresh_loop(), name="seed-peer-health")
        for host in self._hosts.values():
            self._connect(host)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.refresh_interval)
            await self.check_health()

    async def check_health(self) -> None:
        """Check every seed host once and rebuild the ring."""
        hosts = list(self._hosts.values())
        results = await asyncio.gather(*(self._check(host) for host in hosts))
        for host, healthy in zip(hosts, results, strict=True):
            if healthy != (host.id not in self._unhealthy):
                log.warning("seed peer health changed", extra={"host_id": host.id, "healthy": healthy})
            if healthy:
                self._unhealthy.discard(host.id)
            else:
                self._unhealthy.add(host.id)
        self._rebuild()

    async def _check(self, host: Host) -> bool:
        stub = health_pb2_grpc.HealthStub(self._channel(host))
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=self._config.connect_timeout)
        except grpc.aio.AioRpcError as exc:
            return bool(exc.code() in _HEALTHY_CODES)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    # triggering

    def trigger(self, task: Task, download: common_pb2.Download, host: Host) -> None:
        """Ask ``host`` to download ``task`` from the origin, in the background (DfdaemonUpload.DownloadTask)."""
        task.seed_trigger_active = True
        task.seed_has_pieces = False
        self._metrics.seed_triggers.labels("triggered").inc()
        log.info("seed peer triggered", extra={"task_id": task.id, "host_id": host.id, "addr": host.address})
        self._downloads.spawn(self._download(task, seed_download(download), host))

    async def _download(self, task: Task, download: common_pb2.Download, host: Host) -> None:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(self._channel(host))  # type: ignore[no-untyped-call]
        call = stub.DownloadTask(
            dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=self._config.task_download_timeout
        )
        failure = ""
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            failure = f"{exc.code().name}: {exc.details()}"
            if exc.code() == grpc.StatusCode.UNAVAILABLE and not _reported_by_seed(exc):
                self._set_health(host.id, False)
        except asyncio.CancelledError:
            call.cancel()
            raise
        finally:
            task.seed_trigger_active = False
        if failure:
            task.seed_failed_at = time.monotonic()
            self._metrics.seed_triggers.labels("failed").inc()
            log.warning("seed peer download failed", extra={"task_id": task.id, "host_id": host.id, "error": failure})
        else:
            self._metrics.seed_triggers.labels("succeeded").inc()
            log.info("seed peer download finished", extra={"task_id": task.id, "host_id": host.id})
        task.notify()

    def recently_failed(self, task: Task, now: float) -> bool:
        """Return whether the task's seed download failed within SEED_PEER_FAILED_TIMEOUT."""
        return task.seed_failed_at is not None and now - task.seed_failed_at < SEED_PEER_FAILED_TIMEOUT

    async def close(self) -> None:
        """Cancel background downloads and health checks, and close the channels."""
        await self._downloads.close(self._refresher)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
