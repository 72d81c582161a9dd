"""dfcache: put a local file into the swarm and take it out elsewhere (persistent cache tasks, docs/dfcache.md).

``dfcache import PATH`` copies the file into the local daemon's cache and registers it with the scheduler, which
keeps ``--persistent-replica-count`` copies for ``--ttl``; it prints the task id. ``dfcache export ID -O PATH``
fetches it on any other host; ``stat`` and ``delete`` do what they say. Like dfget, a thin client of the local
daemon's socket, and it starts as cheaply: it speaks gRPC over HTTP/2 with dfget's own client
(``dragonfly.cli.dfget.rpc``) and writes and reads its messages with dfget's (``dragonfly.cli.dfget.messages``),
so neither grpcio nor the protobuf runtime is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from dragonfly.cli import argtypes
from dragonfly.cli.arguments import add_log_level, parse_args, terminal_formatter
from dragonfly.cli.dfget.errors import printable

# typing is for the type checker only here: importing it costs a few ms at every start (bench/RESULTS.md §3).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from dragonfly.cli.dfget.rpc import RpcError

DEFAULT_ENDPOINT = "/var/run/dragonfly/dfdaemon.sock"
DEFAULT_TIMEOUT = 30 * 60.0
#: Dragonfly's rules: the daemon takes a TTL of 1m..7d, the scheduler 5m..7d. The import goes through both, so a
#: TTL the scheduler refuses would fail only after the daemon copied the file: dfcache refuses it first.
MIN_TTL, MAX_TTL = 5 * 60.0, 7 * 86400.0
#: With DRAGONFLY_REQUEST_VALIDATION=0 (servers that skip Dragonfly's rules, for tests of expiry) the floor is 1s.
MIN_TTL_UNVALIDATED = 1.0
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# A piece with its content (export to standard output) is up to 64 MiB plus its fields.
MAX_MESSAGE = 65 * 1024 * 1024
TASK_TYPE_METADATA = (("dragonfly-task-type", "persistent-cache"),)
SERVICE = "/dfdaemon.v2.DfdaemonDownload/"


class CommandFailed(Exception):
    """The daemon refused or failed the request; the message is shown to the user."""


def _ttl(text: str) -> float:
    value = argtypes.positive_duration(text, "the TTL")
    if os.environ.get("DRAGONFLY_REQUEST_VALIDATION", "1") == "0":
        if not MIN_TTL_UNVALIDATED <= value <= MAX_TTL:
            raise argparse.ArgumentTypeError(f"{text!r}: the TTL must be between 1s and 7d")
        return value
    if value < MIN_TTL:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the TTL must be at least 5m (the scheduler keeps a persistent cache task 5m..7d)"
        )
    if value > MAX_TTL:
        raise argparse.ArgumentTypeError(f"{text!r}: the TTL must be at most 7d")
    return value


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    # Dragonfly's rules for UploadPersistentCacheTaskRequest (the daemon refuses more).
    if not 1 <= value <= 5:
        raise argparse.ArgumentTypeError(f"{text!r}: the replica count must be between 1 and 5")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfcache",
        formatter_class=terminal_formatter,
        description="Import files into the swarm as persistent cache tasks and export them on other hosts.",
        epilog="Exit status: 0 on success, 1 when the daemon failed the request, 2 for a malformed command line.",
    )
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "-e", "--endpoint", default=DEFAULT_ENDPOINT, help=f"the dfdaemon socket (default: {DEFAULT_ENDPOINT})"
        )
        sub.add_argument(
            "--timeout", type=argtypes.timeout, default=DEFAULT_TIMEOUT, help="give up after this (default: 30m)"
        )
        add_log_level(sub)

    imp = commands.add_parser(
        "import", help="import a local file; prints its task id", formatter_class=terminal_formatter
    )
    imp.add_argument("path", help="the file to import")
    imp.add_argument("--persistent-replica-count", type=_replicas, default=2, help="copies to keep (default: 2)")
    imp.add_argument("--ttl", type=_ttl, default=3600.0, help="lifetime, 5m..7d (default: 1h)")
    imp.add_argument("--piece-length", type=argtypes.piece_length, help="piece length (default: from the size)")
    imp.add_argument("--tag", default="", help="task tag (part of the task id)")
    imp.add_argument("--application", default="", help="caller application (part of the task id)")
    imp.add_argument(
        "--content-for-calculating-task-id", help="the task id is sha256 of this string instead of the content"
    )
    common(imp)

    exp = commands.add_parser(
        "export", help="fetch a persistent cache task to a local file", formatter_class=terminal_formatter
    )
    exp.add_argument("id", type=argtypes.task_id, help="the task id")
    exp.add_argument(
        "-O", "--output", required=True, help="output file path (its directory must exist); '-' for standard output"
    )
    exp.add_argument("--tag", default="", help="task tag")
    exp.add_argument("--application", default="", help="caller application")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    exp.add_argument("--force-hard-link", action="store_true", help="hard-link the cache file or fail")
    exp.add_argument("--persistent", action="store_true", help="keep this copy as a persistent replica")
    common(exp)

    stat = commands.add_parser("stat", help="show a persistent cache task", formatter_class=terminal_formatter)
    stat.add_argument("id", type=argtypes.task_id, help="the task id")
    common(stat)

    delete = commands.add_parser(
        "delete", help="delete a task (everywhere when this host imported it)", formatter_class=terminal_formatter
    )
    delete.add_argument("id", type=argtypes.task_id, help="the task id")
    common(delete)
    return parser


def _fail(message: str) -> NoReturn:
    raise CommandFailed(message)


def _describe(error: RpcError, endpoint: str) -> str:
    from dragonfly.cli.dfget import rpc

    if error.code == rpc.UNAVAILABLE and not os.path.exists(endpoint):
        return f"no dfdaemon is listening on {endpoint}"
    return f"{error.code_name}: {error.details}"


def _duration(seconds: float) -> dict[str, int]:
    """Return a ``google.protobuf.Duration`` of a non-negative number of seconds, as messages.encode takes it."""
    whole = int(seconds)
    return {"seconds": whole, "nanos": int((seconds - whole) * 1e9)}


def _unary(args: argparse.Namespace, method: str, request: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    """Run a unary call on the daemon; return its one answer."""
    from dragonfly.cli.dfget import rpc

    answers = rpc.call(
        args.endpoint,
        SERVICE + method,
        request,
        timeout=args.timeout + 10.0,
        metadata=metadata,
        max_message=MAX_MESSAGE,
    )
    try:
        answer = next(answers, None)
        if answer is None:
            _fail(f"dfdaemon answered {method} with no message")
        # A second answer fails the call at once: gathering them all held every one in memory until the deadline.
        if next(answers, None) is not None:
            _fail(f"dfdaemon answered {method} with more than one message")
    finally:
        answers.close()
    return answer


def _import(args: argparse.Namespace) -> None:
    from dragonfly.cli.dfget import messages

    path = os.path.abspath(args.path)
    if not os.path.isfile(path):
        _fail(f"{args.path} is not a file")
    request = {
        "path": path,
        "persistent_replica_count": args.persistent_replica_count,
        "tag": args.tag,
        "application": args.application,
        "ttl": _duration(args.ttl),
        "timeout": _duration(args.timeout),
        # Left out (None) unless given: the daemon then chooses.
        "piece_length": args.piece_length or None,
        "content_for_calculating_task_id": args.content_for_calculating_task_id,
    }
    task = messages.PersistentCacheTask(
        _unary(args, "UploadPersistentCacheTask", _encode(messages.UPLOAD_PERSISTENT_CACHE_TASK_REQUEST, request))
    )
    print(printable(task.id))


def _export(args: argparse.Namespace) -> None:
    from dragonfly.cli.dfget import messages, rpc

    # "-": the daemon sends the (verified) bytes with each piece and they go to standard output.
    stream = args.output == "-"
    output = "-" if stream else os.path.abspath(args.output)
    began = time.monotonic()
    request = _encode(
        messages.DOWNLOAD_PERSISTENT_CACHE_TASK_REQUEST,
        {
            "task_id": args.id,
            "persistent": args.persistent,
            "tag": args.tag,
            "application": args.application,
            "timeout": _duration(args.timeout),
            "overwrite": args.overwrite,
            "force_hard_link": args.force_hard_link,
            "need_piece_content": stream,
            "output_path": None if stream else output,
        },
    )
    size = written = 0
    responses = rpc.call(
        args.endpoint,
        SERVICE + "DownloadPersistentCacheTask",
        request,
        timeout=args.timeout + 10.0,
        max_message=MAX_MESSAGE,
    )
    try:
        for data in responses:
            response = messages.PersistentCacheDownload(data)
            if response.content_length is not None:
                size = response.content_length
            elif stream and response.content is not None:
                # Standard output takes the bytes in order: a piece anywhere else would be written in the wrong
                # place (the daemon sends them in order, verified).
                if response.offset != written:
                    _fail(f"dfdaemon sent the piece at byte {response.offset} where byte {written} was due")
                sys.stdout.buffer.write(response.content)
                written += len(response.content)
    finally:
        responses.close()
    if stream:
        sys.stdout.buffer.flush()
        if written != size:
            _fail(f"dfdaemon sent {written} of the task's {size} bytes")
    print(f"{output}: {size} bytes in {time.monotonic() - began:.2f}s", file=sys.stderr)


def _stat(args: argparse.Namespace) -> None:
    from dragonfly.cli.dfget import messages

    task = messages.PersistentCacheTask(
        _unary(args, "StatPersistentCacheTask", _encode(messages.TASK_ID_REQUEST, {"task_id": args.id}))
    )
    print(f"id: {printable(task.id)}")
    print(f"state: {printable(task.state)}")
    print(f"content length: {task.content_length}")
    print(f"piece length: {task.piece_length} ({task.piece_count} pieces)")
    print(f"persistent replicas: {task.current_persistent_replica_count} of {task.persistent_replica_count}")
    print(f"other replicas: {task.current_replica_count}")
    try:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(task.created_at))
    except (OverflowError, OSError, ValueError):
        created = f"at {task.created_at}s since the epoch"
    print(f"ttl: {task.ttl:g}s, created {created}")
    if task.tag:
        print(f"tag: {printable(task.tag)}")
    if task.application:
        print(f"application: {printable(task.application)}")


def _delete(args: argparse.Namespace) -> None:
    from dragonfly.cli.dfget import messages

    request = _encode(messages.TASK_ID_REQUEST, {"task_id": args.id})
    _unary(args, "DeleteTask", request, TASK_TYPE_METADATA)


def _encode(schema: dict[str, Any], fields: dict[str, Any]) -> bytes:
    from dragonfly.cli.dfget import messages

    try:
        return messages.encode(schema, fields)
    except messages.MessageError as exc:
        _fail(f"cannot ask dfdaemon: {exc}")


COMMANDS = {"import": _import, "export": _export, "stat": _stat, "delete": _delete}


def run(args: argparse.Namespace) -> int:
    """Run the command on the daemon over its socket (dfget's own gRPC client: no grpcio, no protobuf runtime)."""
    from dragonfly.cli.dfget import messages, rpc

    try:
        COMMANDS[args.command](args)
    except rpc.RpcError as error:
        _fail(_describe(error, args.endpoint))
    except messages.MessageError as exc:
        _fail(f"dfdaemon sent a malformed answer: {exc}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.version:
        import dragonfly

        print(f"dfcache {dragonfly.__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("dfcache: error: a command is required (import, export, stat, delete)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run(args)
    except CommandFailed as exc:
        print(f"dfcache {args.command}: {printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
