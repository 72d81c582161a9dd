"""The interface every back-to-source backend implements, and what travels with a request to it.

A backend answers three questions about one URL: how long is it (``stat``), give me bytes ``[offset,
offset+length)`` written into this content file with their CRC-32 (``download_piece``), and what files are under
this directory-like URL (``list_entries``). The task manager never knows which backend it talks to: the registry
(``dragonfly.daemon.backends.Backends``) picks one by the URL's scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dragonfly_api import common_pb2

from dragonfly.daemon.backends.http import LOCAL as LOCAL_ORIGIN
from dragonfly.daemon.backends.http import OriginOptions
from dragonfly.daemon.backends.piece_chunks import PieceDigest, write_chunk
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.errors import BackendError

if TYPE_CHECKING:
    from typing_extensions import Buffer


@dataclass(frozen=True, slots=True)
class StatResult:
    """What one stat of the origin tells: the content length and the response headers.

    ``supports_range`` is False when the origin answered the stat's ``Range`` with the whole body: its pieces cannot
    be asked for one by one, and the task is read as one streamed body instead (HTTP only).
    """

    content_length: int
    header: dict[str, str]
    supports_range: bool = True


@dataclass(frozen=True, slots=True)
class Entry:
    """One file or directory under a directory-like URL (``ListTaskEntries``)."""

    url: str
    content_length: int
    is_dir: bool


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """The per-request settings of the non-HTTP backends, as the Download (or ListTaskEntries) message carries them.

    They hold credentials: never log, store or show them (docs/security.md#secrets).
    """

    #: Who asked (the SSRF guard applies to a download another host asked for) and extra trust roots.
    origin: OriginOptions = LOCAL_ORIGIN
    object_storage: common_pb2.ObjectStorage | None = None
    hdfs: common_pb2.HDFS | None = None
    hugging_face: common_pb2.HuggingFace | None = None
    model_scope: common_pb2.ModelScope | None = None

    def __repr__(self) -> str:
        # A dataclass repr would print the credentials inside the messages.
        present = [name for name in ("object_storage", "hdfs", "hugging_face", "model_scope") if getattr(self, name)]
        return f"SourceOptions({', '.join(present)})"

    @classmethod
    def of(cls, message: common_pb2.Download | object, origin: OriginOptions = LOCAL_ORIGIN) -> SourceOptions:
        """Take the options of a ``Download`` or ``ListTaskEntriesRequest`` (both name the fields alike)."""

        def field(name: str) -> object:
            has = getattr(message, "HasField", None)
            if has is None:
                return None
            try:
                return getattr(message, name) if has(name) else None
            except ValueError:  # a message without that field
                return None

        return cls(
            origin=origin,
            object_storage=field("object_storage"),  # type: ignore[arg-type]
            hdfs=field("hdfs"),  # type: ignore[arg-type]
            hugging_face=field("hugging_face"),  # type: ignore[arg-type]
            model_scope=field("model_scope"),  # type: ignore[arg-type]
        )


NO_OPTIONS = SourceOptions()


class NotReadableHere(BackendError):
    """This daemon cannot read the source (a path outside its allowed directories, or one it has no rights to);
    another daemon, a seed peer, may. The task manager then learns the task's size from the swarm."""


class Backend(Protocol):
    """One back-to-source backend (one or more URL schemes)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def stat(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> StatResult:
        """Return the content length (and headers to store with the task) of ``url``."""
        ...

    async def download_piece(
        self,
        url: str,
        request_header: Mapping[str, str],
        options: SourceOptions,
        *,
        fd: int,
        offset: int,
        length: int,
        buffer: bytearray,
        progress: Callable[[int], None] | None = None,
        digest: PieceDigest | None = None,
    ) -> int:
        """Write bytes ``[offset, offset+length)`` of ``url`` at the same offset of ``fd``; return their CRC-32.

        ``digest``, when given, is fed the bytes as they are written (restarted when a retry writes them again); a
        backend that cannot feed it leaves it untouched.
        """
        ...

    async def list_entries(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> list[Entry]:
        """Return every file (and directory) under the directory-like ``url``, recursively."""
        ...


class PieceWriter:
    """Gather a piece's chunks, as a backend receives them, into the pooled buffer and write them at the piece's
    offset through the native writer on the executor; the CRC-32 is computed on the way."""

    __slots__ = (
        "_capacity",
        "_crc",
        "_digest",
        "_executor",
        "_fd",
        "_filled",
        "_length",
        "_offset",
        "_progress",
        "_view",
        "_written",
        "url",
    )

    def __init__(
        self,
        url: str,
        executor: Executor,
        *,
        fd: int,
        offset: int,
        length: int,
        buffer: bytearray,
        progress: Callable[[int], None] | None = None,
        digest: PieceDigest | None = None,
    ) -> None:
        self.url = url
        self._executor = executor
        self._fd = fd
        self._offset = offset
        self._length = length
        self._view = memoryview(buffer)
        self._capacity = len(buffer)
        self._progress = progress
        # A writer writes the piece from its first byte.
        if digest is not None:
            digest.restart()
        self._digest = digest
        self._crc = 0
        self._written = 0
        self._filled = 0

    @property
    def received(self) -> int:
        return self._written + self._filled

    async def add(self, chunk: Buffer) -> None:
        """Take the next bytes of the piece."""
        data = memoryview(chunk).cast("B")
        if self.received + len(data) > self._length:
            raise BackendError(f"{self.url}: the source sent more than the {self._length} bytes asked for")
        if self._progress is not None:
            self._progress(len(data))
        while data:
            take = min(len(data), self._capacity - self._filled)
            self._view[self._filled : self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
            if self._filled == self._capacity:
                await self._flush()

    async def _flush(self) -> None:
        if not self._filled:
            return
        self._crc = await run_blocking(
            self._executor,
            write_chunk,
            self._fd,
            self._offset + self._written,
            self._view[: self._filled],
            self._crc,
            self._written == 0,
            self._digest,
        )
        self._written += self._filled
        self._filled = 0

    async def finish(self) -> int:
        """Write what is buffered; return the piece's CRC-32, or raise if the source sent too few bytes."""
        await self._flush()
        if self._written != self._length:
            raise BackendError(
                f"{self.url}: the source ended after {self._written} of the {self._length} bytes starting at "
                f"{self._offset} (content shorter than announced)"
            )
        return self._crc
