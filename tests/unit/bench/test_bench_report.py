import json
from pathlib import Path

import pytest

from bench.swarm.agent import parse_aria2_progress, parse_curl_json, parse_dfget_output
from bench.swarm.bound import kumar_ross_bound
from bench.swarm.hosts import parse_proc_net_dev
from bench.swarm.report import (
    FIRST_BYTE_THRESHOLD,
    HostResult,
    SwarmRun,
    SystemResult,
    counter_delta,
    host_result_from_events,
    target_misses,
    wire_first_bytes,
    write_plot,
)

MIB = 1 << 20


def test_host_result_from_events() -> None:
    events = [
        {"event": "ready", "t": 99.0},
        {"event": "start", "t": 100.1},
        {"event": "first_byte", "t": 100.5},
        {"event": "finish", "t": 112.0, "ok": True, "bytes": 64 * MIB, "by_source": {"seed": 40, "peers": 24}},
    ]
    result = host_result_from_events("p1", 100.0, events)
    assert result.start == pytest.approx(0.1)
    assert result.first_byte == pytest.approx(0.5)
    assert result.finish == pytest.approx(12.0)
    assert result.ok
    assert result.bytes == 64 * MIB
    assert result.by_source == {"seed": 40, "peers": 24}


def test_host_result_uses_wire_first_byte_and_reports_failures() -> None:
    events = [{"event": "start", "t": 100.0}, {"event": "finish", "t": 101.0, "ok": False, "bytes": 0, "error": "boom"}]
    result = host_result_from_events("p2", 100.0, events, wire_first_byte=100.25)
    assert result.first_byte == pytest.approx(0.25)
    assert result.finish is None
    assert not result.ok
    assert result.error == "boom"
    missing = host_result_from_events("p3", 100.0, [{"event": "start", "t": 100.0}])
    assert not missing.ok
    assert missing.error == "no result (timed out or crashed)"


def _run(systems: list[SystemResult]) -> SwarmRun:
    bound = kumar_ross_bound(100 * MIB, 10 * MIB, [20 * MIB] * 2, [20 * MIB] * 2)  # 10 s, origin-bound
    return SwarmRun("netns", 2, 100 * MIB, 10 * MIB, 20 * MIB, 0.0, "tmpfs", bound, systems)


def _host(name: str, finish: float, **kw: object) -> HostResult:
    return HostResult(name, 0.0, 0.5, finish, True, 100 * MIB, **kw)  # type: ignore[arg-type]


def test_summary_against_bound() -> None:
    ours = SystemResult("ours", [_host("p1", 11.0), _host("p2", 12.5)], 102 * MIB, "veth")
    summary = ours.summary(100 * MIB, _run([ours]).bound)
    assert summary["makespan"] == 12.5
    assert summary["p50"] == pytest.approx(11.75)
    assert summary["efficiency"] == pytest.approx(10.0 / 12.5)
    assert summary["origin_ratio"] == pytest.approx(1.02)
    assert summary["completed"] == "2/2"
    assert summary["ok"]
    assert summary["cpu_seconds_per_gib"] is None
    # CPU per GiB delivered: 200 MiB delivered for 5 CPU seconds.
    ours.cpu_seconds = 5.0
    assert ours.summary(100 * MIB, _run([ours]).bound)["cpu_seconds_per_gib"] == pytest.approx(5.0 / (200 / 1024))
    assert "| 25.60 |" in _run([ours]).markdown()


def test_summary_of_partial_failure_has_no_makespan() -> None:
    failed = HostResult("p2", 0.0, None, None, False, 0, error="sha256 mismatch")
    result = SystemResult("direct", [_host("p1", 20.0), failed], 200 * MIB, "veth")
    summary = result.summary(100 * MIB, _run([result]).bound)
    assert summary["makespan"] is None
    assert summary["efficiency"] is None
    assert summary["completed"] == "1/2"
    assert summary["error"] == "sha256 mismatch"


