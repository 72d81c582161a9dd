"""The dfdaemon's manager client: Dragonfly's manager.addr forms and the saved scheduler list."""

from __future__ import annotations

from pathlib import Path

import pytest
from dragonfly_api import common_pb2

from dragonfly.daemon.manager_client import CACHE_FILE, SchedulerDiscovery, manager_target


@pytest.mark.parametrize(
    ("addr", "target"),
    [
        ("http://dragonfly-manager:65003", "dragonfly-manager:65003"),
        ("https://m.example:65003/", "m.example:65003"),
        ("10.0.0.1:65003", "10.0.0.1:65003"),
        ("[::1]:65003", "[::1]:65003"),
    ],
)
def test_manager_addr_forms(addr: str, target: str) -> None:
    assert manager_target(addr) == target


async def test_saved_list_round_trips_and_bad_files_are_ignored(tmp_path: Path) -> None:
    discovery = SchedulerDiscovery(
        "127.0.0.1:1", host=common_pb2.Host, cache_dir=tmp_path, manager_tls=None, scheduler_tls=None
    )
    try:
        assert discovery.load_cached() == []
        discovery.save(["10.0.0.1:8002", "10.0.0.2:8002"])
        assert discovery.load_cached() == ["10.0.0.1:8002", "10.0.0.2:8002"]
        for text in ("{not json", '{"schedulers": "10.0.0.1:8002"}', '{"schedulers": [1, 2]}', "[]"):
            (tmp_path / CACHE_FILE).write_text(text)
            assert discovery.load_cached() == []
    finally:
        await discovery.close()
