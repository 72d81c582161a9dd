"""bench small-files: distinct files, a copy that differs is caught, a failed fetch fails the client, the ratio
limit fails the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.small_files import over_limit, verify, write_files
from bench.swarm import agent


def test_files_are_distinct_and_a_wrong_copy_is_named(tmp_path: Path) -> None:
    digests = write_files(tmp_path / "origin", 3, 3000)
    assert len(set(digests.values())) == 3
    copy = tmp_path / "p1"
    copy.mkdir()
    for name in digests:
        (copy / name).write_bytes((tmp_path / "origin" / name).read_bytes())
    assert verify({"p1": copy}, digests) == ""
    data = bytearray((copy / "f1.bin").read_bytes())
    data[-1] ^= 1
    (copy / "f1.bin").write_bytes(bytes(data))
    assert verify({"p1": copy}, digests) == "p1: f1.bin differs from the origin's"
    (copy / "f2.bin").unlink()
    assert verify({"p1": copy}, digests) == "p1: f1.bin differs from the origin's"
    (copy / "f1.bin").write_bytes((tmp_path / "origin" / "f1.bin").read_bytes())
    assert verify({"p1": copy}, digests) == "p1: no f2.bin"


def test_a_failed_fetch_ends_the_client_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fetched: list[str] = []

    def fake_dfget(spec: dict[str, Any]) -> Any:
        def fetch(url: str, output: str) -> dict[str, int]:
            if url.endswith("f1.bin"):
                raise RuntimeError("dfget exited with 1")
            fetched.append(url)
            Path(output).write_bytes(b"x" * 10)
            return {"seed": 10}

        return fetch

    monkeypatch.setattr(agent, "_fetch_by_dfget", fake_dfget)
    spec = {"kind": "files", "client": "dfget", "base": "http://o/", "names": ["f0.bin", "f1.bin", "f2.bin"],
            "dir": str(tmp_path), "endpoint": "", "dfget": []}  # fmt: skip
    assert agent.run_files(spec, lambda: None) == 1
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["ready", "start", "finish"]
    assert fetched == ["http://o/f0.bin"]
    assert events[-1]["ok"] is False
    assert events[-1]["error"] == "RuntimeError: dfget exited with 1"
    assert events[-1]["bytes"] == 10


def test_every_file_fetched_adds_up_its_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_api(spec: dict[str, Any]) -> Any:
        def fetch(url: str, output: str) -> dict[str, int]:
            Path(output).write_bytes(b"y" * 4)
            return {"seed": 4} if url.endswith("f0.bin") else {"peers": 4}

        return fetch

    monkeypatch.setattr(agent, "_fetch_by_api", fake_api)
    spec = {"kind": "files", "client": "api", "base": "http://o/", "names": ["f0.bin", "f1.bin", "f2.bin"],
            "dir": str(tmp_path), "endpoint": "", "dfget": []}  # fmt: skip
    assert agent.run_files(spec, lambda: None) == 0
    finish = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert finish["ok"] is True
    assert finish["by_source"] == {"seed": 4, "peers": 8}
    assert finish["bytes"] == 12


def test_the_makespan_limit_fails_a_slower_run_and_a_run_without_a_ratio() -> None:
    report = {"ratios": {"ours_makespan_vs_direct": 0.62}}
    assert over_limit(report, None) is None
    assert over_limit(report, 0.7) is None
    assert over_limit(report, 0.5) == "ours' makespan is 0.62 × direct's, above --max-makespan-ratio 0.5"
    assert over_limit({"ratios": {}}, 0.5) == "--max-makespan-ratio: ours or direct did not finish, no ratio to check"
