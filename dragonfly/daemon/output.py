"""Writing the output file (docs/output-and-cache.md), in the daemon or, for another local user, as that user.

A caller whose uid is not the daemon's (known from SO_PEERCRED, ``dragonfly/daemon/api/callers.py``) gets its
file written by a thread that takes the caller's file-system identity for the length of the write (setfsuid,
setfsgid and the caller's groups, all per thread on Linux). The content is read through the descriptor the daemon
already holds, so the cache stays readable only by the daemon's user.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from stat import S_ISREG

from dragonfly.common.byte_range import ByteRange
from dragonfly.daemon.blocking import run_blocking
from dragonfly.daemon.errors import OutputError


@dataclass(frozen=True, slots=True)
class Caller:
    """The local process that asked for a download (from SO_PEERCRED, docs/security.md)."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def is_daemon_user(self) -> bool:
        """Return whether the caller has the daemon's own rights on files (same effective uid)."""
        return self.uid == os.geteuid()


def refuse_special(path: str) -> None:
    """Refuse an output that exists and is not a regular file: the daemon never replaces or opens those."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not S_ISREG(mode):
        raise OutputError(
            f"output path {path} exists and is not a regular file: only regular files are written or replaced "
            "(dfget streams to devices, FIFOs and '-' itself)"
        )


def check_output_path(path: str, *, overwrite: bool, as_daemon: bool = True) -> None:
    """Fail early when the output cannot be written; ``as_daemon`` False skips what only the caller's rights say."""
    if not os.path.isabs(path):
        raise OutputError(f"output path {path!r} must be absolute")
    if not as_daemon:
        return
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise OutputError(f"output directory {directory} does not exist")
    if os.path.isdir(path):
        raise OutputError(f"output path {path} is a directory")
    refuse_special(path)
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"output file {path} already exists (use overwrite to replace it)")
    if not os.access(directory, os.W_OK):
        raise OutputError(f"output directory {directory} is not writable")


def copy_content(source: int, target: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``source`` to ``target``: a reflink where the filesystem shares
    blocks (copy_file_range), else in the kernel, else through reads and writes where it is refused."""
    left = length
    try:
        while left:
            copied = os.copy_file_range(source, target, left, offset)
            if copied == 0:
                raise OutputError(f"content file ended {left} bytes before the end of the range")
            offset += copied
            left -= copied
        return
    except OSError as exc:
        if isinstance(exc, OutputError) or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while left:
        chunk = os.pread(source, min(left, 4 * 1024 * 1024), offset)
        if not chunk:
            raise OutputError(f"content file ended {left} bytes before the end of the range")
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]
        offset += len(chunk)
        left -= len(chunk)


def write_output(
    content_fd: int,
    content_path: str | None,
    output_path: str,
    *,
    overwrite: bool,
    link: bool,
    byte_range: ByteRange | None = None,
    verify: Callable[[str], None] | None = None,
    link_if_possible: bool = False,
) -> None:
    """Place the content (or ``byte_range`` of it) at ``output_path`` atomically, through a temp file (blocking).

    A copy (a reflink where possible) by default, so that editing the output never changes the cache; a hard link
    to ``content_path`` with ``link`` (whole content only). ``link_if_possible`` (``download.hardLinkOutput``)
    links when it can and copies when it cannot (another file system, a range). ``verify`` checks the temp file
    before it is placed. Only a regular file is ever replaced.
    """
    if not os.path.isabs(output_path):
        raise OutputError(f"output path {output_path!r} must be absolute")
    directory, name = os.path.split(output_path)
    temp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.dragonfly-tmp")
    try:
        refuse_special(output_path)
        if link and byte_range is None and content_path is None:
            raise OutputError("a hard link into the cache is only made for the daemon's own user")
        linked = False
        if (link or link_if_possible) and byte_range is None and content_path is not None:
            try:
                os.link(content_path, temp)
                linked = True
            except OSError as exc:
                if link:
                    raise OutputError(f"cannot hard-link the content to {output_path}: {exc.strerror}") from exc
        if not linked:
            with open(temp, "xb") as target:
                if byte_range is None:
                    copy_content(content_fd, target.fileno(), 0, os.fstat(content_fd).st_size)
                else:
                    copy_content(content_fd, target.fileno(), byte_range.start, byte_range.length)
            os.chmod(temp, 0o644)
        if verify is not None:
            verify(temp)
        if overwrite:
            os.replace(temp, output_path)
        else:
            try:
                os.link(temp, output_path)
            except FileExistsError:
                raise OutputError(f"output file {output_path} already exists (use overwrite to replace it)") from None
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"no space left to write {output_path}") from exc
        raise OutputError(f"cannot write {output_path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


# setgroups(2) through glibc changes every thread of the process; the raw system call changes only the calling one.
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}
_UNCHANGED = 0xFFFFFFFF  # setfsuid(-1) changes nothing and returns the current fsuid
_caller_threads: ThreadPoolExecutor | None = None


def _set_thread_credentials(uid: int, gid: int, groups: tuple[int, ...]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    number = _SYS_SETGROUPS.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"writing as another user is not supported on {platform.machine()}")
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    if libc.syscall(number, len(groups), array) != 0:
        raise OSError(ctypes.get_errno(), "setgroups failed")
    libc.setfsgid(gid)
    libc.setfsuid(uid)
    if libc.setfsuid(_UNCHANGED) != uid or libc.setfsgid(_UNCHANGED) != gid:
        raise OSError(errno.EPERM, f"cannot take the file system identity of uid {uid}")


def _as_caller(caller: Caller, work: Callable[[], None]) -> None:
    """Run ``work`` in this thread with the caller's file-system identity (fsuid, fsgid, groups), then restore.

    The kernel checks every path component, the directory and an existing file exactly as for the caller, at the
    moment of the operation: there is no window between a check and the write. Leaving fsuid 0 also drops the
    file capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER, ...) of this thread only.
    """
    daemon = (os.geteuid(), os.getegid(), tuple(os.getgroups()))
    try:
        _set_thread_credentials(caller.uid, caller.gid, caller.groups)
        work()
    finally:
        try:
            _set_thread_credentials(*daemon)
        except OSError:  # pragma: no cover - a thread stuck with another identity must not serve anything else
            os.abort()


async def write_output_as(
    caller: Caller,
    content_fd: int,
    output_path: str,
    *,
    overwrite: bool,
    byte_range: ByteRange | None = None,
    verify: Callable[[str], None] | None = None,
) -> None:
    """Write the output with only the caller's rights (the daemon must be root): a copy, never a link."""
    global _caller_threads
    if _caller_threads is None:
        # Dedicated threads: their identity changes for the length of one write and nothing else runs on them.
        _caller_threads = ThreadPoolExecutor(2, thread_name_prefix="dfdaemon-as-caller")
    # run_blocking: a cancelled download must not close the borrowed content fd while the thread still reads it.
    await run_blocking(
        _caller_threads,
        lambda: _as_caller(
            caller,
            lambda: write_output(
                content_fd, None, output_path, overwrite=overwrite, link=False, byte_range=byte_range, verify=verify
            ),
        ),
    )
