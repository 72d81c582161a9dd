"""The dfget command: check the arguments, run the download (one file or ``-r``), print the summary, exit status."""

from __future__ import annotations

import argparse
import os
import sys
import time

import dragonfly
from dragonfly.cli.arguments import parse_args
from dragonfly.cli.dfget.client import download
from dragonfly.cli.dfget.errors import DownloadFailed, fail, printable
from dragonfly.cli.dfget.output import check_output, download_and_stream, remove_partial, stream_target
from dragonfly.cli.dfget.parser import build_parser, merge_range
from dragonfly.cli.dfget.progress import human

# typing is for the type checker only here: importing it costs a few ms at every dfget start (bench/RESULTS.md §3).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# What the interpreter exits with when it cannot flush standard output at exit.
EXIT_FLUSH_FAILED = 120


def run() -> NoReturn:
    """Run dfget as a command (the console script and ``python -m``) and end the process without a teardown.

    The interpreter's teardown (grpc, protobuf and some 250 modules) costs more than the local hit's download
    itself (bench/RESULTS.md §3), and dfget holds nothing that needs it: its channel and files are closed and it
    registers no exit handler. Its own buffers are flushed first. Errors that end dfget with an exception
    (argparse's exit 2, --help) leave through the interpreter as before.
    """
    status = main()
    try:
        sys.stdout.flush()
    except OSError as exc:
        status = EXIT_FLUSH_FAILED
        print(f"dfget: error: cannot write to standard output: {exc.strerror or exc}", file=sys.stderr)
    try:
        sys.stderr.flush()
    except OSError:
        status = EXIT_FLUSH_FAILED
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    """Run dfget; see ``dfget --help``."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.version:
        print(f"dfget {dragonfly.__version__}")
        return EXIT_OK
    if args.url is None or not args.output:
        parser.error("the URL and -O/--output are required")
    merge_range(parser, args)
    if args.copy and args.force_hard_link:
        parser.error("--copy and --force-hard-link exclude each other")
    if args.recursive:
        return main_recursive(parser, args)
    if args.include_files:
        parser.error("--include-files needs -r")

    existed = False
    output = ""
    started = time.monotonic()
    stream_to = stream_target(args.output)
    size: int | None = None
    try:
        if stream_to is not None:
            output = "standard output" if stream_to == "-" else stream_to
            traffic, size = download_and_stream(args, stream_to)
        else:
            output = check_output(args.output, overwrite=args.overwrite)
            existed = os.path.lexists(output)
            traffic = download(args, output, started)
    except DownloadFailed as exc:
        remove_partial(output, existed)
        # The error stays the last line (scripts read it); what explains it, such as origin headers, goes first.
        for note in getattr(exc, "__notes__", ()):
            print(f"dfget: {printable(note)}", file=sys.stderr)
        print(f"dfget: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        remove_partial(output, existed)
        print("dfget: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - started
    if size is None:
        size = os.path.getsize(output)
    print(
        f"dfget: saved {output}: {size} bytes ({human(size)}) in {elapsed:.2f}s "
        f"({human(size / elapsed if elapsed > 0 else 0)}/s); from origin={traffic.origin} "
        f"seed={traffic.seed} peers={traffic.peers} local={traffic.local}",
        file=sys.stderr,
    )
    if args.log_level == "debug":
        for parent, length in sorted(traffic.by_parent.items()):
            # A parent's peer id is chosen by that remote peer.
            print(f"dfget: from parent {printable(parent)}: {length} bytes", file=sys.stderr)
    return EXIT_OK


def main_recursive(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run ``dfget -r``: every file under the URL into the directory -O."""
    from dragonfly.cli.dfget.recursive import download_directory
    from dragonfly.common.schemes import scheme_of

    if scheme_of(args.url) in ("http", "https"):
        parser.error("-r needs a directory-like URL (s3, oss, obs, cos, gs, abs, hdfs, file, hf, modelscope)")
    if any(key.lower() == "range" for key, _ in args.header):
        parser.error("-r downloads whole files: --range cannot be used with it")
    output = os.path.abspath(os.path.expanduser(args.output))
    started = time.monotonic()
    try:
        if not os.path.isdir(output):
            fail(f"output directory {output} does not exist (-r writes into an existing directory)")
        count, size, traffic = download_directory(args, output, started)
    except DownloadFailed as exc:
        for note in getattr(exc, "__notes__", ()):
            print(f"dfget: {printable(note)}", file=sys.stderr)
        print(f"dfget: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("dfget: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    elapsed = time.monotonic() - started
    print(
        f"dfget: saved {count} files into {output}: {size} bytes ({human(size)}) in {elapsed:.2f}s "
        f"({human(size / elapsed if elapsed > 0 else 0)}/s); from origin={traffic.origin} "
        f"seed={traffic.seed} peers={traffic.peers} local={traffic.local}",
        file=sys.stderr,
    )
    return EXIT_OK
