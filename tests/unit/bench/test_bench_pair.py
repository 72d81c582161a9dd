"""bench pair: the native loop moves the bytes and accounts the CPU time it used."""

from __future__ import annotations

import os
from pathlib import Path

from bench.pair import cpu_regressions, native_loop, speed_regressions


def test_native_loop_copies_and_counts_cpu(tmp_path: Path) -> None:
    source, sink = tmp_path / "source", tmp_path / "sink"
    data = os.urandom(3 << 20)
    source.write_bytes(data)
    cpu: dict[str, float] = {}
    native_loop(source, sink, len(data), cpu)
    native_loop(source, sink, len(data), cpu)
    assert sink.read_bytes() == data
    assert set(cpu) == {"loop"}
    assert cpu["loop"] > 0


def test_cpu_regressions_name_the_methods_over_the_ratio() -> None:
    methods = {
        "native loop": {"cpu_seconds_per_gib": {"loop": 1.5}},
        "ours": {"cpu_seconds_per_gib": {"child dfdaemon": 3.0, "parent dfdaemon": 1.5}},
        "ours (plaintext)": {"cpu_seconds_per_gib": {"child dfdaemon": 2.0, "parent dfdaemon": 0.4}},
    }
    assert cpu_regressions(methods, 4.0) == []
    [message] = cpu_regressions(methods, 2.0)
    assert message == "ours used 4.50 CPU s per GiB, 3.00 x the native loop's 1.50 (allowed 2 x)"
    assert cpu_regressions({"ours": {}}, 2.0) == ["no CPU figure for the native loop to compare with"]


def test_speed_regressions_name_the_methods_below_the_ratio() -> None:
    methods = {
        "native loop": {"seconds": 2.0},
        "ours": {"seconds": 4.0},
        "ours (plaintext)": {"seconds": 2.4},
    }
    assert speed_regressions(methods, 0.5) == []
    [message] = speed_regressions(methods, 0.8)
    assert message == "ours took 4.000 s, 0.50 x the native loop's speed (2.000 s; required 0.8 x)"
    assert len(speed_regressions(methods, 0.9)) == 2
    assert speed_regressions({"native loop": {"seconds": 2.0}}, 0.8) == [
        "no time for ours",
        "no time for ours (plaintext)",
    ]
    assert speed_regressions({"ours": {"seconds": 1.0}}, 0.8) == ["no time for the native loop to compare with"]
