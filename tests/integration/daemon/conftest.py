"""Fixtures of the daemon's integration tests (the launcher itself is in daemon_swarm.py).

Debugging: ``DFD_KEEP=1`` keeps the work directory (configs, logs, storage) and ``DFD_LOG_LEVEL=debug`` raises the
scheduler's log level.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_swarm import CountingOrigin, Swarm


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    """A short directory (unix socket paths hold 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="dfd-"))
    yield path
    if not os.environ.get("DFD_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def origin(short_dir: Path) -> Iterator[CountingOrigin]:
    directory = short_dir / "origin"
    directory.mkdir()
    with CountingOrigin(directory) as server:
        yield server


@pytest.fixture(scope="module")
def swarm(short_dir: Path) -> Iterator[Swarm]:
    """A scheduler, a seed peer and two peers."""
    cluster = Swarm(short_dir)
    try:
        cluster.start_scheduler()
        cluster.start_daemons(
            {
                "seed": cluster.daemon_config("seed", seed=True),
                "peer-1": cluster.daemon_config("peer-1"),
                "peer-2": cluster.daemon_config("peer-2"),
            }
        )
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
