"""``dfget -r``: every file under a directory-like URL, each its own task, into an existing directory."""

from __future__ import annotations

import argparse
import os
import sys

from dragonfly.cli.dfget.client import download, list_entries
from dragonfly.cli.dfget.errors import DownloadFailed, fail
from dragonfly.cli.dfget.progress import ProgressBar, Traffic


def directory_url(url: str) -> str:
    """Return ``url`` with a path ending in '/' (dfget -r names a directory)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def relative_path(base: str, url: str) -> str:
    """Return the path of an entry's URL under the directory URL ``base``, refusing anything that leaves it."""
    from urllib.parse import unquote, urlsplit

    base_parts, parts = urlsplit(base), urlsplit(url)
    base_path, path = unquote(base_parts.path), unquote(parts.path)
    if (parts.scheme.lower(), parts.netloc) != (base_parts.scheme.lower(), base_parts.netloc) or not path.startswith(
        base_path
    ):
        fail(f"dfdaemon listed {url}, which is not under {base}")
    relative = path[len(base_path) :].strip("/")
    if not relative or any(part in ("", ".", "..") for part in relative.split("/")) or "\0" in relative:
        fail(f"dfdaemon listed {url}, whose path cannot be a file under the output directory")
    return relative


def included(relative: str, patterns: list[str]) -> bool:
    """Tell whether a file passes --include-files: no patterns, a matching glob, or a directory above it."""
    import fnmatch

    if not patterns:
        return True
    return any(
        fnmatch.fnmatchcase(relative, pattern) or relative.startswith(pattern.rstrip("/") + "/") for pattern in patterns
    )


def download_directory(args: argparse.Namespace, output: str, began: float) -> tuple[int, int, Traffic]:
    """Download every file under ``args.url`` into ``output``; return the file count, bytes and traffic.

    Each file is its own task (its own URL, hence task id); ``--max-concurrent-requests`` run at once; one
    progress bar covers the whole set. The first failure stops the rest (files already written stay).
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    base = directory_url(args.url)
    directories: set[str] = set()
    files: list[tuple[str, str, int]] = []
    for entry in list_entries(args, base):
        relative = relative_path(base, entry.url)
        if entry.is_dir:
            directories.add(relative)
        elif included(relative, args.include_files):
            files.append((relative, entry.url, entry.content_length))
    if len(files) > args.max_files:
        fail(f"{base} holds {len(files)} files, more than --max-files {args.max_files}")
    if not files:
        fail(f"no files under {base}" + (" match --include-files" if args.include_files else ""))
    targets = [(relative, url, os.path.join(output, relative)) for relative, url, _ in files]
    if not args.overwrite:
        existing = [path for _, _, path in targets if os.path.lexists(path)]
        if existing:
            fail(f"{existing[0]} exists (and {len(existing) - 1} more); use --overwrite to replace them")
    for _, _, path in targets:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if not args.include_files:
        # Empty directories too, as the source has them; with a filter, only those the chosen files need.
        for relative in directories:
            os.makedirs(os.path.join(output, relative), exist_ok=True)

    total = sum(length for _, _, length in files)
    lock = threading.Lock()
    # Bytes received per file and their sum, kept as each piece arrives (a sum over the files at every piece grew
    # with the number of files).
    received: dict[str, int] = {}
    received_total = 0
    show_progress = not args.no_progress and sys.stderr.isatty()
    bar = ProgressBar(f"{len(files)} files", began) if show_progress else None
    traffic = Traffic()
    failures: list[tuple[str, DownloadFailed]] = []

    def fetch(relative: str, url: str, path: str) -> None:
        if failures:
            return  # a file failed: the rest are not started

        def progress(done: int, _expected: int) -> None:
            nonlocal received_total
            with lock:
                received_total += done - received.get(relative, 0)
                received[relative] = done
                if bar is not None:
                    bar.update(received_total, total)

        file_args = argparse.Namespace(**{**vars(args), "url": url, "no_progress": True})
        try:
            result = download(file_args, path, began, progress)
        except DownloadFailed as exc:
            with lock:
                failures.append((relative, exc))
            return
        with lock:
            for source in ("origin", "seed", "peers", "local"):
                setattr(traffic, source, getattr(traffic, source) + getattr(result, source))

    try:
        with ThreadPoolExecutor(args.max_concurrent_requests, thread_name_prefix="dfget") as pool:
            for future in [pool.submit(fetch, *target) for target in targets]:
                future.result()
    finally:
        if bar is not None:
            bar.update(received_total, total, force=True)
            bar.close()
    if failures:
        relative, exc = failures[0]
        failure = DownloadFailed(f"{relative}: {exc}")
        for note in getattr(exc, "__notes__", ()):
            failure.add_note(note)
        raise failure
    return len(files), total, traffic
