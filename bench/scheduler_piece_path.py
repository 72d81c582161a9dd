"""`python -m bench.scheduler_piece_path`: what one piece report costs the scheduler's Python, without gRPC.

In one process, a source peer reports every piece of a task from the origin and a child registers; then the child's
``--reports`` piece reports (each from the source, as a DownloadPieceFinishedRequest) are decoded and validated as
the gRPC server does (``grpc_decoding``) and handled by the stream (``PeerStream.handle``). Printed per report:
Python and C function calls (counted with ``sys.setprofile`` over the first 200 reports), and the CPU time of the
whole loop (process time, the best of ``--rounds``; the later rounds report pieces the child holds already).

``--checkout DIR`` (repeatable) runs the same loop with another checkout's ``dragonfly`` package (e.g. a worktree
at the baseline commit, sharing this venv), alternating the checkouts round by round, so old and new code are
measured side by side. Counts do not depend on the machine's load; the times do. The loop alone, without the
setup, is what ``valgrind --tool=callgrind`` counts as the difference between ``--reports N`` and ``--reports 0``
with ``--child --rounds 1``, or better between ``--child --only setup`` and ``--child --only loop`` (one uncounted
loop over the reports).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_COUNTED = 200


def _host(index: int) -> Any:
    from dragonfly_api import common_pb2

    ip = f"10.0.0.{index + 1}"
    return common_pb2.Host(id=f"{ip}-host-{index}", hostname=f"host-{index}", ip=ip, port=4000, download_port=4000)


def _download(pieces: int, *, source: bool) -> Any:
    from dragonfly_api import common_pb2

    download = common_pb2.Download(url="http://origin.bench/blob", need_back_to_source=source)
    download.actual_piece_length = 4 * 1024 * 1024
    download.actual_content_length = pieces * 4 * 1024 * 1024
    download.actual_piece_count = pieces
    return download


async def _measure(reports: int, rounds: int, only: str | None = None) -> dict[str, float]:
    from dragonfly_api import common_pb2, scheduler_pb2
    from google.protobuf import duration_pb2, timestamp_pb2

    from dragonfly.common import grpc_decoding
    from dragonfly.scheduler.config import load
    from dragonfly.scheduler.server import SchedulerContext
    from dragonfly.scheduler.service.announce_peer import PeerStream

    config = load(
        None,
        overrides={
            "server": {"host": "127.0.0.1", "port": 0},
            "metrics": {"enable": False},
            "security": {"enable": False},
            "seedPeer": {"enable": False},
        },
    )
    ctx = SchedulerContext.create(config)
    now = time.monotonic()
    hosts = [_host(index) for index in range(2)]
    for host in hosts:
        ctx.resource.announce_host(host, 3600, now)
    task_id = "a" * 64
    pieces = max(reports, 1)
    created_at = timestamp_pb2.Timestamp(seconds=int(time.time()))

    def request(host: Any, peer_id: str, **fields: Any) -> Any:
        return scheduler_pb2.AnnouncePeerRequest(host_id=host.id, task_id=task_id, peer_id=peer_id, **fields)

    def piece(number: int, **fields: Any) -> Any:
        return common_pb2.Piece(
            number=number,
            offset=number << 22,
            length=1 << 22,
            digest=f"crc32:{number}",
            cost=duration_pb2.Duration(nanos=10_000_000),
            created_at=created_at,
            **fields,
        )

    source, source_id = PeerStream(ctx), str(uuid.uuid4())
    register = scheduler_pb2.RegisterPeerRequest(download=_download(pieces, source=True))
    await source.handle(request(hosts[0], source_id, register_peer_request=register))
    started = scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
    await source.handle(request(hosts[0], source_id, download_peer_back_to_source_started_request=started))
    for number in range(pieces):
        finished = scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
            piece=piece(number, traffic_type=common_pb2.BACK_TO_SOURCE)
        )
        await source.handle(request(hosts[0], source_id, download_piece_back_to_source_finished_request=finished))
    child, child_id = PeerStream(ctx), str(uuid.uuid4())
    register = scheduler_pb2.RegisterPeerRequest(download=_download(pieces, source=False))
    answer = await child.handle(request(hosts[1], child_id, register_peer_request=register))
    assert answer is not None
    assert answer.WhichOneof("response") == "normal_task_response", answer
    await child.handle(
        request(hosts[1], child_id, download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
    )
    messages = [
        request(
            hosts[1],
            child_id,
            download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(
                piece=piece(number, traffic_type=common_pb2.REMOTE_PEER, parent_id=source_id)
            ),
        ).SerializeToString()
        for number in range(reports)
    ]
    deserialize = grpc_decoding._tolerant(scheduler_pb2.AnnouncePeerRequest.FromString, True)
    assert deserialize is not None

    def handle(data: bytes) -> None:
        # Piece reports never await: the coroutine runs to its end in one step, without an event loop's turn.
        coroutine = child.handle(deserialize(data))
        try:
            coroutine.send(None)
        except StopIteration:
            return
        raise RuntimeError("a piece report awaited")

    if only is not None:
        if only == "loop":
            for data in messages:
                handle(data)
        return {}
    calls = {"call": 0, "c_call": 0}

    def count(_frame: Any, event: str, _arg: Any) -> None:
        if event in calls:
            calls[event] += 1

    counted = messages[:_COUNTED]
    for data in counted:
        sys.setprofile(count)
        try:
            handle(data)
        finally:
            sys.setprofile(None)
    best = float("inf")
    for _ in range(rounds):
        begun = time.process_time()
        for data in messages:
            handle(data)
        best = min(best, time.process_time() - begun)
    held = ctx.resource.peers[child_id].pieces.count
    assert held == reports, f"the child holds {held} of {reports} pieces"
    return {
        "python_calls": calls["call"] / max(len(counted), 1),
        "c_calls": calls["c_call"] / max(len(counted), 1),
        "cpu_us": best * 1e6 / max(reports, 1),
    }


def _child(reports: int, rounds: int, only: str | None) -> int:
    figures = asyncio.run(_measure(reports, rounds, only))
    print(" ".join(f"{key}={value:.2f}" for key, value in figures.items()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Measure this checkout, or each ``--checkout`` alternately; print the figures per checkout."""
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler_piece_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=4096, help="piece reports per round (and pieces in the task)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checkout", action="append", default=[], help="a checkout whose dragonfly package to use")
    parser.add_argument("--child", action="store_true", help="measure in this process (what --checkout runs)")
    parser.add_argument(
        "--only",
        choices=("setup", "loop"),
        help="with --child: only the setup, or the setup and one uncounted loop (for valgrind's instruction counts)",
    )
    args = parser.parse_args(argv)
    if args.reports < 0 or args.rounds < 1:
        parser.error("need --reports >= 0 and --rounds >= 1")
    if args.child:
        return _child(args.reports, args.rounds, args.only)
    checkouts = [Path(checkout).resolve() for checkout in args.checkout] or [REPO]
    results: dict[Path, list[str]] = {checkout: [] for checkout in checkouts}
    for _ in range(args.rounds):
        for checkout in checkouts:
            # The script by path, not -m: the checkout's own bench package must not shadow this one.
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            command = [sys.executable, str(Path(__file__)), "--child", "--reports", str(args.reports), "--rounds", "1"]
            output = subprocess.run(command, cwd=checkout, env=env, check=True, capture_output=True, text=True)
            results[checkout].append(output.stdout.strip())
    for checkout, lines in results.items():
        print(checkout)
        for line in lines:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    # Run by path (see main), this directory comes first on sys.path: its modules must not shadow anything.
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
    sys.exit(main())