def test_markdown_and_json(tmp_path: Path) -> None:
    ours = SystemResult("ours", [_host("p1", 11.0, by_source={"seed": 60 * MIB, "peers": 40 * MIB})], MIB, "veth")
    direct = SystemResult("direct", [_host("p1", 22.0)], 100 * MIB, "veth")
    bt = SystemResult("bittorrent", [], None, "not measured", error="aria2c is not installed")
    run = _run([ours, direct, bt])
    text = run.markdown()
    assert "Kumar–Ross bound 10.00 s (binding term F/u_s" in text
    assert "| ours | 1/1 | 11.00 | 11.00 | 0.50 | 0.909 | 0.010 |  |" in text
    assert "| direct | 1/1 | 22.00 | 22.00 | 0.50 | 0.455 | 1.000 | 2.00 |" in text
    assert "- bittorrent: aria2c is not installed" in text
    data = json.loads(json.dumps(run.to_json()))
    assert data["bound"]["seconds"] == pytest.approx(10.0)
    assert [s["system"] for s in data["summary"]] == ["ours", "direct", "bittorrent"]
    write_plot(run, tmp_path / "swarm.png")
    assert (tmp_path / "swarm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loopback_runs_are_labelled() -> None:
    run = _run([])
    run.mode = "loopback"
    assert "LOOPBACK FALLBACK (application-level rate limits; lower fidelity" in run.markdown()


def test_wire_counters() -> None:
    samples = [
        {"t": 1.0, "c": {"v0": [10, 100], "v1": [0, 0]}},
        {"t": 1.05, "c": {"v0": [20, 100 + FIRST_BYTE_THRESHOLD - 1], "v1": [0, 5000]}},
        {"t": 1.10, "c": {"v0": [30, 100 + FIRST_BYTE_THRESHOLD], "v1": [0, 10 * MIB]}},
        {"t": 1.15, "c": {"v0": [40, 100 + 2 * FIRST_BYTE_THRESHOLD], "v1": [7, 20 * MIB]}},
    ]
    assert wire_first_bytes(samples, {"p1": "v0", "p2": "v1"}) == {"p1": 1.10, "p2": 1.10}
    assert counter_delta(samples, "v0") == (30, 2 * FIRST_BYTE_THRESHOLD)
    assert counter_delta(samples, "v9") is None
    assert counter_delta(samples[:1], "v0") is None


def test_parse_proc_net_dev() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls\n"
        "    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0\n"
        "    v0: 5368709 3785    0    0    0     0          0         0 1073741824 9001    0    0    0     0\n"
    )
    assert parse_proc_net_dev(text) == {"lo": (120, 120), "v0": (5368709, 1073741824)}


def test_parse_curl_json() -> None:
    line = json.dumps({"http_code": 200, "size_download": 1048576, "time_starttransfer": 0.012, "time_total": 0.4})
    assert parse_curl_json("noise\n" + line) == {
        "ok": True,
        "bytes": 1048576,
        "first_byte_seconds": 0.012,
        "total_seconds": 0.4,
        "error": "",
    }
    failed = parse_curl_json(json.dumps({"http_code": 404, "size_download": 0, "errormsg": "404 Not Found"}))
    assert not failed["ok"]
    assert failed["error"] == "404 Not Found"


def test_parse_aria2_progress() -> None:
    assert parse_aria2_progress(None) == (0, 0, False, "")
    status = {"status": "active", "completedLength": "100", "totalLength": "200"}
    assert parse_aria2_progress(status) == (100, 200, False, "")
    assert parse_aria2_progress({**status, "completedLength": "200"}) == (200, 200, True, "")
    # A torrent whose size is not known yet is not done, even at 0 of 0.
    assert parse_aria2_progress({"status": "active", "completedLength": "0", "totalLength": "0"})[2] is False
    error = {"status": "error", "completedLength": "5", "totalLength": "200", "errorMessage": "No peers"}
    assert parse_aria2_progress(error) == (5, 200, False, "No peers")


def test_parse_dfget_output() -> None:
    text = (
        "dfget: task 4f2a peer 10.77.0.5-p1-1\n"
        "dfget: saved /dev/shm/out/blob: 1073741824 bytes (1.00 GiB) in 12.31s (83.2 MiB/s); "
        "from origin=0 seed=700000000 peers=373741824 local=0\n"
    )
    assert parse_dfget_output(text) == {"origin": 0, "seed": 700000000, "peers": 373741824, "local": 0}
    assert parse_dfget_output("dfget: error: origin answered HTTP 404\n") == {}


def test_competing_processes_are_named_in_the_conditions() -> None:
    ours = SystemResult("ours", [_host("p1", 11.0)], 100 * MIB, "veth")
    run = _run([ours])
    assert "kept busy" not in run.markdown()
    run.cpu_hogs = 1
    assert "one core kept busy by competing processes throughout each run" in run.markdown()
    assert run.to_json()["cpu_hogs"] == 1


def test_limits_name_what_ours_misses() -> None:
    ours = SystemResult("ours", [_host("p1", 11.0), _host("p2", 12.5)], 102 * MIB, "veth")  # 0.8, 1.02 F
    run = _run([ours, SystemResult("bittorrent", [_host("p1", 30.0)], 300 * MIB, "veth")])
    assert target_misses(run) == []
    assert target_misses(run, min_efficiency=0.8, max_origin_ratio=1.02) == []
    assert target_misses(run, min_efficiency=0.85, max_origin_ratio=1.01) == [
        "ours: efficiency 0.800 is below --min-efficiency 0.85",
        "ours: origin bytes 1.020 F exceed --max-origin-ratio 1.01",
    ]
    ours.hosts[1] = HostResult("p2", 0.0, None, None, False, 0, error="sha256 mismatch")
    assert target_misses(run, min_efficiency=0.5) == [
        "ours: efficiency no makespan (a peer failed) is below --min-efficiency 0.5"
    ]
