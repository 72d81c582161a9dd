from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import freed_pages_go_to_host


def test_unknown_suite_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main.main(["nope"]) == 2
    usage = (
        "usage: python -m bench "
        "{swarm,pair,dfget-latency,memory,scheduler,pull,pcache,manager,preheat,small-files,origin,serve,micro,all}"
    )
    assert usage in capsys.readouterr().err


def test_missing_suite_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench_main.SUITES, "scheduler", "bench.no_such_module")
    with pytest.raises(SystemExit, match=r"bench scheduler: bench/no_such_module\.py does not exist yet"):
        bench_main.main(["scheduler"])


def test_all_reports_each_suite(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[str, list[str]]] = []

    def fake_suite(name: str):  # type: ignore[no-untyped-def]
        def run(argv: list[str]) -> int:
            calls.append((name, argv))
            if name == "scheduler":
                raise SystemExit("bench scheduler: missing")
            return 0

        return run

    monkeypatch.setattr(bench_main, "suite_main", fake_suite)
    assert bench_main.main(["all", "--quick"]) == 1
    assert [name for name, _ in calls] == [
        "swarm",
        "pair",
        "dfget-latency",
        "memory",
        "scheduler",
        "pull",
        "pcache",
        "manager",
        "preheat",
        "small-files",
        "origin",
        "serve",
        "micro",
    ]
    assert calls[0][1] == bench_main.QUICK_ARGS["swarm"]
    out = capsys.readouterr()
    assert "scheduler: exit 1" in out.out
    assert "swarm: exit 0" in out.out
    assert "bench scheduler: missing" in out.err


def test_a_suite_runs_against_byte_compiled_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """The processes a suite starts import the checkout: its byte code is written first, as an install does."""
    import subprocess
    import sys

    commands: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kwargs: commands.append(list(argv)))
    bench_main.suite_main("pair")
    assert commands == [
        [sys.executable, "-m", "compileall", "-q", str(bench_main.REPO / "dragonfly"), str(bench_main.REPO / "bench")]
    ]


@pytest.mark.parametrize(("order", "reported"), [("9\n", True), ("10\n", True), ("11\n", False), ("x\n", False)])
def test_freed_pages_go_to_host_reads_the_reporting_order(tmp_path: Path, order: str, reported: bool) -> None:
    (tmp_path / "page_reporting_order").write_text(order)
    assert freed_pages_go_to_host(tmp_path) is reported


def test_freed_pages_stay_without_page_reporting(tmp_path: Path) -> None:
    assert freed_pages_go_to_host(tmp_path / "absent") is False
