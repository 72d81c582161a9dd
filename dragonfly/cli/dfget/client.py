"""dfget's client of the daemon's local API (``DfdaemonDownload`` on the unix socket): DownloadTask, ListTaskEntries."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from dragonfly.cli.dfget import messages, rpc
from dragonfly.cli.dfget.errors import START_HINT, DownloadFailed, describe_rpc_error, fail, printable
from dragonfly.cli.dfget.progress import ProgressBar, Traffic
from dragonfly.cli.dfget.request import describe_download, source_settings
from dragonfly.common.grpc_metadata import INSECURE_ORIGIN_METADATA, OUTPUT_COPY_METADATA

# typing is for the type checker only here: importing it costs a few ms at every dfget start (bench/RESULTS.md §3).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DOWNLOAD_TASK = "/dfdaemon.v2.DfdaemonDownload/DownloadTask"
LIST_TASK_ENTRIES = "/dfdaemon.v2.DfdaemonDownload/ListTaskEntries"
DEFAULT_TIMEOUT = 2 * 3600.0


def download(
    args: argparse.Namespace,
    output: str,
    began: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> Traffic:
    """Run DownloadTask on the daemon; return the traffic by source once the file is complete.

    ``on_progress`` is called with the bytes received and the bytes expected after each piece.
    """
    if not os.path.exists(args.endpoint):
        fail(f"dfdaemon is not running: no socket at {args.endpoint}; {START_HINT}")

    from dragonfly.common.filtered_query_params import DEFAULT_FILTERED_QUERY_PARAMS

    filtered = args.filtered_query_param if args.filtered_query_param is not None else DEFAULT_FILTERED_QUERY_PARAMS
    timeout = DEFAULT_TIMEOUT if args.timeout is None else float(args.timeout)
    download: dict[str, Any] = {
        "url": args.url,
        "digest": args.digest,
        "tag": args.tag,
        "application": args.application,
        "priority": args.priority,
        "filtered_query_params": list(filtered),
        "request_header": dict(args.header),
        "piece_length": args.piece_length,
        "output_path": output,
        "timeout": {"seconds": int(timeout), "nanos": int((timeout % 1) * 1e9)},
        "disable_back_to_source": args.disable_back_to_source,
        "overwrite": args.overwrite,
        "force_hard_link": args.force_hard_link,
        "certificate_chain": list(args.ca_cert),
        **source_settings(args.url, args),
    }
    # Before anything is shown: the debug rendering below would fail on the same values.
    try:
        request = messages.download_task_request(download)
    except messages.MessageError as exc:
        fail(f"cannot ask dfdaemon for the download: {exc}")
    metadata: tuple[tuple[str, str], ...] = ()
    if args.insecure_skip_verify:
        print("dfget: warning: the origin's TLS certificate is not verified (--insecure-skip-verify)", file=sys.stderr)
        metadata += ((INSECURE_ORIGIN_METADATA, "true"),)
    if args.copy:
        metadata += ((OUTPUT_COPY_METADATA, "true"),)
    if args.log_level == "debug":
        print(f"dfget: DownloadTask on unix:{args.endpoint}: {describe_download(download)}", file=sys.stderr)

    show_progress = not args.no_progress and sys.stderr.isatty()
    bar = ProgressBar(os.path.basename(output), began) if show_progress else None
    traffic = Traffic()
    content_length: int | None = None
    finished_locally = False
    responses = rpc.call(args.endpoint, DOWNLOAD_TASK, request, timeout=timeout, metadata=metadata)
    try:
        for data in responses:
            try:
                response = messages.DownloadTaskResponse(data)
            except messages.MessageError as exc:
                fail(f"dfdaemon sent a malformed DownloadTaskResponse: {exc}")
            started = response.started
            if started is not None:
                content_length = started.content_length
                # What the output must hold: the whole content, or the range the daemon resolved.
                if started.range is not None:
                    traffic.expect(started.range[0], started.range[0] + started.range[1])
                else:
                    traffic.expect(0, content_length)
                finished_locally = started.is_finished
                if args.log_level == "debug":
                    print(
                        f"dfget: task {printable(response.task_id)} peer {printable(response.peer_id)}", file=sys.stderr
                    )
            elif response.piece is not None:
                traffic.add(response.piece)
            expected = traffic.expected
            if expected is not None:
                if bar is not None:
                    bar.update(traffic.covered, expected[1] - expected[0])
                if on_progress is not None:
                    on_progress(traffic.covered, expected[1] - expected[0])
    except rpc.RpcError as error:
        raise describe_rpc_error(
            error, args.endpoint, timeout, content_length is not None, verbose=args.log_level == "debug"
        ) from None
    finally:
        # Closes the connection when the loop ends early (an interrupt), which cancels the call in the daemon.
        responses.close()
        if bar is not None:
            if traffic.expected is not None:
                bar.update(traffic.covered, traffic.expected[1] - traffic.expected[0], force=True)
            bar.close()

    if content_length is None or traffic.expected is None:
        fail("dfdaemon ended the download without starting it (no DownloadTaskStartedResponse)")
    start, end = traffic.expected
    if finished_locally and not traffic.pieces:
        # A daemon may answer a full local hit with the started message alone.
        traffic.local = content_length
        traffic.hold(0, content_length)
    if traffic.covered != end - start:
        fail(f"download incomplete: received {traffic.covered} of {end - start} bytes")
    try:
        size = os.stat(output).st_size
    except FileNotFoundError:
        fail(f"dfdaemon reported success but wrote no file at {output}")
    if size != end - start:
        fail(f"output file {output} has {size} bytes, expected {end - start}")
    return traffic


def list_entries(args: argparse.Namespace, url: str) -> list[messages.Entry]:
    """Ask the daemon for the entries under ``url`` (``ListTaskEntries``)."""
    import uuid

    if not os.path.exists(args.endpoint):
        fail(f"dfdaemon is not running: no socket at {args.endpoint}; {START_HINT}")
    timeout = DEFAULT_TIMEOUT if args.timeout is None else float(args.timeout)
    try:
        request = messages.encode(
            messages.LIST_TASK_ENTRIES_REQUEST,
            {
                "task_id": str(uuid.uuid4()),
                "url": url,
                "request_header": dict(args.header),
                "timeout": {"seconds": int(timeout), "nanos": int((timeout % 1) * 1e9)},
                **source_settings(url, args),
            },
        )
    except messages.MessageError as exc:
        fail(f"listing {url!r} failed: cannot ask dfdaemon: {exc}")
    try:
        answers = list(rpc.call(args.endpoint, LIST_TASK_ENTRIES, request, timeout=timeout))
    except rpc.RpcError as error:
        failure = describe_rpc_error(error, args.endpoint, timeout, False, verbose=args.log_level == "debug")
        raise DownloadFailed(str(failure).replace("download failed", f"listing {url} failed", 1)) from None
    if len(answers) != 1:
        fail(f"listing {url} failed: dfdaemon answered ListTaskEntries with {len(answers)} messages, not one")
    try:
        return messages.list_task_entries(answers[0])
    except messages.MessageError as exc:
        fail(f"listing {url} failed: dfdaemon sent a malformed ListTaskEntriesResponse: {exc}")
