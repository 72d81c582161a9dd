"""Fixtures of the daemon's integration tests: one demo origin and one LocalCluster shared by the module.

Configs, logs and storage stay under pytest's temporary directory (``--basetemp`` picks it) for debugging.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dragonfly.cli.cluster import LocalCluster, OriginProcess


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("daemon")


@pytest.fixture(scope="module")
def origin(module_dir: Path) -> Iterator[OriginProcess]:
    directory = module_dir / "origin"
    directory.mkdir()
    with OriginProcess(directory, module_dir / "origin.log") as server:
        yield server


@pytest.fixture(scope="module")
def cluster(module_dir: Path) -> Iterator[LocalCluster]:
    """A scheduler, a seed peer and two peers."""
    daemon_config = {"scheduler": {"announceInterval": "5s"}, "download": {"collectedPieceTimeout": "10s"}}
    with LocalCluster(
        module_dir / "cluster", peers=2, daemon_config=daemon_config, start_timeout=30, stop_timeout=20
    ) as started:
        yield started
