"""Benchmarks measure release builds only: a debug build or the Python twins would make every ratio meaningless."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from dragonfly.common import native

    profiles = native.build_profiles()
    if not native.USING_EXTENSIONS or any(p != "release" for p in profiles.values()):
        raise pytest.UsageError(
            f"benchmarks need release builds of the native extensions, found {profiles}; run scripts/install.sh"
        )
