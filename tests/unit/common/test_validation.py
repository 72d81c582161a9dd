"""Request validation: every rule kind the generated table holds, with protoc-gen-validate's semantics (issue 10).

Each case is a real message of Dragonfly's API that breaks (or keeps) one rule; ``COVERED`` names the rule keys the
cases exercise, and a test checks that it includes every key the table uses, so a new kind of rule in the protos
cannot be applied untested.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2, manager_pb2, scheduler_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from dragonfly.common import validation, validation_rules

PIECE_DIGEST = "crc32:" + "ab12cd34"


def host(**overrides: Any) -> common_pb2.Host:
    fields: dict[str, Any] = {"id": "h1", "hostname": "node-1", "ip": "10.0.0.1", "port": 4000, "download_port": 4005}
    fields.update(overrides)
    return common_pb2.Host(**fields)


def peer_request(**fields: Any) -> scheduler_pb2.AnnouncePeerRequest:
    return scheduler_pb2.AnnouncePeerRequest(host_id="h1", task_id="t1", peer_id="p1", **fields)


def register(**download: Any) -> scheduler_pb2.AnnouncePeerRequest:
    fields: dict[str, Any] = {"url": "https://example.com/file"}
    fields.update(download)
    return peer_request(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=common_pb2.Download(**fields)))


def piece(**overrides: Any) -> common_pb2.Piece:
    fields: dict[str, Any] = {"number": 1, "offset": 0, "length": 4 << 20, "digest": PIECE_DIGEST}
    fields.update(overrides)
    message = common_pb2.Piece(**fields)
    if "cost" not in overrides:
        message.cost.FromMilliseconds(5)
    if "created_at" not in overrides:
        message.created_at.GetCurrentTime()
    return message


def piece_finished(**overrides: Any) -> scheduler_pb2.AnnouncePeerRequest:
    return peer_request(
        download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece(**overrides))
    )


def without(message: Message, *path: str) -> Message:
    """Return a copy of ``message`` with the field at ``path`` cleared."""
    copy = type(message)()
    copy.CopyFrom(message)
    target: Any = copy
    for name in path[:-1]:
        target = getattr(target, name)
    target.ClearField(path[-1])
    return copy


VALID = [
    register(),
    register(piece_length=4 << 20, digest="sha256:" + "a" * 64, remote_ip="::1", output_path="/tmp/x"),
    register(piece_length=64 << 20, type=common_pb2.STANDARD, priority=common_pb2.LEVEL1),
    piece_finished(),
    piece_finished(digest="", parent_id=""),  # ignore_empty strings
    peer_request(download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest()),
    peer_request(reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest()),  # optional description unset
    scheduler_pb2.AnnounceHostRequest(host=host()),
    scheduler_pb2.AnnounceHostRequest(host=host(port=1024, download_port=65534)),
    dfdaemon_pb2.SyncPiecesRequest(host_id="h1", task_id="t1", interested_piece_numbers=[0]),
    dfdaemon_pb2.DownloadTaskRequest(download=common_pb2.Download(url="file:///srv/data")),
    manager_pb2.UpdateSeedPeerRequest(
        hostname="seed-1.example", type="super", ip="10.0.0.2", port=4000, download_port=4005, seed_peer_cluster_id=1
    ),
]

# (message, rule key, the error message it must give)
INVALID: list[tuple[Message, str, str]] = [
    (
        scheduler_pb2.AnnouncePeerRequest(task_id="t", peer_id="p", download_peer_started_request={}),
        "string.min_len",
        "invalid AnnouncePeerRequest.host_id: value length must be at least 1 runes",
    ),
    (peer_request(), "oneof.required", "invalid AnnouncePeerRequest.request: value is required"),
    (
        peer_request(register_peer_request=scheduler_pb2.RegisterPeerRequest()),
        "message.required",
        "invalid AnnouncePeerRequest.register_peer_request.download: value is required",
    ),
    (
        register(url="/relative/path"),
        "string.uri",
        "invalid AnnouncePeerRequest.register_peer_request.download.url: value must be an absolute URI",
    ),
    (
        register(url="http://[::1/x"),
        "string.uri",
        "invalid AnnouncePeerRequest.register_peer_request.download.url: value must be an absolute URI",
    ),
    (
        register(piece_length=1024),
        "uint64.gte",
        "invalid AnnouncePeerRequest.register_peer_request.download.piece_length: "
        "value must be inside range [4194304, 67108864]",
    ),
    (
        register(piece_length=(64 << 20) + 1),
        "uint64.lte",
        "invalid AnnouncePeerRequest.register_peer_request.download.piece_length: "
        "value must be inside range [4194304, 67108864]",
    ),
    (
        register(digest="sha256:abc"),
        "string.pattern",
        "invalid AnnouncePeerRequest.register_peer_request.download.digest: value does not match regex pattern",
    ),
    (
        register(remote_ip="not-an-ip"),
        "string.ip",
        "invalid AnnouncePeerRequest.register_peer_request.download.remote_ip: value must be a valid IP address",
    ),
    (
        register(type=42),
        "enum.defined_only",
        "invalid AnnouncePeerRequest.register_peer_request.download.type: value must be one of the defined enum values",
    ),
    (
        piece_finished(cost=None),
        "duration.required",
        "invalid AnnouncePeerRequest.download_piece_finished_request.piece.cost: value is required",
    ),
    (
        piece_finished(created_at=None),
        "timestamp.required",
        "invalid AnnouncePeerRequest.download_piece_finished_request.piece.created_at: value is required",
    ),
    (
        scheduler_pb2.AnnounceHostRequest(host=host(port=80)),
        "int32.gte",
        "invalid AnnounceHostRequest.host.port: value must be inside range [1024, 65535)",
    ),
    (
        scheduler_pb2.AnnounceHostRequest(host=host(download_port=65535)),
        "int32.lt",
        "invalid AnnounceHostRequest.host.download_port: value must be inside range [1024, 65535)",
    ),
    (
        scheduler_pb2.AnnounceHostRequest(host=host(type=4)),
        "uint32.lte",
        "invalid AnnounceHostRequest.host.type: value must be less than or equal to 3",
    ),
    (
        scheduler_pb2.AnnounceHostRequest(host=host(cpu=common_pb2.CPU(percent=-1))),
        "double.gte",
        "invalid AnnounceHostRequest.host.cpu.percent: value must be greater than or equal to 0",
    ),
    (
        scheduler_pb2.AnnounceHostRequest(host=host(memory=common_pb2.Memory(used_percent=100.5))),
        "double.lte",
        "invalid AnnounceHostRequest.host.memory.used_percent: value must be inside range [0, 100]",
    ),
    (
        dfdaemon_pb2.SyncPiecesRequest(host_id="h1", task_id="t1"),
        "repeated.min_items",
        "invalid SyncPiecesRequest.interested_piece_numbers: value must contain at least 1 item(s)",
    ),
    (
        dfdaemon_pb2.DownloadTaskRequest(),
        "message.required",
        "invalid DownloadTaskRequest.download: value is required",
    ),
    (
        manager_pb2.UpdateSeedPeerRequest(
            hostname="seed-1.example", type="weak", ip="10.0.0.2", port=4000, download_port=4005, seed_peer_cluster_id=1
        ),
        "string.in",
        "invalid UpdateSeedPeerRequest.type: value must be in list ['super']",
    ),
    (
        manager_pb2.UpdateSeedPeerRequest(
            hostname="-bad-", type="super", ip="10.0.0.2", port=4000, download_port=4005, seed_peer_cluster_id=1
        ),
        "string.hostname",
        "invalid UpdateSeedPeerRequest.hostname: value must be a valid hostname",
    ),
]

# Rule keys the table uses that the cases above do not show one by one, with where they are covered.
COVERED_ELSEWHERE = {
    "repeated.ignore_empty": "test_repeated_ignore_empty_and_item_paths",
    "int64.gte": "test_numeric_kinds_share_one_implementation",
    "int64.lte": "test_numeric_kinds_share_one_implementation",
    "int32.ignore_empty": "test_ignore_empty_skips_zero_numbers",
    "int64.ignore_empty": "test_ignore_empty_skips_zero_numbers",
    "uint32.gte": "test_numeric_kinds_share_one_implementation",
    "uint32.ignore_empty": "test_ignore_empty_skips_zero_numbers",
    "uint64.ignore_empty": "test_ignore_empty_skips_zero_numbers",
    "string.max_len": "test_string_max_len_and_bytes_len",
    "string.ignore_empty": "test_optional_empty_string_is_skipped_only_by_ignore_empty",
    "bytes.min_len": "test_string_max_len_and_bytes_len",
    "bytes.len": "test_string_max_len_and_bytes_len",
    "bytes.ignore_empty": "test_ignore_empty_skips_zero_numbers",
    "duration.gte": "test_duration_bounds",
    "duration.lte": "test_duration_bounds",
}


@pytest.mark.parametrize("message", VALID, ids=lambda m: type(m).__name__)
def test_valid_messages_pass(message: Message) -> None:
    assert validation.check(message) is None


@pytest.mark.parametrize(
    ("message", "rule", "error"), INVALID, ids=[f"{i}-{rule}" for i, (_, rule, _) in enumerate(INVALID)]
)
def test_invalid_messages_name_the_field(message: Message, rule: str, error: str) -> None:
    found = validation.check(message)
    assert found is not None, f"{rule} not applied"
    assert found.startswith(error), found


def test_optional_empty_string_is_skipped_only_by_ignore_empty() -> None:
    # output_path is `optional string [min_len 1, ignore_empty]`: set to "" it is empty, so it is skipped.
    assert validation.check(register(output_path="")) is None
    # description of a failed download is the same shape.
    failed = peer_request(download_peer_failed_request=scheduler_pb2.DownloadPeerFailedRequest(description=""))
    assert validation.check(failed) is None


def test_ignore_empty_skips_zero_numbers() -> None:
    assert validation.check(register(piece_length=0)) is None  # optional uint64, ignore_empty
    assert validation.check(piece_finished(content=b"")) is None  # optional bytes min_len 1, ignore_empty
    stat = dfdaemon_pb2.DownloadTaskRequest(download=common_pb2.Download(url="http://a/b", concurrent_piece_count=0))
    assert validation.check(stat) is None


def test_repeated_ignore_empty_and_item_paths() -> None:
    # common.v2.Peer.pieces: repeated, min_items 1 with ignore_empty; each item is validated with its index.
    peer = common_pb2.Peer(id="p", state="Running", host=host(), task=common_pb2.Task(id="t", url="http://a/b"))
    peer.cost.FromSeconds(1)
    peer.created_at.GetCurrentTime()
    peer.updated_at.GetCurrentTime()
    peer.task.created_at.GetCurrentTime()
    peer.task.updated_at.GetCurrentTime()
    peer.task.state = "Running"
    assert validation.check(peer) is None
    peer.pieces.append(piece())
    peer.pieces.append(piece(digest="nope"))
    assert validation.check(peer) == (
        "invalid Peer.pieces[1].digest: value does not match regex pattern "
        f"{validation_rules.FIELDS['common.v2.Piece']['digest'][1]['pattern']!r}"
    )


def test_numeric_kinds_share_one_implementation() -> None:
    check = validation._number_test({"gte": 1, "lte": 3})
    assert [check(value) for value in (0, 1, 3, 4)] == [
        "value must be inside range [1, 3]",
        None,
        None,
        "value must be inside range [1, 3]",
    ]
    assert validation._number_test({"gt": 0})(0) == "value must be greater than 0"
    assert validation._number_test({"lt": 10})(10) == "value must be less than 10"


def test_string_max_len_and_bytes_len() -> None:
    assert validation._string_test({"max_len": 2})("abc") == "value length must be at most 2 runes"
    assert validation._string_test({"min_len": 2})("é") == "value length must be at least 2 runes"  # runes, not bytes
    assert validation._bytes_test({"len": 32})(b"x" * 31) == "value length must be 32 bytes"
    assert validation._bytes_test({"len": 32})(b"x" * 32) is None
    assert validation._bytes_test({"min_len": 1})(b"") == "value length must be at least 1 bytes"


def test_duration_bounds() -> None:
    # A persistent cache task's ttl is bounded to [1 min, 7 days].
    request = dfdaemon_pb2.UploadPersistentCacheTaskRequest(path="/tmp/x", persistent_replica_count=1)
    request.ttl.FromSeconds(30)
    assert validation.check(request) == (
        "invalid UploadPersistentCacheTaskRequest.ttl: value must be greater than or equal to 60s"
    )
    request.ttl.FromSeconds(3600)
    assert validation.check(request) is None
    request.ttl.FromSeconds(8 * 86400)
    assert validation.check(request) == (
        "invalid UploadPersistentCacheTaskRequest.ttl: value must be less than or equal to 604800s"
    )


def test_every_rule_key_in_the_table_is_tested() -> None:
    used = {
        f"{kind}.{key}"
        for rules in validation_rules.FIELDS.values()
        for kind, params in rules.values()
        for key in params
    }
    covered = {rule for _, rule, _ in INVALID} | set(COVERED_ELSEWHERE)
    assert used - covered == set()


def test_every_message_in_the_table_compiles_against_the_stubs() -> None:
    pool = descriptor_pool.Default()
    absent = set()
    for name, rules in validation_rules.FIELDS.items():
        try:
            descriptor = pool.FindMessageTypeByName(name)
        except KeyError:
            absent.add(name)
            continue
        absent |= {f"{name}.{field}" for field in rules if field not in descriptor.fields_by_name}
        validation.has_rules(descriptor)
    # Newer than the pinned dragonfly-api stubs; nothing of ours sends or serves them.
    assert absent <= {
        "dfdaemon.v2.ExchangeIBVerbsQueuePairEndpointRequest",
        "dfdaemon.v2.ExchangeIBVerbsQueuePairEndpointResponse",
        "scheduler.v2.NormalPersistentCacheTaskResponse.candidate_parents",
    }, absent


def test_messages_without_rules_have_nothing_to_check() -> None:
    assert not validation.has_rules(scheduler_pb2.DownloadPeerStartedRequest.DESCRIPTOR)
    assert validation.check(scheduler_pb2.DownloadPeerStartedRequest()) is None


def _every_case() -> list[Message]:
    """The cases above, plus an empty message of every type in the table (each breaks its first rule, if any)."""
    pool = descriptor_pool.Default()
    empty = []
    for name in validation_rules.FIELDS:
        try:
            descriptor = pool.FindMessageTypeByName(name)
        except KeyError:
            continue
        empty.append(message_factory.GetMessageClass(descriptor)())
    return [*VALID, *(message for message, _, _ in INVALID), *empty]


@pytest.mark.parametrize("message", _every_case(), ids=lambda m: type(m).__name__)
def test_the_generated_checks_agree_with_the_check_closures(message: Message) -> None:
    expected = validation.reference_check(message)
    assert validation.check(message) == expected
    checker = validation.checker(message.DESCRIPTOR)
    assert (checker(message) if checker is not None else None) == expected


def test_a_piece_report_is_checked_in_a_few_calls() -> None:
    calls = 0

    def count(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    message = piece_finished()
    checker = validation.checker(message.DESCRIPTOR)
    assert checker is not None
    sys.setprofile(count)
    try:
        violation = checker(message)
    finally:
        sys.setprofile(None)
    assert violation is None
    # The request, its DownloadPieceFinishedRequest, its Piece, the digest's pattern: the closures took 22.
    assert calls <= 6, calls
