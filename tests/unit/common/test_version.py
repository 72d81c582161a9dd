"""One version for the three distributions: the Cargo workspace's, seen the same everywhere it surfaces."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import dragonfly
from dragonfly.common import native

REPO = Path(__file__).resolve().parents[3]


def cargo_version() -> str:
    with (REPO / "Cargo.toml").open("rb") as cargo:
        version: str = tomllib.load(cargo)["workspace"]["package"]["version"]
    return version


def test_package_version_is_the_cargo_workspace_version() -> None:
    assert dragonfly.__version__ == cargo_version()
    assert importlib.metadata.version("dragonfly-p2p") == cargo_version()


def test_native_modules_are_checked_against_the_same_version() -> None:
    assert cargo_version() == native.NATIVE_VERSION
    for part in ("hashing", "piece_io", "bitmap"):
        assert native.implementations(part)["native"].__version__ == cargo_version(), part


def test_installed_native_distributions_are_pinned_to_exactly_this_version() -> None:
    requirements = [Requirement(text) for text in importlib.metadata.requires("dragonfly-p2p") or []]
    pins = {req.name: str(req.specifier) for req in requirements if req.name.startswith("dragonfly-native-")}
    assert pins == {
        "dragonfly-native-hashing": f"=={cargo_version()}",
        "dragonfly-native-piece-io": f"=={cargo_version()}",
    }
    for name in pins:
        assert importlib.metadata.version(name) == cargo_version()


def test_no_other_file_writes_the_version_down() -> None:
    """The version is typed once (Cargo.toml); any other literal copy would drift at the next release."""
    version = cargo_version()
    needle = f'"{version}"'
    offenders = []
    for pattern in ("dragonfly/**/*.py", "ext/**/*.toml", "ext/**/*.pyx", "ext/**/*.rs", "pyproject.toml", "setup.py"):
        for path in REPO.glob(pattern):
            if path.name == "_version.py":  # generated from Cargo.toml by setup.py
                continue
            if needle in path.read_text(encoding="utf-8"):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
