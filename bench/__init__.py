"""Benchmarks: never part of the test run; every figure is a ratio against a baseline measured in the same run."""

from __future__ import annotations

import sys


def release_builds_missing(prog: str) -> bool:
    """Say why and return True unless the native extensions are release builds: only those are measured."""
    from dragonfly.common import native

    profiles = native.build_profiles()
    if native.USING_EXTENSIONS and all(p == "release" for p in profiles.values()):
        return False
    print(f"{prog}: needs release builds of the native extensions, found {profiles}; run scripts/install.sh",
          file=sys.stderr)  # fmt: skip
    return True
