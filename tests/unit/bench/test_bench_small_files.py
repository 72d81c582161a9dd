"""bench small-files: every client fetches every file; a failed fetch fails the run."""

from __future__ import annotations

import threading

import pytest

from bench.small_files import _each_client


def test_each_client_fetches_every_file_in_order() -> None:
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    def fetch(client: str, i: int) -> None:
        with lock:
            seen.setdefault(client, []).append(i)

    assert _each_client(["a", "b", "c"], 4, fetch) >= 0
    assert seen == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]}


def test_a_failed_fetch_fails_the_run() -> None:
    def fetch(client: str, i: int) -> None:
        if client == "b" and i == 2:
            raise OSError("origin went away")

    with pytest.raises(RuntimeError, match="origin went away"):
        _each_client(["a", "b"], 3, fetch)
