"""d) The same scripted AnnouncePeer conversations against Dragonfly's Go scheduler and ours (issue 10).

Each conversation is a host announcement and a list of AnnouncePeer messages; the answers (response kinds, or the
status code that ended the stream) are compared. Where the two differ on purpose, DIFFERENCES says how and why;
docs/interop.md#deliberate-differences keeps the same list.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from dragonfly_api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf import duration_pb2
from interop_helpers import GoScheduler, needs_go

from dragonfly.cli.cluster import LocalCluster

pytestmark = needs_go
MiB = 1024 * 1024


def host(name: str, port: int = 40000) -> common_pb2.Host:
    return common_pb2.Host(
        id=f"127.0.0.1-{name}",
        hostname=name,
        ip="127.0.0.1",
        port=port,
        download_port=port + 1,
        os="linux",
        network=common_pb2.Network(max_tx_bandwidth=10**9, max_rx_bandwidth=10**9),
        cpu=common_pb2.CPU(logical_count=2, physical_count=2),
        memory=common_pb2.Memory(total=8 << 30),
        disk=common_pb2.Disk(total=100 << 30),
    )


def download(url: str = "http://127.0.0.1:9/file", *, sized: bool = True, **fields: Any) -> common_pb2.Download:
    message = common_pb2.Download(url=url, type=common_pb2.STANDARD, priority=common_pb2.LEVEL6, **fields)
    if sized:
        message.actual_content_length = 16 * MiB
        message.actual_piece_length = 4 * MiB
        message.actual_piece_count = 4
    return message


def register(**fields: Any) -> dict[str, Any]:
    return {"register_peer_request": scheduler_pb2.RegisterPeerRequest(download=download(**fields))}


def piece(**fields: Any) -> common_pb2.Piece:
    return common_pb2.Piece(number=0, offset=0, length=4 * MiB, **fields)


def announce_host(stub: Any, message: common_pb2.Host) -> str:
    try:
        stub.AnnounceHost(
            scheduler_pb2.AnnounceHostRequest(host=message, interval=duration_pb2.Duration(seconds=300)), timeout=10
        )
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def converse(stub: Any, who: common_pb2.Host, messages: list[dict[str, Any]], linger: float) -> list[str]:
    """Send the messages on one AnnouncePeer stream; return the response kinds, then the error code if any."""
    peer_id = f"127.0.0.1-{who.hostname}-{uuid.uuid4()}"
    task_id = uuid.uuid4().hex * 2

    def requests() -> Iterator[scheduler_pb2.AnnouncePeerRequest]:
        for fields in messages:
            yield scheduler_pb2.AnnouncePeerRequest(host_id=who.id, task_id=task_id, peer_id=peer_id, **fields)
        time.sleep(linger)

    answers: list[str] = []
    try:
        for response in stub.AnnouncePeer(requests(), timeout=linger + 15):
            answers.append(response.WhichOneof("response"))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            answers.append(exc.code().name)
    return answers


BACK_TO_SOURCE_PIECE = {
    "download_piece_back_to_source_finished_request": scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
        piece=piece()
    )
}
# name: (messages, seconds to keep the stream open after the last one)
CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], float]] = {
    "register, no parent anywhere": ([register()], 5.0),
    "register an empty file": ([register(sized=False)], 3.0),
    "relative URL": ([register(url="/relative/file")], 1.0),
    "piece length 1 KiB": ([register(piece_length=1024)], 1.0),
    "no request in the oneof": ([{}], 1.0),
    "piece report without cost": ([register(), BACK_TO_SOURCE_PIECE], 5.0),
    "first message is not a registration": (
        [{"download_peer_started_request": scheduler_pb2.DownloadPeerStartedRequest()}],
        1.0,
    ),
}
# Where ours answers differently on purpose: conversation -> (Go's answer, ours, why).
DIFFERENCES: dict[str, tuple[list[str], list[str], str]] = {
    "first message is not a registration": (
        ["NOT_FOUND"],
        ["FAILED_PRECONDITION"],
        "the peer does exist as far as the caller knows; the order is wrong, and ours says so",
    ),
    "register an empty file": (
        ["empty_task_response"],
        ["need_back_to_source_response"],
        "without actual_content_length the size is unknown, not 0: answering 'empty' would give the peer an empty "
        "file; Dragonfly's clients always send it (they stat the origin first), so they see no difference",
    ),
}


@pytest.fixture(scope="module")
def schedulers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("conversations")
    with (
        GoScheduler(workdir / "go") as go,
        LocalCluster(workdir / "ours", peers=0, seed_peer=False, tls=False, start_timeout=60) as ours,
        grpc.insecure_channel(go.addr) as go_channel,
        grpc.insecure_channel(ours.scheduler_addr) as our_channel,
    ):
        yield {
            "go": scheduler_pb2_grpc.SchedulerStub(go_channel),
            "ours": scheduler_pb2_grpc.SchedulerStub(our_channel),
        }


def test_host_announcements(schedulers: dict[str, Any]) -> None:
    for name, stub in schedulers.items():
        assert announce_host(stub, host("talker")) == "OK", name
        assert announce_host(stub, host("low-port", port=80)) == "INVALID_ARGUMENT", name


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_same_conversation_same_answers(schedulers: dict[str, Any], name: str) -> None:
    messages, linger = CONVERSATIONS[name]
    answers = {}
    for side, stub in schedulers.items():
        assert announce_host(stub, host("talker")) == "OK"
        answers[side] = converse(stub, host("talker"), messages, linger)
    print(f"conversation {name!r}: go {answers['go']} ours {answers['ours']}")
    if name in DIFFERENCES:
        go, ours, _why = DIFFERENCES[name]
        assert (answers["go"], answers["ours"]) == (go, ours)
    else:
        assert answers["go"] == answers["ours"]


def test_unknown_host_is_not_found_on_both(schedulers: dict[str, Any]) -> None:
    for stub in schedulers.values():
        assert converse(stub, host("never-announced"), [register()], 1.0) == ["NOT_FOUND"]
