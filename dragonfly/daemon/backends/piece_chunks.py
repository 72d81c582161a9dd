"""Writing a piece's bytes chunk by chunk as a backend receives them: the native write, the CRC-32 and, when asked,
the piece's digest.

A piece is published (recorded, reported, served) only once its digest is known, so whatever is still to write and
hash when its last byte arrives delays it. Writers driven from the event loop (aiohttp's reader for https, chunked
or unknown-length origin bodies; object stores' chunks) write every ``WRITE_STEP_FROM_LOOP`` as soon as it is in,
not the whole buffer at the end: a 4 MiB piece used to be written, CRC'd and hashed after its last byte (~4 ms of
CPU, tens of ms of wall time on a busy host), now only its last step is. ``body_socket`` still writes its buffer
once full: it relies on the thread draining the socket at once (see its module).

A seed peer vouches for the BLAKE3 of every piece it fetches from the origin (docs/security.md). Hashing each chunk
on the executor thread that writes it, while its bytes are still in the CPU cache, spares reading the piece back
from the content file afterwards: a pread copy and a second pass over the bytes (~0.45 CPU s per GiB from the
origin here, bench/RESULTS.md §2 "CPU per GiB in the swarm, profile").
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


#: A writer driven from the event loop (aiohttp's reader, object stores' chunks) hands each write to the executor: a
#: loop round trip per write, so fewer, larger writes (4 per 4 MiB piece).
WRITE_STEP_FROM_LOOP = 1024 * 1024


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
