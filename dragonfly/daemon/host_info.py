"""The host figures announced to schedulers (``docs/reference/protocol.md#announcehost``) and streamed to children
(SyncHost)."""

from __future__ import annotations

import collections
import os
import platform
import shutil
import socket
import time

import psutil
from dragonfly_api import common_pb2

from dragonfly import __version__
from dragonfly.daemon.config import DfdaemonConfig

# Children weigh parents by free upload bandwidth; an unknown NIC speed counts as 10 Gbit/s, as in Dragonfly.
_UNKNOWN_NIC_BITS = 10_000_000_000


def detect_ip() -> str:
    """Return the first non-loopback IPv4 address of this host (127.0.0.1 when there is none)."""
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return addr.address
    return "127.0.0.1"


class TrafficMeter:
    """Bytes moved by this daemon, with the rate over the last few seconds (in bit/s)."""

    __slots__ = ("_samples", "_window", "total")

    def __init__(self, window: float = 2.0) -> None:
        self.total = 0
        self._window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, count: int) -> None:
        self.total += count
        self._samples.append((time.monotonic(), count))

    def bits_per_second(self) -> int:
        now = time.monotonic()
        while self._samples and now - self._samples[0][0] > self._window:
            self._samples.popleft()
        return int(sum(n for _, n in self._samples) * 8 / self._window)


class HostInfo:
    """Builds ``common.v2.Host`` messages with live figures from psutil and the daemon's own traffic."""

    def __init__(
        self,
        config: DfdaemonConfig,
        *,
        host_id: str,
        ip: str,
        upload_port: int,
        upload_traffic: TrafficMeter,
        download_traffic: TrafficMeter,
    ) -> None:
        self._config = config
        self.host_id = host_id
        self.ip = ip
        self._upload_port = upload_port
        #: The proxy's port, announced to the scheduler once the proxy listens (0: no proxy).
        self.proxy_port = 0
        self._upload = upload_traffic
        self._download = download_traffic
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)
        self._max_bits = self._max_bandwidth_bits()

    def _max_bandwidth_bits(self) -> int:
        speeds = [s.speed for name, s in psutil.net_if_stats().items() if s.isup and s.speed > 0 and name != "lo"]
        nic_bits = max(speeds) * 1_000_000 if speeds else _UNKNOWN_NIC_BITS
        limit_bits = int(self._config.upload.bandwidth_limit * 8)
        return min(nic_bits, limit_bits) if limit_bits > 0 else nic_bits

    def network(self) -> common_pb2.Network:
        host = self._config.host
        network = common_pb2.Network(
            max_rx_bandwidth=self._max_bits,
            rx_bandwidth=self._download.bits_per_second(),
            max_tx_bandwidth=self._max_bits,
            tx_bandwidth=self._upload.bits_per_second(),
        )
        if host.idc:
            network.idc = host.idc
        if host.location:
            network.location = host.location
        return network

    def sync_host(self) -> common_pb2.Host:
        """Return the light Host sent to children every second: identity and bandwidth only."""
        return common_pb2.Host(id=self.host_id, ip=self.ip, port=self._upload_port, network=self.network())

    def host(self) -> common_pb2.Host:
        """Return the full Host for AnnounceHost."""
        vm = psutil.virtual_memory()
        disk_dir = self._config.storage.dir if os.path.isdir(self._config.storage.dir) else "/"
        disk = shutil.disk_usage(disk_dir)
        uname = platform.uname()
        return common_pb2.Host(
            id=self.host_id,
            type=self._config.host_type,
            hostname=self._config.host.hostname,
            ip=self.ip,
            port=self._upload_port,
            download_port=self._upload_port,
            os=uname.system.lower(),
            platform=uname.system.lower(),
            platform_family="unix",
            platform_version=uname.version,
            kernel_version=uname.release,
            cpu=common_pb2.CPU(
                logical_count=psutil.cpu_count() or 1,
                physical_count=psutil.cpu_count(logical=False) or 1,
                percent=psutil.cpu_percent(None),
                process_percent=self._process.cpu_percent(None),
            ),
            memory=common_pb2.Memory(
                total=vm.total,
                available=vm.available,
                used=vm.used,
                used_percent=vm.percent,
                process_used_percent=self._process.memory_percent(),
                free=vm.free,
            ),
            network=self.network(),
            disk=common_pb2.Disk(
                total=disk.total,
                free=disk.free,
                used=disk.used,
                used_percent=disk.used * 100.0 / disk.total if disk.total else 0.0,
            ),
            build=common_pb2.Build(git_version=__version__, platform=uname.machine),
            disable_shared=self._config.upload.disable_shared,
            proxy_port=self.proxy_port,
            name=self._config.host.hostname,
        )
