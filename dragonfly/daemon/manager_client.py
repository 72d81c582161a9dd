"""The dfdaemon's side of the manager (``docs/manager.md#grpc-managerv2``): find schedulers, register a seed peer.

With ``manager.addr`` set, the daemon asks the manager for schedulers (ListSchedulers with its hostname, IP, IDC
and location), health-checks them in the order given, keeps the healthy schedulers of the first cluster that has
one, and does it again every ``dynconfig.refreshInterval``. The last good list is written to
``<storage.dir>/manager-schedulers.json`` so a restart while the manager is down still finds its schedulers. A seed
peer also registers itself (UpdateSeedPeer) and keeps alive, so schedulers of linked clusters learn of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from dragonfly_api import common_pb2, manager_pb2, manager_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import dragonfly
from dragonfly.common import tls

log = logging.getLogger(__name__)

_CALL_TIMEOUT = 5.0
_HEALTH_TIMEOUT = 2.0
_MAX_BACKOFF = 30.0
CACHE_FILE = "manager-schedulers.json"


def manager_target(addr: str) -> str:
    """Return ``host:port`` from Dragonfly's ``manager.addr`` (which may carry ``http://`` or ``https://``)."""
    for prefix in ("http://", "https://", "grpc://", "grpcs://"):
        if addr.startswith(prefix):
            return addr[len(prefix) :].rstrip("/")
    return addr


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class SchedulerDiscovery:
    """Schedulers for this host from the manager, checked healthy, remembered on disk."""

    def __init__(
        self,
        addr: str,
        *,
        host: Callable[[], common_pb2.Host],
        cache_dir: str | os.PathLike[str],
        manager_tls: tls.TLSFiles | None,
        scheduler_tls: tls.TLSFiles | None,
        cluster_id: int = 0,
    ) -> None:
        self.addr = manager_target(addr)
        self._host = host
        self._cache = Path(cache_dir) / CACHE_FILE
        self._scheduler_tls = scheduler_tls
        self._cluster_id = cluster_id
        self._channel = tls.aio_channel(self.addr, manager_tls)
        self._stub = manager_pb2_grpc.ManagerStub(self._channel)  # type: ignore[no-untyped-call]
        self.addrs: list[str] = []

    async def close(self) -> None:
        """Close the channel to the manager."""
        await self._channel.close()

    async def discover(self) -> list[str] | None:
        """Ask the manager and health-check; return the addresses (None when the manager could not be asked)."""
        host = self._host()
        request = manager_pb2.ListSchedulersRequest(
            source_type=manager_pb2.SEED_PEER_SOURCE if host.type else manager_pb2.PEER_SOURCE,
            hostname=host.hostname,
            ip=host.ip,
            idc=host.network.idc,
            location=host.network.location,
            version=dragonfly.__version__,
            scheduler_cluster_id=self._cluster_id,
        )
        try:
            response = await self._stub.ListSchedulers(request, timeout=_CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "manager unreachable; keeping the last schedulers",
                extra={"manager": self.addr, "code": exc.code().name, "error": exc.details()},
            )
            return None
        return await self._healthy(response.schedulers)

    async def _healthy(self, schedulers: Sequence[manager_pb2.Scheduler]) -> list[str]:
        """Return the healthy schedulers of the first cluster (in the manager's order) that has one."""
        by_cluster: dict[int, list[str]] = {}
        for scheduler in schedulers:
            by_cluster.setdefault(scheduler.scheduler_cluster_id, []).append(_address(scheduler.ip, scheduler.port))
        for addrs in by_cluster.values():
            checks = await asyncio.gather(*(self._check(addr) for addr in addrs))
            healthy = [addr for addr, ok in zip(addrs, checks, strict=True) if ok]
            if healthy:
                return healthy
        return []

    async def _check(self, addr: str) -> bool:
        try:
            async with tls.aio_channel(addr, self._scheduler_tls) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=_HEALTH_TIMEOUT)
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def load_cached(self) -> list[str]:
        """Return the last good list written to disk ([] if none)."""
        try:
            data = json.loads(self._cache.read_text())
        except (OSError, ValueError):
            return []
        addrs = data.get("schedulers") if isinstance(data, dict) else None
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            return []
        return addrs

    def save(self, addrs: list[str]) -> None:
        """Write the list atomically."""
        tmp = self._cache.with_suffix(".tmp")
        try:
            self._cache.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"manager": self.addr, "schedulers": addrs}))
            os.replace(tmp, self._cache)
        except OSError as exc:
            log.warning("cannot save the scheduler list", extra={"path": str(self._cache), "error": str(exc)})

    async def initial(self, wait: float) -> list[str]:
        """Discover for up to ``wait`` seconds (the manager or its schedulers may still be starting), else the cache."""
        deadline = asyncio.get_running_loop().time() + wait
        delay = 0.2
        while True:
            found = await self.discover()
            if found:
                self.addrs = found
                self.save(found)
                log.info("schedulers from the manager", extra={"manager": self.addr, "schedulers": found})
                return found
            if asyncio.get_running_loop().time() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        cached = self.load_cached()
        if cached:
            log.warning("using the last schedulers the manager gave", extra={"schedulers": cached})
        self.addrs = cached
        return cached

    async def run(self, interval: float, on_change: Callable[[list[str]], None]) -> None:
        """Refresh every ``interval`` seconds; call ``on_change`` with a new non-empty list."""
        while True:
            await asyncio.sleep(interval)
            found = await self.discover()
            if found and found != self.addrs:
                log.info("schedulers changed", extra={"before": self.addrs, "after": found})
                self.addrs = found
                self.save(found)
                on_change(found)


