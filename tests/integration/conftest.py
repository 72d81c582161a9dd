"""Fixtures for tests against real processes: the demo origin and a LocalCluster, both on 127.0.0.1."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dragonfly.cli.cluster import LocalCluster, OriginProcess


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path, for unix sockets (sun_path holds 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="df-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OriginProcess]:
    """The demo origin serving ``tmp_path / "origin"``; put files there and fetch ``origin.url(name)``."""
    directory = tmp_path / "origin"
    directory.mkdir()
    with OriginProcess(directory, tmp_path / "origin.log") as server:
        yield server


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Start LocalClusters (keyword arguments as LocalCluster's); every one is stopped at teardown."""
    clusters: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster-{len(clusters)}", **kwargs)
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()
