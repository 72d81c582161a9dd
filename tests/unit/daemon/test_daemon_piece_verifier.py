"""The child's check of a piece from a parent against trusted digests (docs/security.md)."""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dragonfly_api import common_pb2

from dragonfly.common import native
from dragonfly.common.errors import DigestMismatch
from dragonfly.daemon.download import piece_verifier
from dragonfly.daemon.download.piece_verifier import PieceVerifier, UnverifiablePiece

DATA = os.urandom(64 * 1024)
BLAKE3 = "blake3:" + native.Hasher("blake3", DATA).hexdigest()
CRC = zlib.crc32(DATA)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "content"
    path.write_bytes(DATA)
    descriptor = os.open(path, os.O_RDONLY)
    yield descriptor
    os.close(descriptor)


def _piece(digest: str, number: int = 0) -> common_pb2.Piece:
    return common_pb2.Piece(number=number, offset=0, length=len(DATA), digest=digest)


async def test_strict_accepts_the_trusted_digest_and_refuses_other_bytes(executor, fd) -> None:
    verifier = PieceVerifier("strict", whole_digest=False, refresh=None, executor=executor)
    verifier.learn([_piece(BLAKE3)])
    expected = await verifier.expected(0)
    assert await verifier.verify(0, expected, fd, 0, len(DATA), crc=CRC, parent="p") == BLAKE3
    verifier = PieceVerifier("strict", whole_digest=False, refresh=None, executor=executor)
    verifier.learn([_piece("blake3:" + "0" * 64)])
    with pytest.raises(DigestMismatch):
        await verifier.verify(0, await verifier.expected(0), fd, 0, len(DATA), crc=CRC, parent="p")


async def test_strict_refuses_a_piece_only_a_crc_vouches_for(executor, monkeypatch) -> None:
    monkeypatch.setattr(piece_verifier, "DIGEST_WAIT", 0.05)
    calls = []

    async def refresh() -> list[common_pb2.Piece]:
        calls.append(1)
        return [_piece(f"crc32:{CRC}")]

    verifier = PieceVerifier("strict", whole_digest=False, refresh=refresh, executor=executor)
    with pytest.raises(UnverifiablePiece):
        await verifier.expected(0)
    assert calls, "the scheduler was never asked"
    # With a whole-content digest the CRC is checked per piece and the content at the end.
    verifier = PieceVerifier("strict", whole_digest=True, refresh=refresh, executor=executor)
    assert await verifier.expected(0) == f"crc32:{CRC}"


async def test_digests_that_arrive_later_are_fetched_from_the_scheduler(executor, fd) -> None:
    answers = [[], [_piece(BLAKE3)]]

    async def refresh() -> list[common_pb2.Piece]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    verifier = PieceVerifier("strict", whole_digest=False, refresh=refresh, executor=executor)
    assert await verifier.expected(0) == BLAKE3


async def test_a_digest_missing_at_the_first_answer_is_asked_for_again_when_the_bytes_are_in(
    executor, monkeypatch
) -> None:
    # The first answer came before the seed's report reached the scheduler; the next poll would be a minute away.
    monkeypatch.setattr(piece_verifier, "_REFRESH_INTERVAL", 60.0)
    answers = [[], [_piece(BLAKE3)]]
    asked = asyncio.Event()

    async def refresh() -> list[common_pb2.Piece]:
        asked.set()
        return answers.pop(0)

    verifier = PieceVerifier("strict", whole_digest=False, refresh=refresh, executor=executor)
    arrived = asyncio.Event()
    async with asyncio.timeout(10):
        expecting = asyncio.ensure_future(verifier.expected(0, arrived))
        await asked.wait()
        arrived.set()
        assert await expecting == BLAKE3
    assert answers == []


async def test_compatible_accepts_a_trusted_crc_and_checks_it(executor, fd) -> None:
    verifier = PieceVerifier("compatible", whole_digest=False, refresh=None, executor=executor)
    assert await verifier.expected(0) is None  # nothing trusted: the parent's CRC (Dragonfly's behaviour)
    verifier.learn([_piece(f"crc32:{CRC}"), _piece(f"crc32:{CRC ^ 1}", number=1)])
    assert await verifier.verify(0, await verifier.expected(0), fd, 0, len(DATA), crc=CRC, parent="p") == BLAKE3
    with pytest.raises(DigestMismatch):
        await verifier.verify(1, await verifier.expected(1), fd, 0, len(DATA), crc=CRC, parent="p")


async def test_sha256_trusted_digests_are_checked_too(executor, fd) -> None:
    import hashlib

    verifier = PieceVerifier("strict", whole_digest=False, refresh=None, executor=executor)
    verifier.learn([_piece("sha256:" + hashlib.sha256(DATA).hexdigest())])
    assert await verifier.verify(0, await verifier.expected(0), fd, 0, len(DATA), crc=CRC, parent="p") == BLAKE3


async def test_a_digest_computed_on_the_way_in_is_used_without_reading_the_piece_back(executor, monkeypatch) -> None:
    def no_reading(*_args: object) -> str:
        raise AssertionError("the piece was read back to be hashed")

    monkeypatch.setattr(piece_verifier, "piece_hash", no_reading)
    verifier = PieceVerifier("strict", whole_digest=False, refresh=None, executor=executor)
    verifier.learn([_piece(BLAKE3)])
    expected = await verifier.expected(0)
    # fd -1: nothing may be read.
    assert await verifier.verify(0, expected, -1, 0, len(DATA), crc=CRC, parent="p", hashed=BLAKE3) == BLAKE3
    with pytest.raises(DigestMismatch):
        await verifier.verify(0, expected, -1, 0, len(DATA), crc=CRC, parent="p", hashed="blake3:" + "1" * 64)
