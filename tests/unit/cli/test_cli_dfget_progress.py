"""dfget's progress bookkeeping (dragonfly.cli.dfget.progress.Traffic) over many per-piece messages.

A large download sends one message per piece and dfget asks how much of the expected range is held after each of
them. That count used to be a sum over every piece so far (n^2 / 2 steps for n pieces);
it is kept as the pieces arrive now. The oracle below recounts from the set of pieces, independently.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2

from dragonfly.cli.dfget import client, parser
from dragonfly.cli.dfget.messages import BACK_TO_SOURCE, LOCAL_PEER, REMOTE_PEER, Piece
from dragonfly.cli.dfget.progress import Traffic


def _piece(number: int, offset: int, length: int, traffic_type: int = REMOTE_PEER, parent: str = "p1") -> Piece:
    piece = Piece(b"")
    piece.number, piece.offset, piece.length, piece.traffic_type, piece.parent_id = (
        number,
        offset,
        length,
        traffic_type,
        parent,
    )
    return piece


class _CountingList(list[tuple[int, int]]):
    """The spans of a Traffic, counting how often something walks through all of them."""

    walks = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        type(self).walks += 1
        return super().__iter__()


def _oracle(pieces: dict[int, tuple[int, int]], start: int, end: int) -> int:
    return sum(max(0, min(offset + length, end) - max(offset, start)) for offset, length in pieces.values())


def test_many_progress_messages_are_counted_once_each_in_linear_time() -> None:
    """20,000 pieces of 3 bytes, shuffled, every tenth sent twice, into a range that cuts two of them; the count
    after each piece never walks the pieces received before it."""
    count, length = 20_000, 3
    start, end = 4, count * length - 5
    order = list(range(count))
    random.Random(14).shuffle(order)
    traffic = Traffic()
    traffic.spans = _CountingList()
    traffic.expect(start, end)
    _CountingList.walks = 0
    seen: dict[int, tuple[int, int]] = {}
    for step, number in enumerate(order, 1):
        traffic.add(_piece(number, number * length, length))
        seen[number] = (number * length, length)
        if number % 10 == 0:
            traffic.add(_piece(number, number * length, length))  # a repeat is not counted again
        if step % 5_000 == 0 or step < 50:
            assert traffic.covered == _oracle(seen, start, end)
    assert _CountingList.walks == 0
    assert traffic.covered == end - start
    assert traffic.peers == count * length
    assert traffic.by_parent == {"p1": count * length}


def test_pieces_before_the_range_are_counted_when_it_comes() -> None:
    traffic = Traffic()
    traffic.add(_piece(0, 0, 10, BACK_TO_SOURCE))
    traffic.add(_piece(1, 10, 10, LOCAL_PEER))
    assert traffic.covered == 0  # nothing is expected yet
    traffic.expect(5, 25)
    assert traffic.covered == 15
    traffic.expect(5, 25)  # the same range again changes nothing
    assert traffic.covered == 15
    traffic.add(_piece(2, 20, 10, parent="x-seed"))
    assert traffic.covered == 20
    # A daemon that changes the range gets a recount against the new one.
    traffic.expect(0, 30)
    assert traffic.covered == 30
    assert (traffic.origin, traffic.local, traffic.seed, traffic.peers) == (10, 10, 10, 0)


def test_a_download_of_many_pieces_reports_each_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through dfget's client against a stand-in daemon (grpcio's server): 5,000 piece messages, progress after
    each, the whole file at the end."""
    count, length = 5_000, 7
    size = count * length
    directory = Path(tempfile.mkdtemp(prefix="df-"))  # a short path for the socket
    output = directory / "out"
    socket_path = str(directory / "d.sock")

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        started = dfdaemon_pb2.DownloadTaskResponse(task_id="t", peer_id="p")
        started.download_task_started_response.content_length = size
        yield started.SerializeToString()
        output.write_bytes(b"x" * size)  # what the daemon writes
        for number in reversed(range(count)):
            piece = dfdaemon_pb2.DownloadTaskResponse(task_id="t", peer_id="p")
            piece.download_piece_finished_response.piece.CopyFrom(
                common_pb2.Piece(
                    number=number, offset=number * length, length=length, traffic_type=common_pb2.REMOTE_PEER
                )
            )
            yield piece.SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "dfdaemon.v2.DfdaemonDownload", {"DownloadTask": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    reported: list[tuple[int, int]] = []
    try:
        args = parser.build_parser().parse_args(
            ["http://origin/f", "-O", str(output), "-e", socket_path, "--no-progress"]
        )
        traffic = client.download(args, str(output), 0.0, lambda done, total: reported.append((done, total)))
    finally:
        server.stop(None).wait(5)
        output.unlink(missing_ok=True)
        directory.rmdir()
    assert reported == [(0, size)] + [(step * length, size) for step in range(1, count + 1)]
    assert (traffic.covered, traffic.peers, len(traffic.pieces)) == (size, size, count)
