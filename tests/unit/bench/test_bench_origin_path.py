"""bench origin: the report, and the regression check that fails a run whose origin path costs too much CPU."""

from __future__ import annotations

from typing import Any

import pytest

from bench import origin_path


def _report(ours: float) -> dict[str, Any]:
    per_gib = {
        "ours": ours,
        "ours-whole-piece-writes": 1.7,
        "ours-through-aiohttp": 2.4,
        "ours-read-back": 2.2,
        "curl": 1.0,
    }
    return {
        "size": 256 << 20,
        "repeat": 3,
        "rate": 0.0,
        "load": 1.5,
        "cpu_seconds": {},
        "cpu_per_gib": per_gib,
        "ratio_to_curl": {system: value / per_gib["curl"] for system, value in per_gib.items()},
        "ready_after_last_byte_ms": {
            "ours": {"p50": 0.9, "p90": 11.1},
            "ours-whole-piece-writes": {"p50": 6.1, "p90": 20.1},
            "ours-through-aiohttp": {"p50": 1.2, "p90": 4.3},
            "ours-read-back": {"p50": 5.3, "p90": 17.0},
        },
    }


def test_the_report_gives_each_system_its_cpu_per_gib_and_ratio_to_curl() -> None:
    text = origin_path.format_report(_report(1.8))
    assert "256 MiB" in text
    assert "median of 3" in text
    assert "from nginx" in text
    assert "| ours | 1.80 | 1.80 | 0.9 / 11.1 |" in text
    assert "| ours-whole-piece-writes | 1.70 | 1.70 | 6.1 / 20.1 |" in text
    assert "| ours-through-aiohttp | 2.40 | 2.40 | 1.2 / 4.3 |" in text
    assert "| ours-read-back | 2.20 | 2.20 | 5.3 / 17.0 |" in text
    assert "| curl | 1.00 | 1.00 | — |" in text


def test_the_report_names_a_capped_origin() -> None:
    report = _report(1.8)
    report["rate"] = 50e6
    assert "capped at 400 Mbit/s, one piece at a time" in origin_path.format_report(report)


@pytest.mark.parametrize(("ours", "limit", "status"), [(1.8, 2.0, 0), (2.5, 2.0, 1), (2.5, None, 0)])
def test_max_curl_ratio_fails_the_run_above_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ours: float, limit: float | None, status: int
) -> None:
    monkeypatch.setattr(origin_path, "run", lambda workdir, size, repeat, rate: _report(ours))
    monkeypatch.setattr(origin_path, "release_builds_missing", lambda prog: False)
    argv = ["--size", "1MiB"] + ([] if limit is None else ["--max-curl-ratio", str(limit)])
    assert origin_path.main(argv) == status
    if status:
        assert "ours uses 2.50 × curl's CPU per GiB, above --max-curl-ratio 2" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--repeat", "0"], ["--rate", "400"]], ids=["repeat 0", "rate without unit"])
def test_bad_arguments_are_refused(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setattr(origin_path, "release_builds_missing", lambda prog: False)
    with pytest.raises(SystemExit):
        origin_path.main(argv)
