"""Whether a piece fetched from a parent may be kept: checked against digests the parent cannot forge.

A parent's own digest (the Vortex metadata) only catches transfer errors: a hostile parent sends bytes and a
matching CRC-32 of its choice. The trusted digests come from the scheduler, which took them from a digest
authority (a seed peer) that fetched the piece from the origin; they arrive with the candidate parents and, for
pieces finished later, from ``StatTask``. The policy (``download.pieceVerification``, docs/security.md):

- ``strict`` (default): a piece from a parent is kept only if its BLAKE3/SHA-256/SHA-512 digest matches a trusted
  one. A piece without one comes from the origin instead, unless the whole content has a cryptographic digest
  (``--digest sha256:...`` or a blob task), which is then checked before the task is finished.
- ``compatible``: any trusted digest counts, including a ``crc32:`` one from Dragonfly's own seed peers; without
  a trusted digest the parent's CRC-32 is accepted (Dragonfly's behaviour: trust in every parent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor

from dragonfly_api import common_pb2

from dragonfly.common import native
from dragonfly.common.digest import format_piece_digest
from dragonfly.common.errors import DigestMismatch, DragonflyError
from dragonfly.daemon.blocking import run_blocking

#: Values of ``download.pieceVerification``.
POLICIES = ("strict", "compatible")
#: The digest every piece gets from this daemon: fast, and cryptographic (a parent cannot forge a match).
PIECE_HASH = "blake3"
STRONG_ALGORITHMS = frozenset(("blake3", "sha256", "sha512"))
# How long a piece waits for its trusted digest to reach the scheduler (the seed reports it as it stores it),
# and how often the scheduler is asked meanwhile.
DIGEST_WAIT = 3.0
_REFRESH_INTERVAL = 0.1

Refresh = Callable[[], Awaitable[Iterable[common_pb2.Piece]]]


class UnverifiablePiece(DragonflyError):
    """No digest the policy trusts is known for a piece: it must come from the origin."""


def piece_hash(fd: int, offset: int, length: int) -> str:
    """Return the ``blake3:<hex>`` digest of a piece in a content file (blocking: run it on the executor)."""
    return f"{PIECE_HASH}:{native.file_digest(PIECE_HASH, fd, offset, length).hex()}"


def is_strong(digest: str) -> bool:
    """Return whether ``digest`` is of an algorithm a parent cannot forge a match for."""
    return digest.partition(":")[0] in STRONG_ALGORITHMS


class PieceVerifier:
    """The trusted digests of one task download and the checks a parent's piece has to pass."""

    __slots__ = ("_executor", "_last_refresh", "_policy", "_refresh", "_refreshing", "_trusted", "whole_digest")

    def __init__(self, policy: str, *, whole_digest: bool, refresh: Refresh | None, executor: Executor) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown piece verification policy {policy!r}")
        self._policy = policy
        # The whole content is checked against a cryptographic digest before the task is finished.
        self.whole_digest = whole_digest
        self._refresh = refresh
        self._executor = executor
        self._trusted: dict[int, str] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._last_refresh = 0.0

    def learn(self, pieces: Iterable[common_pb2.Piece]) -> None:
        """Take trusted digests from the scheduler; the first one known for a piece stays."""
        for piece in pieces:
            if piece.digest:
                self._trusted.setdefault(piece.number, piece.digest)

    def _usable(self, digest: str | None) -> bool:
        return digest is not None and (self._policy == "compatible" or is_strong(digest))

    def known(self, number: int) -> str | None:
        """Return the trusted digest to check piece ``number`` against if one is known now, else None (then ask
        ``expected``, which may wait for the scheduler)."""
        digest = self._trusted.get(number)
        return digest if self._usable(digest) else None

    async def expected(self, number: int, arrived: asyncio.Event | None = None) -> str | None:
        """Return the trusted digest to check piece ``number`` against, asking the scheduler for a bounded time.

        ``arrived`` is set when the piece's bytes are in. The first question goes out as the transfer starts, often
        a moment before the digest authority's report of the piece reaches the scheduler (its piece was announced
        to this child as it was stored, bench/RESULTS.md "Time to first byte"): if that answer lacks the digest, the
        next question goes out when the bytes are in rather than a poll interval later, once per piece.

        Raises UnverifiablePiece when the policy needs one and none arrives: the piece must come from the origin.
        """
        digest = self._trusted.get(number)
        if self._usable(digest):
            return digest
        if self._refresh is not None:
            deadline = time.monotonic() + DIGEST_WAIT
            urgent = False
            hurried = arrived is None
            while True:
                await self._refreshed(urgent=urgent)
                digest = self._trusted.get(number)
                if self._usable(digest) or time.monotonic() >= deadline:
                    break
                urgent = False
                if hurried:
                    await asyncio.sleep(_REFRESH_INTERVAL)
                    continue
                assert arrived is not None
                try:
                    async with asyncio.timeout(_REFRESH_INTERVAL):
                        await arrived.wait()
                except TimeoutError:
                    continue
                urgent = hurried = True
        if self._usable(digest):
            return digest
        if self._policy == "compatible" or self.whole_digest:
            return digest
        raise UnverifiablePiece(f"no trusted digest is known for piece {number}")

    async def _refreshed(self, *, urgent: bool = False) -> None:
        """Ask the scheduler once for what it trusts now; concurrent callers share one call.

        Calls are ``_REFRESH_INTERVAL`` apart unless ``urgent`` (a piece whose bytes are in, at most once each).
        """
        running = self._refreshing
        if running is None:
            wait = 0.0 if urgent else self._last_refresh + _REFRESH_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                running = self._refreshing
            if running is None:
                running = self._refreshing = asyncio.ensure_future(self._refresh_once())
        await asyncio.shield(running)

    async def _refresh_once(self) -> None:
        assert self._refresh is not None
        try:
            self.learn(await self._refresh())
        except Exception:
            pass
        finally:
            self._last_refresh = time.monotonic()
            self._refreshing = None

    async def verify(
        self,
        number: int,
        expected: str | None,
        fd: int,
        offset: int,
        length: int,
        *,
        crc: int,
        parent: str,
        hashed: str | None = None,
    ) -> str:
        """Hash the stored piece; raise DigestMismatch unless it matches ``expected``; return its BLAKE3 digest.

        ``hashed`` is the piece's BLAKE3 digest computed as its bytes were received; the piece is then not read
        back to be hashed.
        """
        if hashed is not None and hashed.partition(":")[0] == PIECE_HASH:
            actual = hashed
        else:
            actual = await run_blocking(self._executor, lambda: piece_hash(fd, offset, length))
        if expected is None:
            return actual
        algorithm = expected.partition(":")[0]
        if algorithm == PIECE_HASH:
            got = actual
        elif algorithm == "crc32":
            got = format_piece_digest(crc)
        elif algorithm in STRONG_ALGORITHMS:
            raw = await run_blocking(self._executor, lambda: native.file_digest(algorithm, fd, offset, length))
            got = f"{algorithm}:{raw.hex()}"
        else:
            # An algorithm we cannot check (e.g. crc32c from a newer peer) proves nothing either way.
            return actual
        if got != expected:
            raise DigestMismatch(expected, got, what=f"piece {number} from parent {parent}")
        return actual
