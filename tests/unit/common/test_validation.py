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
from hypothesis import given, settings
from hypothesis import strategies as st

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
        validation.checker(descriptor)
    # Newer than the pinned dragonfly-api stubs; nothing of ours sends or serves them.
    assert absent <= {
        "dfdaemon.v2.ExchangeIBVerbsQueuePairEndpointRequest",
        "dfdaemon.v2.ExchangeIBVerbsQueuePairEndpointResponse",
        "scheduler.v2.NormalPersistentCacheTaskResponse.candidate_parents",
    }, absent


def test_messages_without_rules_have_nothing_to_check() -> None:
    assert validation.checker(scheduler_pb2.DownloadPeerStartedRequest.DESCRIPTOR) is None
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


# Random messages of every type in the table, for the generated checks against their reference: values near each
# length rule's limits, strings the format rules judge (addresses, hosts, URIs, digests), set and unset fields, each
# oneof member, nested and repeated messages and map values.
_STRINGS = ("", "a", "127.0.0.1", "::1", "10.0.0", "node-1", "-node", "bad host", "https://example.com/f", "f", "é")
_STRINGS += ("sha256:" + "a" * 64, "blake3:" + "0" * 64, PIECE_DIGEST, "crc32:x", "\x00", "*")
_LIMITS = ("len", "min_len", "max_len")


def _random_scalar(field: Any, rng: Any) -> Any:
    kind = field.type
    if kind in (field.TYPE_STRING, field.TYPE_BYTES):
        rule = validation_rules.FIELDS.get(field.containing_type.full_name, {}).get(field.name)
        limits = [int(rule[1][key]) for key in _LIMITS if rule is not None and key in rule[1]]
        if limits and rng.random() < 0.7:
            size = max(rng.choice(limits) + rng.choice((-1, 0, 1)), 0)
            return "x" * size if kind == field.TYPE_STRING else b"x" * size
        text = rng.choice(_STRINGS)
        return text if kind == field.TYPE_STRING else text.encode()
    if kind == field.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == field.TYPE_ENUM:
        return rng.choice([value.number for value in field.enum_type.values] + [99])
    if kind in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return rng.choice((0.0, -1.0, 0.5, 1e9))
    signed = kind in (field.TYPE_INT32, field.TYPE_INT64, field.TYPE_SINT32, field.TYPE_SINT64)
    return rng.choice((0, 1, 100, 1024, 65535, 65536, 2**31 - 1) + ((-1,) if signed else ()))


def _random_fill(message: Message, rng: Any, depth: int = 0) -> Message:
    chosen: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            member = chosen.setdefault(oneof.name, rng.choice([*oneof.fields, None]))
            if member is not field:
                continue
        elif rng.random() < 0.3:
            continue
        value: Any = getattr(message, field.name)
        if field.type == field.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for _ in range(rng.randint(0, 2)):
                key = _random_scalar(field.message_type.fields_by_name["key"], rng)
                if value_field.type != value_field.TYPE_MESSAGE:
                    value[key] = _random_scalar(value_field, rng)
                elif depth < 3:
                    _random_fill(value[key], rng, depth + 1)
        elif field.type == field.TYPE_MESSAGE:
            if depth < 3 and field.is_repeated:
                for _ in range(rng.randint(0, 2)):
                    _random_fill(value.add(), rng, depth + 1)
            elif depth < 3:
                value.SetInParent()
                _random_fill(value, rng, depth + 1)
        elif field.is_repeated:
            value.extend(_random_scalar(field, rng) for _ in range(rng.randint(0, 3)))
        else:
            setattr(message, field.name, _random_scalar(field, rng))
    return message


def _table_classes() -> list[type[Message]]:
    pool = descriptor_pool.Default()
    classes = []
    for name in validation_rules.FIELDS:
        try:
            classes.append(message_factory.GetMessageClass(pool.FindMessageTypeByName(name)))
        except KeyError:
            continue
    return classes


def _perturb(message: Message, rng: Any) -> Message:
    """Change one field somewhere in a copy of ``message`` (clear it, or give it a random value): a case that keeps
    every rule but one, whose violation no earlier one hides."""
    copy = type(message)()
    copy.CopyFrom(message)
    target: Any = copy
    for _ in range(4):
        fields = list(target.DESCRIPTOR.fields)
        if not fields:  # a set sub-message without fields (DownloadPeerStartedRequest): nothing to change in it
            break
        field = rng.choice(fields)
        nested = field.type == field.TYPE_MESSAGE and not field.is_repeated
        if nested and target.HasField(field.name) and rng.random() < 0.6:
            target = getattr(target, field.name)
            continue
        if rng.random() < 0.4:
            target.ClearField(field.name)
        elif nested or field.is_repeated:
            target.ClearField(field.name)
            # One field of the parent, this one, filled at random.
            holder = type(target)()
            _random_fill(holder, rng, 2)
            if field.is_repeated or holder.HasField(field.name):
                getattr(target, field.name).MergeFrom(getattr(holder, field.name))
        else:
            setattr(target, field.name, _random_scalar(field, rng))
        break
    return copy


_CASES = _every_case()


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_table_classes()), st.randoms(use_true_random=False))
def test_the_generated_checks_agree_with_the_check_closures_on_random_messages(
    message_class: type[Message], rng: Any
) -> None:
    message = _random_fill(message_class(), rng)
    assert validation.check(message) == validation.reference_check(message)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_CASES), st.randoms(use_true_random=False))
def test_the_generated_checks_agree_with_the_check_closures_on_cases_changed_in_one_field(
    case: Message, rng: Any
) -> None:
    message = _perturb(case, rng)
    assert validation.check(message) == validation.reference_check(message)
