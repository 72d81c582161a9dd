"""Host announcements carry the meaning Dragonfly's Rust client gives each field (issue 10).

A mixed cluster schedules our peers and Dragonfly's by these figures, so each is checked against the client's
definition: network maxima from the upload rate limit capped by the speed of the interface holding the host IP,
measured interface traffic, disk use as total minus available, CPU over a real interval, os-release version,
instance name, configured proxy port. psutil is replaced where a figure would depend on this machine's state.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import psutil
import pytest

from dragonfly.common import validation
from dragonfly.daemon import host_info
from dragonfly.daemon.config import load_dfdaemon_config
from dragonfly.daemon.host_info import HostInfo, TrafficMeter

Counters = collections.namedtuple("Counters", "bytes_recv bytes_sent")


def make(tmp_path: Path, **sections: Any) -> HostInfo:
    config = load_dfdaemon_config(
        None,
        overrides={"host": {"hostname": "unit", "ip": "127.0.0.1"}, "storage": {"dir": str(tmp_path)}, **sections},
    )
    return HostInfo(
        config,
        host_id="127.0.0.1-unit",
        ip="127.0.0.1",
        upload_port=4000,
        upload_traffic=TrafficMeter(),
        download_traffic=TrafficMeter(),
    )


def test_bandwidth_maxima_come_from_the_upload_rate_limit(tmp_path: Path) -> None:
    # Loopback has no speed: the default limit (50 GB/s) is announced as is, 400 Gbit/s, as the Rust client does.
    network = make(tmp_path).network()
    assert (network.max_tx_bandwidth, network.max_rx_bandwidth) == (400_000_000_000, 400_000_000_000)
    limited = make(tmp_path, upload={"bandwidthLimit": "100MB/s"}).network()
    assert limited.max_tx_bandwidth == limited.max_rx_bandwidth == 800_000_000


def test_an_interface_speed_caps_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = psutil.net_if_stats()
    lo = host_info.interface_of("127.0.0.1")
    assert lo is not None
    monkeypatch.setattr(psutil, "net_if_stats", lambda: {lo: stats[lo]._replace(speed=10_000)})
    assert make(tmp_path).network().max_tx_bandwidth == 10_000_000_000


def test_traffic_is_the_interface_rate_over_at_least_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    counters = {"lo": Counters(1_000, 2_000)}
    monkeypatch.setattr(host_info.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(psutil, "net_io_counters", lambda pernic: counters)
    meter = host_info.InterfaceMeter("lo")
    clock[0] += 1.0
    counters["lo"] = Counters(1_000 + 125_000, 2_000 + 250_000)
    assert meter.rates() == (1_000_000, 2_000_000)
    # Asked again 0.2 s later (SyncHost and AnnounceHost interleave): still a rate over a second or more.
    clock[0] += 0.2
    counters["lo"] = Counters(1_000 + 150_000, 2_000 + 250_000)
    assert meter.rates() == (1_000_000, round(250_000 * 8 / 1.2))
    # A second on, with no traffic: the older samples are dropped and the rate is 0.
    clock[0] += 1.0
    assert meter.rates() == (0, 0)
    assert host_info.InterfaceMeter(None).rates() is None


def test_first_cpu_figure_is_not_a_few_milliseconds_of_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_info.os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 2)
    meter = host_info.CpuMeter(psutil.Process())
    host, process = meter.percents()
    assert host == 25.0  # the load average per core stands in until a second has passed
    assert 0.0 <= process <= 100.0


def test_announced_host_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "dragonfly-system")
    monkeypatch.setenv("POD_NAME", "peer-7")
    monkeypatch.setattr(host_info.platform, "freedesktop_os_release", lambda: {"ID": "debian", "VERSION_ID": "12"})
    info = make(tmp_path)
    host = info.host()
    assert host.name == "dragonfly-system-peer-7"
    assert host.platform_version == "12"
    assert (host.os, host.platform, host.platform_family) == ("linux", "linux", "unix")
    assert host.proxy_port == 4001  # the configured port, before the proxy reports the one it bound
    assert host.disk.used == host.disk.total - host.disk.free
    assert host.memory.used == host.memory.total - host.memory.available
    assert 0.0 <= host.cpu.percent <= 100.0
    assert 0.0 <= host.cpu.process_percent <= 100.0
    assert validation.check(host) is None
    monkeypatch.delenv("POD_NAMESPACE")
    assert host_info.instance_name() == host_info.socket.gethostname()
    assert make(tmp_path, proxy={"enable": False}).host().proxy_port == 0
