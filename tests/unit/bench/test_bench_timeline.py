"""The swarm's per-piece timeline: read from the daemons' own metadata databases, then idle time, load, tail."""

from __future__ import annotations

from pathlib import Path

from bench.swarm.timeline import ORIGIN, analyse, parent_host, read_pieces, summary_lines
from dragonfly.daemon.storage.metadata import MetadataStore, PieceRecord

T0 = 1_000_000.0
MIB = 1 << 20


def _store(path: Path, pieces: list[tuple[int, str | None, float, float]]) -> Path:
    """Write pieces (number, parent peer id or None for the origin, start, end) as a daemon would."""
    store = MetadataStore(str(path))
    for number, parent, start, end in pieces:
        record = PieceRecord(number, number * MIB, MIB, "crc32:0", parent, 0 if parent else 1, end - start, T0 + start)
        store.put_piece("task", record)
    store.close()
    return path


def test_peer_ids_name_their_host() -> None:
    assert parent_host("10.0.0.3-p2-8c1f0a2e-3d5b-4c1e-9f00-1a2b3c4d5e6f") == "p2"
    assert parent_host("10.0.0.2-seed-8c1f0a2e-3d5b-4c1e-9f00-1a2b3c4d5e6f-seed") == "seed"


def test_timeline_of_a_small_swarm(tmp_path: Path) -> None:
    seed, p1 = "10.0.0.2-seed-u-seed", "10.0.0.3-p1-u"
    dbs = {
        "seed": _store(tmp_path / "seed.db", [(0, None, 0.0, 1.0), (1, None, 1.0, 2.0)]),
        # p1 waits from 1.5 to 3.0 while the seed holds piece 1 from 2.0: 1.0 s idle.
        "p1": _store(tmp_path / "p1.db", [(0, seed, 1.0, 1.5), (1, seed, 3.0, 3.5)]),
        # p2 waits from 2.0 to 3.6 while piece 1 is at the seed from 2.0: 1.6 s idle; its piece 1 comes from the
        # seed although p1 held it since 3.5. A host that is no parent of p2 holding piece 1 would not count.
        "p2": _store(tmp_path / "p2.db", [(0, p1, 1.6, 2.0), (1, seed, 3.6, 4.0)]),
    }
    events = [event for host, db in dbs.items() for event in read_pieces(db, host, T0)]
    assert {(e.host, e.number, e.source) for e in events} == {
        ("seed", 0, ORIGIN), ("seed", 1, ORIGIN), ("p1", 0, "seed"), ("p1", 1, "seed"), ("p2", 0, "p1"),
        ("p2", 1, "seed"),
    }  # fmt: skip
    timeline = analyse(events, ["p1", "p2"], 2 * MIB)
    assert timeline["origin"] == {"first_start": 0.0, "first_end": 1.0, "last_end": 2.0, "rate_mb_s": 1.0, "pieces": 2}
    assert timeline["tail_s"] == 2.0
    assert timeline["peers"]["p1"]["idle_s"] == 1.0
    assert timeline["peers"]["p2"]["idle_s"] == 1.6
    # Only the seed held piece 1 for p1's whole wait, and for p2's until p1 stored it at 3.5.
    assert timeline["peers"]["p1"]["idle_seed_only_s"] == 1.0
    assert timeline["peers"]["p2"]["idle_seed_only_s"] == 1.5
    assert timeline["peers"]["p1"]["held_at_origin_end"] == 0.5
    assert timeline["peers"]["p2"]["from"] == {"p1": 1, "seed": 1}
    assert timeline["seed_uploads"] == 3
    assert timeline["seed_uploads_already_at_a_peer"] == 1
    assert timeline["parents"]["seed"]["uploaded_f"] == 1.5
    assert timeline["parents"]["p1"]["pieces"] == 1
    assert timeline["piece_spread_s_max"] == 0.5
    assert len(timeline["pieces"]) == 6
    lines = summary_lines("ours", timeline)
    assert "tail 2.0 s" in lines[0]
    assert "seed uploaded 3 pieces (1 already at a peer)" in lines[1]


def test_a_host_without_a_database_has_no_pieces(tmp_path: Path) -> None:
    assert read_pieces(tmp_path / "missing.db", "p1", T0) == []
