"""bench serve: every system moves the file's bytes through the daemon's own serving steps (or its whole Vortex
server), and the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import serve_path
from dragonfly.common import native

pytestmark = pytest.mark.skipif(not native.USING_EXTENSIONS, reason="serves through the native extension")


def test_a_small_run_serves_the_file_over_tls_and_plaintext(tmp_path: Path) -> None:
    size = 2 * serve_path.PIECE + 12345  # a short last piece
    report = serve_path.run(tmp_path, size, 1)  # the first round of each system compares the receiver's copy
    assert set(report["cpu_s_per_gib"]) == {"tls", "plaintext", "vortex-tls", "vortex-plaintext"}
    assert all(cpu["server"] > 0 and cpu["receiver"] > 0 for cpu in report["cpu_s_per_gib"].values())
    text = serve_path.format_report(report)
    for system in ("tls", "plaintext", "vortex-tls", "vortex-plaintext"):
        assert f"| {system} | " in text
    assert "median of 1 alternating rounds" in text


@pytest.mark.parametrize("system", ["plaintext", "vortex-tls"])
def test_a_copy_that_differs_fails_the_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system: str) -> None:
    size = serve_path.PIECE
    files = serve_path._tls_files(tmp_path)
    (tmp_path / "content").write_bytes(b"x" * size)
    monkeypatch.setattr(serve_path.filecmp, "cmp", lambda a, b, shallow: False)
    with pytest.raises(RuntimeError, match=f"the {system} receiver's copy differs from the file"):
        serve_path.run_once(system, tmp_path, size, files, verify=True, crcs=[native.crc32(b"x" * size)])
    assert not (tmp_path / "output").exists()


@pytest.mark.timeout(60)
def test_a_receiver_that_cannot_connect_fails_the_round_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server process waits for the receiver's connection at most _TIMEOUT; before, it waited for ever in
    # accept() and the round in waitpid().
    monkeypatch.setattr(serve_path, "_TIMEOUT", 0.5)

    def refuse(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("refused by the test")

    monkeypatch.setattr(serve_path.socket, "create_connection", refuse)
    with pytest.raises(ConnectionRefusedError, match="refused by the test"):
        serve_path.run_once("plaintext", tmp_path, serve_path.PIECE, {}, verify=False)


def test_a_size_below_one_piece_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_path, "release_builds_missing", lambda prog: False)
    with pytest.raises(SystemExit):
        serve_path.main(["--size", "1MiB"])
