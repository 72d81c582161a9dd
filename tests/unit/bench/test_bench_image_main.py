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


def _one_run(ttfb: float, egress: float, total: float) -> dict[str, float]:
    return {"ttfb_ours_over_direct": ttfb, "egress_ours_over_image": egress, "total_ours_over_direct": total}


def test_repeated_pulls_are_judged_by_their_median_first_byte_and_worst_egress() -> None:
    runs = [_one_run(3.0, 1.02, 1.1), _one_run(0.9, 1.01, 0.8), _one_run(1.2, 1.04, 1.0)]
    assert pull.overall(runs) == {
        "ttfb_ours_over_direct": 1.2,
        "egress_ours_over_image": 1.04,
        "total_ours_over_direct": 1.0,
    }


def test_repeat_must_be_a_positive_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        pull.main(["--repeat", "0"])
    assert "--repeat: must be at least 1, got 0" in capsys.readouterr().err


def test_a_repeated_report_shows_every_run_and_the_medians() -> None:
    def phase(ttfb: float) -> dict[str, float]:
        return {
            "registry_egress_bytes": 1048576,
            "egress_ratio": 1.0,
            "largest_layer_ttfb_median": ttfb,
            "largest_layer_ttfb_max": ttfb,
            "total_seconds": 1.0,
        }

    runs = [
        {"direct": phase(0.1), "ours": phase(0.3), "ratios": _one_run(3.0, 1.0, 1.0)},
        {"direct": phase(0.1), "ours": phase(0.09), "ratios": _one_run(0.9, 1.0, 1.0)},
    ]
    report = {"image_bytes": 1048576, "layers": [1048576], "clients": 3, "origin_head": "default", "runs": runs}
    text = pull.format_report({**report, "ratios": pull.overall([r["ratios"] for r in runs])})
    assert "1: ours" in text
    assert "2: direct" in text
    assert "ours/direct: first byte 3.00 x" in text
    assert "ours/direct: first byte 0.90 x" in text
    assert "(median of 2 runs; egress: the largest)" in text
    assert "first byte of the largest layer 1.95 x direct" in text
