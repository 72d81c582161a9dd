"""bench pair: the native loop moves the bytes and accounts the CPU time it used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.pair import (
    Reclaim,
    child_timeline,
    cold_page_notes,
    cpu_regressions,
    free_memory,
    main,
    native_loop,
    our_rows,
    reclaim_counters,
    reclaim_notes,
    source_notes,
    speed_regressions,
    timeline_notes,
)
from dragonfly.daemon.storage.metadata import MetadataStore, PieceRecord, TaskRecord


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


VMSTAT = """nr_free_pages 2592000
allocstall_dma 0
allocstall_normal 18683
allocstall_movable 860687
pgsteal_direct 36718291
pgscan_kswapd 476194281
pgscan_direct 1395320680
pgscan_direct_throttle 7
"""


def test_reclaim_counters_read_kswapd_direct_scans_and_every_allocation_stall() -> None:
    assert reclaim_counters(VMSTAT) == {
        "kswapd_pages_scanned": 476194281,
        "pages_scanned": 1395320680,
        "stalls": 18683 + 860687,
    }
    assert reclaim_counters("nr_free_pages 12\n") == {}


def test_reclaim_sums_what_the_kernel_counted_during_each_timed_run(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([{"pages_scanned": 100, "stalls": 5}, {"pages_scanned": 160, "stalls": 5},
                     {"pages_scanned": 500, "stalls": 9}, {"pages_scanned": 540, "stalls": 12}])  # fmt: skip
    free = iter([900 << 20, 300 << 20, 2 << 30, None])
    monkeypatch.setattr("bench.pair.reclaim_counters", lambda: next(readings))
    monkeypatch.setattr("bench.pair.free_memory", lambda: next(free))
    reclaim = Reclaim()
    with reclaim:
        pass
    with reclaim:
        pass
    assert reclaim.totals == {"pages_scanned": 60 + 40, "stalls": 3, "min_free_mib": 300}


def test_free_memory_reads_memfree_in_bytes() -> None:
    assert free_memory("MemTotal:       24683652 kB\nMemFree:          251904 kB\n") == 251904 * 1024
    assert free_memory("MemTotal:       24683652 kB\n") is None


def test_reclaim_with_room_drops_caches_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def drop(needed: int) -> bool:
        asked.append(needed)
        return len(asked) == 1  # short of memory before the first run only

    monkeypatch.setattr("bench.pair.drop_clean_caches", drop)
    monkeypatch.setattr("bench.pair.reclaim_counters", lambda: {"pages_scanned": 7, "stalls": 1})
    monkeypatch.setattr("bench.pair.free_memory", lambda: 4 << 30)
    reclaim = Reclaim(room=2 << 30)
    for _ in range(3):
        with reclaim:
            pass
    assert asked == [2 << 30] * 3
    assert reclaim.totals == {"caches_dropped": 1, "pages_scanned": 0, "stalls": 0, "min_free_mib": 4096}
    with Reclaim():
        pass
    assert len(asked) == 3


def test_reclaim_notes_name_only_the_rows_that_saw_reclaim() -> None:
    methods = {
        "native loop": {"memory": {"kswapd_pages_scanned": 0, "pages_scanned": 0, "stalls": 0, "min_free_mib": 9000}},
        "ours": {"memory": {}},
        "ours (plaintext)": {"memory": {"kswapd_pages_scanned": 4096, "pages_scanned": 0, "min_free_mib": 230}},
    }
    [note] = reclaim_notes(methods)
    assert note.startswith(
        "ours (plaintext): the kernel was reclaiming memory during its runs (machine-wide: kswapd scanned 4096 pages, "
        "allocating processes 0 in 0 stalls; free memory down to 230 MiB)"
    )
    assert reclaim_notes({"ours": {}}) == []
    assert reclaim_notes({"ours": {"memory": {"caches_dropped": 2, "pages_scanned": 0}}}) == [
        "ours: the clean page cache was dropped before 2 of its runs"
    ]


def test_cold_page_notes_name_the_runs_whose_child_system_time_is_the_hosts() -> None:
    methods = {
        "native loop": {},
        "ours": {"child_system_per_gib": [0.87, 0.7, 3.97, 4.97]},
        "ours (plaintext)": {"child_system_per_gib": [1.1, 2.5]},
    }
    assert cold_page_notes(methods) == [
        "ours: the child's system CPU per GiB was run 2 3.97, run 3 4.97 s (usually 0.7-1.2): its writes went into "
        "pages this VM had not used lately, which fault on the host (bench/RESULTS.md §2 'The bimodal child'); such "
        "runs measure that, not the daemon"
    ]
    assert cold_page_notes({"ours": {"error": "boom"}}) == []


def test_cold_page_notes_do_not_excuse_a_row_whose_every_run_is_slow() -> None:
    # Cold pages make some runs slow; a regression of the child's system time makes all of them slow.
    (note,) = cold_page_notes({"ours": {"child_system_per_gib": [3.1, 4.2]}})
    assert note.startswith("ours: the child's system CPU per GiB was run 0 3.10, run 1 4.20 s (usually 0.7-1.2): ")
    assert "or a regression of the child's system time" in note
    assert "not the daemon" not in note


def test_source_notes_name_rows_whose_child_did_not_get_everything_from_its_parent() -> None:
    methods = {
        "native loop": {"seconds": 1.0},
        "ours": {"by_source": {"origin": 0, "seed": 1024, "peers": 0, "local": 0}},
        "ours (plaintext)": {"by_source": {"origin": 768, "seed": 256, "peers": 0, "local": 0}},
    }
    assert source_notes(methods) == [
        "ours (plaintext): the child did not get every byte from its parent: 75% from origin"
    ]


def _task(store: MetadataStore, task_id: str, created: float, finished: float | None) -> None:
    store.put_task(TaskRecord(task_id, "http://o/f", 4, 16, {}, created, created, finished_at=finished))


def test_child_timeline_splits_a_download_into_its_phases_and_finds_the_idle_gaps(tmp_path: Path) -> None:
    store = MetadataStore(str(tmp_path / "dfdaemon.db"))
    # An older finished task and one not finished: neither is the one dfget just ran.
    _task(store, "old", 10.0, 11.0)
    _task(store, "t", 100.25, 103.5)
    _task(store, "unfinished", 101.0, None)
    # Pieces 0 and 1 overlap (100.5-101.5), then nothing is in flight for 0.5 s, then pieces 2 and 3 end at 103.
    for number, start, cost in [(0, 100.5, 0.75), (1, 101.0, 0.5), (2, 102.0, 0.5), (3, 102.25, 0.75)]:
        store.put_piece("t", PieceRecord(number, number * 4, 4, "crc32:0", "p", 1, cost, start))
    store.put_piece("old", PieceRecord(0, 0, 4, "crc32:0", "p", 1, 5.0, 10.0))
    store.close()
    assert child_timeline(tmp_path / "dfdaemon.db", started=100.0, exited=104.0) == {
        "start": 0.25,
        "first_piece": 0.25,
        "pieces": 2.5,
        "idle": 0.5,
        "finish": 0.5,
        "exit": 0.5,
    }


def test_child_timeline_refuses_a_database_without_a_finished_task(tmp_path: Path) -> None:
    store = MetadataStore(str(tmp_path / "dfdaemon.db"))
    _task(store, "unfinished", 1.0, None)
    store.close()
    with pytest.raises(RuntimeError, match="no finished task"):
        child_timeline(tmp_path / "dfdaemon.db", started=0.0, exited=2.0)


def test_child_timeline_of_a_database_that_cannot_be_read_is_the_rows_error(tmp_path: Path) -> None:
    # ours() records a RuntimeError as the row's error; sqlite3's own errors ended the whole bench run.
    with pytest.raises(RuntimeError, match="cannot read the child's pieces"):
        child_timeline(tmp_path / "missing.db", started=0.0, exited=1.0)
    (tmp_path / "other.db").write_bytes(b"not a database" * 100)
    with pytest.raises(RuntimeError, match="cannot read the child's pieces"):
        child_timeline(tmp_path / "other.db", started=0.0, exited=1.0)


def test_timeline_notes_name_each_phase_of_the_rows_that_have_one() -> None:
    timeline = {"start": 0.1, "first_piece": 0.02, "pieces": 1.5, "idle": 0.0, "finish": 0.003, "exit": 0.004}
    assert timeline_notes({"native loop": {"seconds": 1.0}, "ours": {"timeline": timeline}}) == [
        "ours: the child's timeline (median): dfget start → task 0.100 s, → first piece requested 0.020 s, → last "
        "piece's bytes 1.500 s, of which no piece in flight 0.000 s, → task done 0.003 s, → dfget exit 0.004 s"
    ]


def test_our_rows_put_the_variants_asked_for_between_the_default_and_plaintext() -> None:
    assert our_rows() == [("ours", None, True, None, None), ("ours (plaintext)", None, False, None, None)]
    assert [row[0] for row in our_rows(python_tls_server=True, pieces_in_flight=[2, 4])] == [
        "ours",
        "ours (parent on Python ssl)",
        "ours (2 pieces in flight)",
        "ours (4 pieces in flight)",
        "ours (plaintext)",
    ]
    assert our_rows(pieces_in_flight=[2])[1] == ("ours (2 pieces in flight)", "ours-pieces-2", True, None, 2)


@pytest.mark.parametrize("text", ["0", "2,x", "-1", ""])
def test_pieces_in_flight_refuses_anything_but_positive_counts(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--pieces-in-flight", text])
    assert exited.value.code == 2
    assert "--pieces-in-flight" in capsys.readouterr().err
