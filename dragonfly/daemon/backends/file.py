"""``file://`` back-to-source: local and NAS paths, read with the native piece I/O (docs/backends.md#file).

A ``file://`` URL makes a daemon read a path on its own host, possibly on behalf of a remote peer (the scheduler
sends a seed peer the URL a peer asked for). So only paths inside the directories the operator lists in
``backend.file.allowedDirs`` are ever read; with none listed, ``file://`` is refused. The check is made on the file
actually opened (``/proc/self/fd``), so a symlink or a ``..`` pointing out of the allowed directories, or one
swapped in between the check and the open, is refused too. Only regular files are read (never a FIFO or a device,
whose open or read could block for ever).

A daemon that cannot read the path (outside its allowed directories, missing, or no permission) answers
``NotReadableHere``: the task manager then takes the task's size from the swarm, where a seed peer that can read
it serves the pieces.
"""

from __future__ import annotations

import email.utils
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from urllib.parse import quote, unquote, urlsplit

from dragonfly.common import native
from dragonfly.daemon.backends.base import Entry, NotReadableHere, SourceOptions, StatResult
from dragonfly.daemon.backends.piece_chunks import PieceDigest, write_chunk
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.errors import BackendError

# A directory listing stops here: a URL naming "/" of a big NAS must not take the daemon's memory.
MAX_ENTRIES = 100_000


def path_of(url: str) -> str:
    """Return the absolute local path a ``file://`` URL names (``file:///p`` or ``file://localhost/p``)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        raise ValueError(f"not a file:// URL: {url!r}")
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file:// URL {url!r} names host {parts.netloc!r}: only local paths (file:///path) are read")
    if parts.query or parts.fragment:
        raise ValueError(f"file:// URL {url!r} has a query or fragment")
    path = unquote(parts.path)
    if not path.startswith("/") or "\0" in path:
        raise ValueError(f"file:// URL {url!r} has no absolute path")
    return path


def url_of(path: str) -> str:
    """Return the ``file://`` URL of an absolute path."""
    return "file://" + quote(path)


class FileBackend:
    """The ``file`` scheme."""

    def __init__(self, *, allowed_dirs: Sequence[str], executor: Executor) -> None:
        # Resolved once: the allowed directories themselves may be symlinks (e.g. /data -> /mnt/nas).
        self._allowed = tuple(os.path.realpath(d) for d in allowed_dirs)
        self._executor = executor

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _allowed_path(self, path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self._allowed)

    def _check(self, url: str) -> str:
        try:
            path = os.path.normpath(path_of(url))
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        if not self._allowed:
            raise NotReadableHere(
                f"{url}: this daemon reads no file:// paths (list the directories it may read in "
                "backend.file.allowedDirs)"
            )
        if not self._allowed_path(path):
            raise NotReadableHere(f"{url}: the path is outside this daemon's backend.file.allowedDirs")
        return path

    def _open(self, url: str, path: str) -> int:
        """Open ``path`` for reading if it is a regular file inside the allowed directories (blocking)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotReadableHere(f"{url}: no such file on this host", status_code=404) from None
        except PermissionError:
            raise NotReadableHere(f"{url}: permission denied on this host", status_code=403) from None
        except OSError as exc:
            raise BackendError(f"{url}: cannot open: {exc.strerror}") from None
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            if not self._allowed_path(real):
                raise NotReadableHere(f"{url}: the path leads outside this daemon's backend.file.allowedDirs")
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise BackendError(f"{url}: is a directory (download it with -r)")
            if not stat.S_ISREG(mode):
                raise BackendError(f"{url}: not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _stat(self, url: str, path: str) -> StatResult:
        fd = self._open(url, path)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        header = {
            "Content-Length": str(st.st_size),
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
        }
        return StatResult(st.st_size, header)

    async def stat(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> StatResult:
        path = self._check(url)
        return await run_blocking(self._executor, self._stat, url, path)

    def _copy(
        self, url: str, path: str, fd: int, offset: int, length: int, buffer: bytearray, digest: PieceDigest | None
    ) -> int:
        """Copy ``[offset, offset+length)`` of ``path`` into ``fd`` at the same offset; return the CRC-32."""
        source = self._open(url, path)
        if digest is not None:
            digest.restart()
        try:
            view = memoryview(buffer)
            capacity = len(buffer)
            crc = 0
            done = 0
            while done < length:
                want = min(capacity, length - done)
                got = native.read_piece(source, offset + done, view[:want])
                if got != want:
                    raise BackendError(
                        f"{url}: the file ended at byte {offset + done + got}, before the {offset + length} "
                        "its size promised (it changed during the download)"
                    )
                crc = write_chunk(fd, offset + done, view[:want], crc, done == 0, digest)
                done += want
            return crc
        finally:
            os.close(source)

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
        path = self._check(url)
        crc = await run_blocking(self._executor, self._copy, url, path, fd, offset, length, buffer, digest)
        if progress is not None:
            progress(length)
        return crc

    def _walk(self, url: str, root: str) -> list[Entry]:
        real_root = os.path.realpath(root)
        if not self._allowed_path(real_root):
            raise NotReadableHere(f"{url}: the path leads outside this daemon's backend.file.allowedDirs")
        if not os.path.isdir(real_root):
            if not os.path.exists(real_root):
                raise BackendError(f"{url}: no such directory", status_code=404)
            raise BackendError(f"{url}: not a directory")
        entries: list[Entry] = []

        def fail(exc: OSError) -> None:
            raise BackendError(f"{url}: cannot list {exc.filename}: {exc.strerror}")

        # Symlinks are not followed: a link inside an allowed directory must not list what lies outside it.
        # Entries are named under the path the URL gave (which may pass through an allowed symlink), so each is
        # the URL's path plus its relative path.
        base = root.rstrip("/")
        for directory, dirs, files in os.walk(real_root, onerror=fail):
            dirs[:] = sorted(name for name in dirs if not os.path.islink(os.path.join(directory, name)))
            relative = os.path.relpath(directory, real_root)
            named = base if relative == "." else f"{base}/{relative}"
            for name in dirs:
                entries.append(Entry(url_of(f"{named}/{name}") + "/", 0, True))
            for name in sorted(files):
                try:
                    st = os.stat(os.path.join(directory, name), follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    entries.append(Entry(url_of(f"{named}/{name}"), st.st_size, False))
            if len(entries) > MAX_ENTRIES:
                raise BackendError(f"{url}: more than {MAX_ENTRIES} entries")
        return entries

    async def list_entries(self, url: str, request_header: Mapping[str, str], options: SourceOptions) -> list[Entry]:
        path = self._check(url)
        return await run_blocking(self._executor, self._walk, url, path)
