"""The shared command line of the registry benchmarks: ratio limits make a run a regression check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bench
from bench import pull


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "release_builds_missing", lambda _prog: False)
    monkeypatch.setattr(bench.shutil, "which", lambda tool: f"/usr/bin/{tool}")


def _main(argv: list[str], ttfb_ratio: float) -> int:
    def run(_workdir: Path, _sizes: list[int]) -> dict[str, Any]:
        return {"ratios": {"ttfb_ours_over_direct": ttfb_ratio, "egress_ours_over_image": 1.0}}

    limits = {"--max-ttfb-ratio": ("ttfb_ours_over_direct", "help")}
    return bench.image_bench_main(
        "bench pull", argv, run, repr, layers="1", layers_help="", description="", limits=limits
    )


@pytest.mark.usefixtures("fake_run")
def test_a_ratio_above_its_limit_fails_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(["--max-ttfb-ratio", "1.5"], ttfb_ratio=2.0) == 1
    assert "ttfb_ours_over_direct 2 is above --max-ttfb-ratio 1.5" in capsys.readouterr().err


@pytest.mark.usefixtures("fake_run")
def test_a_ratio_within_its_limit_or_without_one_passes() -> None:
    assert _main(["--max-ttfb-ratio", "1.5"], ttfb_ratio=1.2) == 0
    assert _main([], ttfb_ratio=9.0) == 0


def test_pull_offers_its_limits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        pull.main(["--help"])
    out = capsys.readouterr().out
    assert "--max-ttfb-ratio R" in out
    assert "--max-egress-ratio R" in out
