"""scheduler.yaml: Dragonfly's keys and defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dragonfly.common.errors import ConfigError
from dragonfly.scheduler.config import Config, load


def test_defaults_follow_the_reference():
    config = load(None)
    assert isinstance(config, Config)
    scheduler = config.scheduler
    assert (config.server.port, config.metrics.port) == (8002, 8000)
    assert (scheduler.back_to_source_count, scheduler.retry_back_to_source_limit, scheduler.retry_limit) == (200, 4, 5)
    assert (scheduler.retry_interval, scheduler.candidate_parent_limit, scheduler.filter_parent_limit) == (0.5, 4, 15)
    assert (scheduler.peer_concurrent_upload_limit, scheduler.seed_peer_concurrent_upload_limit) == (200, 2000)
    gc = scheduler.gc
    assert (gc.piece_download_timeout, gc.peer_gc_interval, gc.peer_ttl) == (1800, 10, 86400)
    assert (gc.task_gc_interval, gc.host_gc_interval, gc.host_ttl) == (1800, 300, 3600)
    assert scheduler.bad_parent.window_size == 2000
    assert config.seed_peer.task_download_timeout == 36000


def test_yaml_uses_dragonflys_camel_case_keys(tmp_path):
    path = tmp_path / "scheduler.yaml"
    path.write_text(
        "server: {host: 127.0.0.1, port: 0, advertiseIP: 10.0.0.9}\n"
        "scheduler:\n"
        "  backToSourceCount: 3\n"
        "  retryInterval: 50ms\n"
        "  gc: {peerGCInterval: 1s, hostTTL: 2m}\n"
        "  badParent: {coolDown: 5m}\n"
        "blockList:\n"
        "  download: {applications: [bad-app]}\n"
        "  upload: {urls: ['^https://private\\.']}\n"
    )
    config = load(str(path))
    assert (config.server.host, config.server.port, config.server.advertise_ip) == ("127.0.0.1", 0, "10.0.0.9")
    assert (config.scheduler.back_to_source_count, config.scheduler.retry_interval) == (3, 0.05)
    assert (config.scheduler.gc.peer_gc_interval, config.scheduler.gc.host_ttl) == (1, 120)
    assert config.scheduler.bad_parent.cool_down == 300
    assert config.block_list.download.matches("http://x", "bad-app", "")
    assert config.block_list.upload.matches("https://private.example/x", "", "")
    assert not config.block_list.upload.matches("https://public.example/x", "", "")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"scheduler": {"backToSourceCount": 0}},
            "scheduler: backToSourceCount and retryBackToSourceLimit must be > 0",
        ),
        ({"scheduler": {"candidateParentLimit": 21}}, "scheduler: candidateParentLimit must be in 1..20, got 21"),
        ({"scheduler": {"retryInterval": "soon"}}, "scheduler.retryInterval: expected a duration"),
        (
            {"blockList": {"upload": {"urls": ["("]}}},
            "blockList.upload: invalid URL regex: '(' is not a regular expression RE2 accepts",
        ),
        ({"server": {"port": 70000}}, "server: port must be in 0..65535, got 70000"),
        # Issue 8 item 14: Dragonfly's other evaluators were accepted and silently ignored.
        ({"scheduler": {"algorithm": "ml"}}, "scheduler: algorithm 'ml' is not supported by this scheduler"),
        ({"scheduler": {"algorithm": "plugin"}}, "scheduler: algorithm 'plugin' is not supported by this scheduler"),
        ({"scheduler": {"algorithm": "fastest"}}, "scheduler: algorithm must be 'default', got 'fastest'"),
    ],
)
def test_invalid_values_name_their_key(section, message):
    with pytest.raises(ConfigError) as info:
        load(None, overrides=section)
    assert message in str(info.value)


def test_the_scheduler_refuses_a_certificate_without_its_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dragonfly.cli import scheduler as scheduler_cli
    from dragonfly.common import pki

    ca = pki.create_ca("unit")
    ca_cert, _ = ca.write(tmp_path)
    cert, key = pki.issue(ca, "sched", ips=["127.0.0.1"], roles=["peer"]).write(tmp_path, "sched")
    config = tmp_path / "scheduler.yaml"
    config.write_text(f"security: {{caCert: {ca_cert}, cert: {cert}, key: {key}}}\n")
    assert scheduler_cli.main(["--config", str(config)]) == 2
    assert "lacks the scheduler role" in capsys.readouterr().err
    config.write_text("server: {port: 0}\n")  # TLS on, no files: a config error naming the keys
    assert scheduler_cli.main(["--config", str(config)]) == 2
    assert "server.tls: mutual TLS is on" in capsys.readouterr().err
