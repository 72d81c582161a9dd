"""dfcache: put a local file into the swarm and take it out elsewhere (persistent cache tasks, docs/dfcache.md).

``dfcache import PATH`` copies the file into the local daemon's cache and registers it with the scheduler, which
keeps ``--persistent-replica-count`` copies for ``--ttl``; it prints the task id. ``dfcache export ID -O PATH``
fetches it on any other host; ``stat`` and ``delete`` do what they say. Like dfget, a thin client of the local
daemon's socket.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, NoReturn

from dragonfly.cli import argtypes
from dragonfly.cli.arguments import add_log_level, parse_args

DEFAULT_ENDPOINT = "/var/run/dragonfly/dfdaemon.sock"
DEFAULT_TIMEOUT = 30 * 60.0
#: Dragonfly's rules: the daemon takes a TTL of 1m..7d, the scheduler 5m..7d. The import goes through both, so a
#: TTL the scheduler refuses would fail only after the daemon copied the file: dfcache refuses it first.
MIN_TTL, MAX_TTL = 5 * 60.0, 7 * 86400.0
#: With DRAGONFLY_REQUEST_VALIDATION=0 (servers that skip Dragonfly's rules, for tests of expiry) the floor is 1s.
MIN_TTL_UNVALIDATED = 1.0
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# A piece with its content (export to standard output) is up to 64 MiB plus its fields.
LOCAL_API_CHANNEL_OPTIONS = (
    ("grpc.default_authority", "localhost"),
    ("grpc.max_receive_message_length", 65 * 1024 * 1024),
)
TASK_TYPE_METADATA = (("dragonfly-task-type", "persistent-cache"),)


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

    imp = commands.add_parser("import", help="import a local file; prints its task id")
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

    exp = commands.add_parser("export", help="fetch a persistent cache task to a local file")
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

    stat = commands.add_parser("stat", help="show a persistent cache task")
    stat.add_argument("id", type=argtypes.task_id, help="the task id")
    common(stat)

    delete = commands.add_parser("delete", help="delete a task (everywhere when this host imported it)")
    delete.add_argument("id", type=argtypes.task_id, help="the task id")
    common(delete)
    return parser


def _fail(message: str) -> NoReturn:
    raise CommandFailed(message)


def _describe(error: Any, endpoint: str) -> str:
    import grpc

    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE and not os.path.exists(endpoint):
        return f"no dfdaemon is listening on {endpoint}"
    return f"{code.name}: {error.details()}"


def run(args: argparse.Namespace) -> int:
    import grpc
    from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc

    from dragonfly.common.pbtime import duration

    with grpc.insecure_channel(f"unix:{args.endpoint}", options=LOCAL_API_CHANNEL_OPTIONS) as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)  # type: ignore[no-untyped-call]
        deadline = args.timeout + 10.0
        try:
            if args.command == "import":
                path = os.path.abspath(args.path)
                if not os.path.isfile(path):
                    _fail(f"{args.path} is not a file")
                request = dfdaemon_pb2.UploadPersistentCacheTaskRequest(
                    path=path,
                    persistent_replica_count=args.persistent_replica_count,
                    tag=args.tag,
                    application=args.application,
                    ttl=duration(args.ttl),
                    timeout=duration(args.timeout),
                )
                if args.piece_length:
                    request.piece_length = args.piece_length
                if args.content_for_calculating_task_id is not None:
                    request.content_for_calculating_task_id = args.content_for_calculating_task_id
                task = stub.UploadPersistentCacheTask(request, timeout=deadline)
                print(task.id)
            elif args.command == "export":
                # "-": the daemon sends the (verified) bytes with each piece and they go to standard output.
                stream = args.output == "-"
                output = "-" if stream else os.path.abspath(args.output)
                began = time.monotonic()
                request = dfdaemon_pb2.DownloadPersistentCacheTaskRequest(
                    task_id=args.id,
                    persistent=args.persistent,
                    tag=args.tag,
                    application=args.application,
                    timeout=duration(args.timeout),
                    overwrite=args.overwrite,
                    force_hard_link=args.force_hard_link,
                    need_piece_content=stream,
                )
                if not stream:
                    request.output_path = output
                size = 0
                for response in stub.DownloadPersistentCacheTask(request, timeout=deadline):
                    if response.HasField("download_persistent_cache_task_started_response"):
                        size = response.download_persistent_cache_task_started_response.content_length
                    elif stream:
                        sys.stdout.buffer.write(response.download_piece_finished_response.piece.content)
                if stream:
                    sys.stdout.buffer.flush()
                print(f"{output}: {size} bytes in {time.monotonic() - began:.2f}s", file=sys.stderr)
            elif args.command == "stat":
                task = stub.StatPersistentCacheTask(
                    dfdaemon_pb2.StatPersistentCacheTaskRequest(task_id=args.id), timeout=deadline
                )
                ttl = task.ttl.seconds + task.ttl.nanos * 1e-9
                print(f"id: {task.id}")
                print(f"state: {task.state}")
                print(f"content length: {task.content_length}")
                print(f"piece length: {task.piece_length} ({task.piece_count} pieces)")
                print(
                    f"persistent replicas: {task.current_persistent_replica_count} of {task.persistent_replica_count}"
                )
                print(f"other replicas: {task.current_replica_count}")
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(task.created_at.seconds))
                print(f"ttl: {ttl:g}s, created {created}")
                if task.tag:
                    print(f"tag: {task.tag}")
                if task.application:
                    print(f"application: {task.application}")
            elif args.command == "delete":
                stub.DeleteTask(
                    dfdaemon_pb2.DeleteTaskRequest(task_id=args.id), metadata=TASK_TYPE_METADATA, timeout=deadline
                )
        except grpc.RpcError as error:
            _fail(_describe(error, args.endpoint))
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
        print(f"dfcache {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
