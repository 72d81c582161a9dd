"""Writing a piece's bytes chunk by chunk as a backend receives them: the native write, the CRC-32 and, when asked,
the piece's digest.

A piece is published (recorded, reported, served) only once its digest is known, so whatever is still to write and
hash when its last byte arrives delays it. ``body_socket`` (plain-HTTP origins) writes what has arrived whenever its
socket has nothing more to read, so at a piece's last byte little is left to write; a 4 MiB piece used to be
written, CRC'd and hashed after its last byte (~4 ms of CPU, tens of ms of wall time on a busy host). Writers
driven from the event loop (aiohttp's reader, object stores' chunks) still write their buffer once full: there a
write is an executor round trip, and writing every 1 MiB cost 6-24 % more CPU per GiB (bench origin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dragonfly.common import native

if TYPE_CHECKING:
    from typing_extensions import Buffer


class PieceDigest:
    """A hasher a backend feeds with the piece's bytes in order, as it writes them."""

    __slots__ = ("_algorithm", "_hasher", "fed")

    def __init__(self, algorithm: str) -> None:
        self._algorithm = algorithm
        self._hasher = native.Hasher(algorithm)
        #: Bytes fed since the piece's first byte.
        self.fed = 0

    def restart(self) -> None:
        """Forget what was fed: the backend writes the piece again from its first byte (a retried request)."""
        self._hasher = native.Hasher(self._algorithm)
        self.fed = 0

    def update(self, data: Buffer) -> None:
        """Feed the next bytes (on the thread that writes them; the GIL is released while a large chunk is hashed)."""
        view = memoryview(data)
        self._hasher.update(view)
        self.fed += view.nbytes

    def result(self, length: int) -> str | None:
        """Return ``algorithm:hex`` of the piece when exactly its ``length`` bytes were fed, else None (a backend that
        does not feed digests, or a piece written in another way: the caller reads the piece back instead)."""
        if self.fed != length:
            return None
        return f"{self._algorithm}:{self._hasher.hexdigest()}"


def write_chunk(
    fd: int, offset: int, view: memoryview, crc: int, starts_piece: bool, digest: PieceDigest | None = None
) -> int:
    """Write one buffered chunk at ``offset`` and return the piece CRC so far (runs on an executor thread).

    ``starts_piece``: the chunk is the piece's first, so the CRC the native write computes is the piece's so far.
    """
    if digest is not None:
        digest.update(view)
    if starts_piece:
        return native.write_piece(fd, offset, view)
    native.write_piece(fd, offset, view)
    return native.crc32(view, crc)
