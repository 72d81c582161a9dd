"""A piece's digest taken while a backend writes it: usable only when every byte of the piece went through it."""

from __future__ import annotations

import os

from dragonfly.common import native
from dragonfly.daemon.backends.piece_chunks import PieceDigest


def test_the_digest_is_that_of_exactly_the_piece_fed_in_order() -> None:
    data = os.urandom(300_000)
    digest = PieceDigest("blake3")
    for start in range(0, len(data), 70_000):
        digest.update(memoryview(data)[start : start + 70_000])
    assert digest.fed == len(data)
    assert digest.result(len(data)) == f"blake3:{native.Hasher('blake3', data).hexdigest()}"
    # Fewer or more bytes than the piece: no digest, the caller reads the piece back.
    assert digest.result(len(data) + 1) is None
    assert PieceDigest("blake3").result(len(data)) is None


def test_a_restart_forgets_what_was_fed() -> None:
    digest = PieceDigest("sha256")
    digest.update(b"half of a broken answer")
    digest.restart()
    digest.update(b"piece")
    assert digest.result(5) == f"sha256:{native.Hasher('sha256', b'piece').hexdigest()}"
