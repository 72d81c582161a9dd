"""dfdaemon.yaml: Dragonfly's keys and defaults, warnings for unknown keys, errors naming the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dragonfly.common.errors import ConfigError
from dragonfly.daemon.config import DfdaemonConfig, load_dfdaemon_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dfdaemon.yaml"
    path.write_text(text)
    return path


def test_defaults_match_dragonfly() -> None:
    config = load_dfdaemon_config(None)
    assert config.download.server.socket_path == "/var/run/dragonfly/dfdaemon.sock"
    assert config.download.concurrent_piece_count == 8
    assert config.download.piece_timeout == 360.0
    assert config.download.collected_piece_timeout == 360.0
    assert config.download.bandwidth_limit == 50e9
    assert config.download.back_to_source_bandwidth_limit == 50e9
    assert config.upload.server.port == 4000
    assert config.upload.bandwidth_limit == 50e9
    assert config.upload.disable_shared is False
    assert config.storage.server.tcp_port == 4005
    assert config.storage.dir == "/var/lib/dragonfly/"
    assert config.storage.keep is False
    assert config.metrics.server.port == 4002
    assert config.health.server.port == 4003
    assert config.scheduler.announce_interval == 300.0
    assert config.scheduler.schedule_timeout == 3 * 3600.0
    assert config.scheduler.max_schedule_count == 5
    assert config.seed_peer.enable is False
    assert config.seed_peer.type == "super"
    assert config.gc.interval == 900.0
    assert config.gc.policy.task_ttl == 30 * 86400.0
    assert config.gc.policy.disk_high_threshold_percent == 80
    assert config.gc.policy.disk_low_threshold_percent == 60
    assert config.host_type == 0


def test_camel_case_keys_and_human_units(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
host: {hostname: peer-1, ip: 127.0.0.1, idc: idc-a, location: "cn|hz"}
seedPeer: {enable: true, type: super}
scheduler: {addrs: ["127.0.0.1:8002", "127.0.0.1:8003"], announceInterval: 1m, scheduleTimeout: 30s}
download:
  server: {socketPath: /tmp/x.sock}
  concurrentPieceCount: 16
  pieceTimeout: 90s
  bandwidthLimit: 20MiB/s
  backToSourceBandwidthLimit: 800Mbit
upload: {server: {ip: 127.0.0.1, port: 0}, bandwidthLimit: 1GB/s, disableShared: true}
storage: {dir: /tmp/store, keep: true, server: {tcpPort: 0}, writeBufferSize: 1MiB}
gc: {interval: 1h, policy: {taskTTL: 720h, distHighThresholdPercent: 90, diskLowThresholdPercent: 70}}
backend: {requestHeader: {X-Test: "1"}, maxRetries: 3}
""",
    )
    config = load_dfdaemon_config(path)
    assert config.host.hostname == "peer-1"
    assert config.host_type == 1
    assert config.scheduler.addrs == ["127.0.0.1:8002", "127.0.0.1:8003"]
    assert config.scheduler.announce_interval == 60.0
    assert config.download.concurrent_piece_count == 16
    assert config.download.bandwidth_limit == 20 * 1024 * 1024
    assert config.download.back_to_source_bandwidth_limit == 100e6
    assert config.upload.bandwidth_limit == 1e9
    assert config.storage.write_buffer_size == 1024 * 1024
    assert config.gc.policy.task_ttl == 720 * 3600.0
    assert config.gc.policy.disk_high_threshold_percent == 90
    assert config.backend.request_header == {"X-Test": "1"}


def test_unknown_keys_warn_naming_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "download: {prefetch: true}\nstats: {server: {port: 4004}}\n")
    with caplog.at_level(logging.WARNING):
        assert load_dfdaemon_config(path) == DfdaemonConfig()
    # One warning lists every key this implementation does not read.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].endswith("keys not implemented here, ignored: download.prefetch, stats")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("download: {concurrentPieceCount: zero}\n", "download.concurrentPieceCount"),
        ("download: {concurrentPieceCount: 0}\n", "download"),
        ("download: {pieceTimeout: soon}\n", "download.pieceTimeout"),
        ("upload: {bandwidthLimit: fast}\n", "upload.bandwidthLimit"),
        ("upload: {server: {port: 70000}}\n", "upload.server"),
        ("seedPeer: {type: mega}\n", "seedPeer"),
        ("scheduler: {addrs: [nohostport]}\n", "scheduler"),
        ("download: {protocol: quic}\n", "download"),
        ("gc: {policy: {diskLowThresholdPercent: 95}}\n", "gc.policy"),
        ("storage: {keep: maybe}\n", "storage.keep"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_dfdaemon_config(path)
    assert f"{path}: {key}: " in str(info.value)
