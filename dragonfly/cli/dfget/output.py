"""Where the content goes: checks of the output path, and streaming to standard output, a device or a FIFO."""

from __future__ import annotations

import argparse
import errno
import os
import stat
import time

from dragonfly.cli.dfget.client import download
from dragonfly.cli.dfget.errors import fail
from dragonfly.cli.dfget.progress import Traffic


def check_output(path: str, *, overwrite: bool) -> str:
    """Return the absolute output path, or raise DownloadFailed saying why it cannot be written."""
    output = os.path.abspath(os.path.expanduser(path))
    if path.endswith(os.sep) or os.path.isdir(output):
        fail(f"output path {output} is a directory; give a file name")
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        fail(f"output directory {parent} does not exist")
    if os.path.lexists(output) and not overwrite:
        fail(f"output file {output} already exists; pass --overwrite to replace it")
    # access(2) also reports EROFS, so a read-only mount is caught even for root.
    if not os.access(parent, os.W_OK | os.X_OK):
        fail(f"output directory {parent} is not writable")
    if os.path.lexists(output) and not os.access(output, os.W_OK):
        fail(f"output file {output} is not writable")
    return output


def stream_target(path: str) -> str | None:
    """Return where to stream the content ('-' or the path) when the output is stdout, a device or a FIFO.

    Those are never replaced (``--overwrite`` replaces regular files only) and the daemon never opens them:
    dfget writes them itself, with the caller's own rights (docs/output-and-cache.md).
    """
    if path == "-":
        return path
    try:
        mode = os.stat(os.path.expanduser(path)).st_mode
    except OSError:
        return None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return os.path.abspath(os.path.expanduser(path))
    return None


def download_and_stream(args: argparse.Namespace, target: str) -> tuple[Traffic, int]:
    """Download into a private temporary file, then copy it into ``target`` (fd 1 for '-') without replacing it.

    Return the traffic and the number of bytes written.
    """
    import tempfile  # only here: dfget's start-up stays light

    with tempfile.TemporaryDirectory(prefix="dfget-") as directory:
        temporary = os.path.join(directory, "content")
        # The temporary file is a private copy: a hard link into the cache would be pointless here.
        traffic = download(argparse.Namespace(**{**vars(args), "force_hard_link": False}), temporary, time.monotonic())
        try:
            out = 1 if target == "-" else os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            fail(f"cannot open {target} for writing: {exc.strerror}")
        try:
            with open(temporary, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                _copy_fd(source.fileno(), out, size)
        except OSError as exc:
            fail(f"cannot write to {'standard output' if target == '-' else target}: {exc.strerror or exc}")
        finally:
            if out != 1:
                os.close(out)
    return traffic, size


def _copy_fd(source: int, out: int, size: int) -> None:
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(out, source, offset, min(size - offset, 1 << 30))
            if sent == 0:
                break
            offset += sent
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        # Some outputs (e.g. a terminal on old kernels) take no sendfile: plain reads and writes.
        while offset < size:
            chunk = os.pread(source, min(size - offset, 1 << 20), offset)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
            offset += len(chunk)
    if offset != size:
        raise OSError(errno.EIO, f"the downloaded file ended after {offset} of {size} bytes")


def remove_partial(output: str, existed: bool) -> None:
    # The daemon must not leave a file behind on failure; if one appeared anyway, it is not the user's.
    if output and not existed and os.path.lexists(output):
        os.unlink(output)