class SeedPeerRegistration:
    """A seed peer tells the manager it exists (UpdateSeedPeer) and stays alive (KeepAlive)."""

    def __init__(
        self,
        addr: str,
        *,
        host: Callable[[], common_pb2.Host],
        cluster_id: int,
        interval: float,
        manager_tls: tls.TLSFiles | None,
        seed_type: str = "super",
    ) -> None:
        self.addr = manager_target(addr)
        self._host = host
        self._cluster_id = cluster_id
        self._interval = interval
        self._type = seed_type
        self._channel = tls.aio_channel(self.addr, manager_tls)
        self._stub = manager_pb2_grpc.ManagerStub(self._channel)  # type: ignore[no-untyped-call]
        self.registered = asyncio.Event()

    async def close(self) -> None:
        """Close the channel (the manager marks this seed peer inactive as the stream ends)."""
        await self._channel.close()

    async def run(self) -> None:
        """Register, then keep alive; start over after any failure, with a back-off."""
        backoff = 0.5
        while True:
            host = self._host()
            try:
                await self._stub.UpdateSeedPeer(
                    manager_pb2.UpdateSeedPeerRequest(
                        source_type=manager_pb2.SEED_PEER_SOURCE,
                        hostname=host.hostname,
                        type=self._type,
                        idc=host.network.idc,
                        location=host.network.location,
                        ip=host.ip,
                        port=host.port,
                        download_port=host.download_port or host.port,
                        seed_peer_cluster_id=self._cluster_id,
                    ),
                    timeout=_CALL_TIMEOUT,
                )
                log.info("seed peer registered with the manager", extra={"manager": self.addr})
                backoff = 0.5
                await self._stub.KeepAlive(self._beats(host))
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.registered.clear()
                log.warning(
                    "seed peer keep-alive failed",
                    extra={"manager": self.addr, "code": exc.code().name, "error": exc.details()},
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _beats(self, host: common_pb2.Host) -> AsyncIterator[manager_pb2.KeepAliveRequest]:
        message = manager_pb2.KeepAliveRequest(
            source_type=manager_pb2.SEED_PEER_SOURCE, hostname=host.hostname, cluster_id=self._cluster_id, ip=host.ip
        )
        while True:
            yield message
            self.registered.set()
            await asyncio.sleep(self._interval)


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
