"""bench pair: the native loop moves the bytes and accounts the CPU time it used."""

from __future__ import annotations

import os
from pathlib import Path

from bench.pair import native_loop


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
