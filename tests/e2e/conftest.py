"""End-to-end fixtures: one origin and one cluster per test module (tests in a module share them).

Every process is real and listens on 127.0.0.1; logs are under the module's temporary directory and their tails
are quoted when a process fails to start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dragonfly.cli.cluster import OriginProcess


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])


@pytest.fixture(scope="module")
def origin(module_dir: Path) -> Iterator[OriginProcess]:
    """The demo origin for the whole module; tests create their own files in ``origin.directory``."""
    directory = module_dir / "origin"
    directory.mkdir()
    with OriginProcess(directory, module_dir / "origin.log") as server:
        yield server
