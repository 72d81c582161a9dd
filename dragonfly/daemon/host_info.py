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

# With no rate limit and no known interface speed (Dragonfly's client always has a limit; ours may be 0).
_UNLIMITED_BITS = 10_000_000_000
# Rates are measured over at least this long (Dragonfly's client samples its interface and CPU over 1 s).
_MIN_SAMPLE_SECONDS = 1.0


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


def interface_of(ip: str) -> str | None:
    """Return the name of the network interface that holds ``ip``, or None."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(addr.address.split("%", 1)[0] == ip for addr in addrs):
            return name
    return None


def instance_name() -> str:
    """Return the host's instance name as Dragonfly's client does: ``{POD_NAMESPACE}-{POD_NAME}``, else hostname."""
    namespace, pod = os.environ.get("POD_NAMESPACE"), os.environ.get("POD_NAME")
    if namespace is not None and pod is not None:
        return f"{namespace}-{pod}"
    return socket.gethostname()


def os_version() -> str:
    """Return the OS release (``VERSION_ID`` of os-release, e.g. ``12`` or ``22.04``), as Dragonfly reports it."""
    try:
        return platform.freedesktop_os_release().get("VERSION_ID", "")
    except OSError:
        return ""


class InterfaceMeter:
    """Receive and transmit rates (bit/s) of one network interface, from the kernel's counters.

    Dragonfly's client announces the traffic of the interface that holds its IP (all processes), measured over
    1 s; this keeps the last sample at least that old and answers the rate since then, so the SyncHost stream
    (every second) and AnnounceHost can both ask without shortening each other's window.
    """

    __slots__ = ("_interface", "_rates", "_samples")

    def __init__(self, interface: str | None) -> None:
        self._interface = interface
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self._rates: tuple[int, int] | None = None
        self._sample()

    def _sample(self) -> tuple[float, int, int] | None:
        if self._interface is None:
            return None
        counters = psutil.net_io_counters(pernic=True).get(self._interface)
        if counters is None:
            return None
        sample = (time.monotonic(), counters.bytes_recv, counters.bytes_sent)
        self._samples.append(sample)
        return sample

    def rates(self) -> tuple[int, int] | None:
        """Return (rx, tx) in bit/s, or None when the interface is unknown."""
        now = self._sample()
        if now is None:
            return None
        # The newest sample that is old enough is the base; older ones are dropped.
        while len(self._samples) > 2 and now[0] - self._samples[1][0] >= _MIN_SAMPLE_SECONDS:
            self._samples.popleft()
        base = self._samples[0]
        elapsed = now[0] - base[0]
        if elapsed >= _MIN_SAMPLE_SECONDS or (self._rates is None and elapsed > 0.1):
            self._rates = (
                round((now[1] - base[1]) * 8 / elapsed),
                round((now[2] - base[2]) * 8 / elapsed),
            )
        return self._rates if self._rates is not None else (0, 0)


class CpuMeter:
    """Host and process CPU use in percent, measured over at least a second like Dragonfly's client.

    ``psutil.cpu_percent(None)`` answers for the time since its previous call; right after start that is a few
    milliseconds and the figure is noise (100 % was seen on a first announcement). Until a full second has passed,
    the one-minute load average per core stands in for the host figure.
    """

    __slots__ = ("_host", "_logical", "_process", "_process_percent", "_started", "_times")

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self._logical = psutil.cpu_count() or 1
        self._process.cpu_percent(None)
        self._times = psutil.cpu_times()
        self._started = time.monotonic()
        self._host: float | None = None
        self._process_percent = 0.0

    def percents(self) -> tuple[float, float]:
        """Return (host percent, process percent of all cores), both in [0, 100]."""
        now = time.monotonic()
        if now - self._started >= _MIN_SAMPLE_SECONDS:
            times = psutil.cpu_times()
            busy = _busy(times) - _busy(self._times)
            total = sum(times) - sum(self._times)
            if total > 0:
                self._host = 100.0 * busy / total
            # psutil counts a process's use per core (up to 100 x cores); Dragonfly divides by the core count.
            self._process_percent = self._process.cpu_percent(None) / self._logical
            self._times, self._started = times, now
        host = self._host if self._host is not None else 100.0 * os.getloadavg()[0] / self._logical
        return _clamp(host), _clamp(self._process_percent)


def _busy(times: object) -> float:
    fields = times._asdict()  # type: ignore[attr-defined]
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    # guest time is already counted in user and nice (psutil's own cpu_percent does the same).
    return float(sum(fields.values()) - idle - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0))


def _clamp(percent: float) -> float:
    return min(max(percent, 0.0), 100.0)


class HostInfo:
    """Builds ``common.v2.Host`` messages with the meaning Dragonfly's client gives each field (docs/interop.md)."""

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
        #: The proxy's port: the configured one until the proxy listens, then the bound one (0: no proxy).
        self.proxy_port = config.proxy.server.port if config.proxy.enable else 0
        self._upload = upload_traffic
        self._download = download_traffic
        self._process = psutil.Process()
        self._cpu = CpuMeter(self._process)
        self._interface = interface_of(ip)
        self._network = InterfaceMeter(self._interface)
        self._max_bits = self._max_bandwidth_bits()
        self._name = instance_name()
        self._os_version = os_version()

    def _max_bandwidth_bits(self) -> int:
        """Return the upload rate limit in bit/s, capped by the speed of the interface that holds the host IP.

        This is what Dragonfly's client announces as both max_tx_bandwidth and max_rx_bandwidth; an interface
        without a known speed (loopback, most virtual NICs) leaves the rate limit alone.
        """
        limit_bits = int(self._config.upload.bandwidth_limit * 8)
        speed = 0
        if self._interface is not None:
            stats = psutil.net_if_stats().get(self._interface)
            speed = stats.speed if stats is not None and stats.speed > 0 else 0
        if limit_bits <= 0:
            return speed * 1_000_000 if speed else _UNLIMITED_BITS
        return min(speed * 1_000_000, limit_bits) if speed else limit_bits

    def network(self) -> common_pb2.Network:
        host = self._config.host
        network = common_pb2.Network(max_rx_bandwidth=self._max_bits, max_tx_bandwidth=self._max_bits)
        rates = self._network.rates()
        if rates is not None:
            network.rx_bandwidth, network.tx_bandwidth = rates
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
        # Dragonfly counts as used all that an unprivileged writer cannot use (reserved blocks included).
        disk_used = disk.total - disk.free
        uname = platform.uname()
        cpu_percent, process_percent = self._cpu.percents()
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
            platform_version=self._os_version,
            kernel_version=uname.release,
            cpu=common_pb2.CPU(
                logical_count=psutil.cpu_count() or 1,
                physical_count=psutil.cpu_count(logical=False) or 1,
                percent=cpu_percent,
                process_percent=process_percent,
            ),
            memory=common_pb2.Memory(
                total=vm.total,
                available=vm.available,
                used=vm.total - vm.available,
                used_percent=_clamp(vm.percent),
                process_used_percent=_clamp(self._process.memory_percent()),
                free=vm.free,
            ),
            network=self.network(),
            disk=common_pb2.Disk(
                total=disk.total,
                free=disk.free,
                used=disk_used,
                used_percent=_clamp(disk_used * 100.0 / disk.total) if disk.total else 0.0,
            ),
            build=common_pb2.Build(git_version=__version__, platform=uname.machine),
            disable_shared=self._config.upload.disable_shared,
            proxy_port=self.proxy_port,
            name=self._name,
        )
