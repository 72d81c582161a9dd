"""dfget's protobuf-free messages (dragonfly.cli.dfget.messages) against dragonfly_api's generated classes.

The generated classes are the oracle: what dfget writes must parse into the message they would build from the
same fields, and what they serialize must read back as the same values.
"""

from __future__ import annotations

from typing import Any

import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from dragonfly.cli.dfget import messages

text = st.text(max_size=40)
optional_text = st.none() | text
uint64 = st.integers(min_value=0, max_value=2**64 - 1)
hub = st.fixed_dictionaries({"token": optional_text, "revision": text, "base_url": optional_text})
object_storage = st.fixed_dictionaries(
    {},
    optional={
        name: text
        for name in (
            "region",
            "endpoint",
            "access_key_id",
            "access_key_secret",
            "session_token",
            "credential_path",
            "predefined_acl",
            "security_token",
        )
    }
    | {"insecure_skip_verify": st.booleans()},
)
downloads = st.fixed_dictionaries(
    {"url": text},
    optional={
        "digest": optional_text,
        "type": st.sampled_from([0, 1, 2, 3]),
        "tag": optional_text,
        "application": optional_text,
        "priority": st.integers(0, 6),
        "filtered_query_params": st.lists(text, max_size=4),
        "request_header": st.dictionaries(text, text, max_size=4),
        "piece_length": st.none() | uint64,
        "output_path": optional_text,
        "timeout": st.fixed_dictionaries({"seconds": st.integers(0, 2**40), "nanos": st.integers(0, 999_999_999)}),
        "disable_back_to_source": st.booleans(),
        "certificate_chain": st.lists(st.binary(max_size=40), max_size=3),
        "object_storage": object_storage,
        "hdfs": st.fixed_dictionaries({"delegation_token": optional_text}),
        "force_hard_link": st.booleans(),
        "overwrite": st.booleans(),
        "hugging_face": hub,
        "model_scope": hub,
    },
)


@settings(max_examples=300, deadline=None)
@given(downloads)
def test_the_request_parses_as_the_generated_class_builds_it(download: dict[str, Any]) -> None:
    ours = dfdaemon_pb2.DownloadTaskRequest.FromString(messages.download_task_request(download))
    assert ours == dfdaemon_pb2.DownloadTaskRequest(download=common_pb2.Download(**download))


def test_optional_fields_set_to_their_default_stay_set() -> None:
    download = {"url": "http://o/f", "digest": "", "piece_length": 0, "tag": ""}
    parsed = dfdaemon_pb2.DownloadTaskRequest.FromString(messages.download_task_request(download)).download
    assert [name for name in ("digest", "piece_length", "tag", "application") if parsed.HasField(name)] == [
        "digest",
        "piece_length",
        "tag",
    ]


pieces = st.builds(
    common_pb2.Piece,
    number=st.integers(0, 2**32 - 1),
    parent_id=optional_text,
    offset=uint64,
    length=uint64,
    digest=text,
    content=st.none() | st.binary(max_size=20),
    traffic_type=st.none() | st.sampled_from([0, 1, 2]),
)
started = st.builds(
    dfdaemon_pb2.DownloadTaskStartedResponse,
    content_length=uint64,
    range=st.none() | st.builds(common_pb2.Range, start=uint64, length=uint64),
    response_header=st.dictionaries(text, text, max_size=3),
    pieces=st.lists(pieces, max_size=2),
    is_finished=st.booleans(),
)
responses = st.builds(
    dfdaemon_pb2.DownloadTaskResponse,
    host_id=text,
    task_id=text,
    peer_id=text,
    download_task_started_response=st.none() | started,
) | st.builds(
    dfdaemon_pb2.DownloadTaskResponse,
    task_id=text,
    download_piece_finished_response=st.builds(dfdaemon_pb2.DownloadPieceFinishedResponse, piece=pieces),
)


@settings(max_examples=300, deadline=None)
@given(responses)
def test_responses_read_as_the_generated_class_reads_them(response: Any) -> None:
    ours = messages.DownloadTaskResponse(response.SerializeToString())
    assert (ours.task_id, ours.peer_id) == (response.task_id, response.peer_id)
    if response.HasField("download_task_started_response"):
        expected = response.download_task_started_response
        assert ours.piece is None
        assert ours.started is not None
        assert (ours.started.content_length, ours.started.is_finished) == (
            expected.content_length,
            expected.is_finished,
        )
        assert ours.started.range == (
            (expected.range.start, expected.range.length) if expected.HasField("range") else None
        )
    elif response.HasField("download_piece_finished_response"):
        expected = response.download_piece_finished_response.piece
        assert ours.started is None
        assert ours.piece is not None
        got = ours.piece
        assert (got.number, got.parent_id, got.offset, got.length, got.traffic_type) == (
            expected.number,
            expected.parent_id,
            expected.offset,
            expected.length,
            expected.traffic_type,
        )
    else:
        assert ours.started is None
        assert ours.piece is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x12\x05abc", "past the end"),
        (b"\x10", "truncated varint"),
        (b"\x10" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x12\x02\xff\xfe", "not UTF-8"),
        (b"\x0b", "wire type 3"),
        (b"\x00\x00", "field number 0"),
        (b"\x29\x00\x00", "fixed-size field past the end"),
        # A piece (field 5) whose nested piece (field 1) claims more bytes than it holds.
        (b"\x2a\x02\x0a\x05", "past the end"),
    ],
)
def test_malformed_responses_raise(data: bytes, message: str) -> None:
    with pytest.raises(messages.MessageError, match=message):
        messages.DownloadTaskResponse(data)


list_requests = st.fixed_dictionaries(
    {"task_id": text, "url": text},
    optional={
        "request_header": st.dictionaries(text, text, max_size=4),
        "timeout": st.fixed_dictionaries({"seconds": st.integers(0, 2**40), "nanos": st.integers(0, 999_999_999)}),
        "certificate_chain": st.lists(st.binary(max_size=40), max_size=3),
        "object_storage": object_storage,
        "hdfs": st.fixed_dictionaries({"delegation_token": optional_text}),
        "hugging_face": hub,
        "model_scope": hub,
    },
)


@settings(max_examples=200, deadline=None)
@given(list_requests)
def test_the_listing_request_parses_as_the_generated_class_builds_it(request: dict[str, Any]) -> None:
    ours = dfdaemon_pb2.ListTaskEntriesRequest.FromString(messages.encode(messages.LIST_TASK_ENTRIES_REQUEST, request))
    assert ours == dfdaemon_pb2.ListTaskEntriesRequest(**request)


listings = st.builds(
    dfdaemon_pb2.ListTaskEntriesResponse,
    content_length=uint64,
    response_header=st.dictionaries(text, text, max_size=3),
    status_code=st.none() | st.integers(100, 599),
    entries=st.lists(st.builds(dfdaemon_pb2.Entry, url=text, content_length=uint64, is_dir=st.booleans()), max_size=5),
)


@settings(max_examples=200, deadline=None)
@given(listings)
def test_listings_read_as_the_generated_class_reads_them(listing: Any) -> None:
    ours = messages.list_task_entries(listing.SerializeToString())
    assert [(e.url, e.content_length, e.is_dir) for e in ours] == [
        (e.url, e.content_length, e.is_dir) for e in listing.entries
    ]


@pytest.mark.parametrize(
    ("download", "field"),
    [
        # What Python makes of argv bytes that are not UTF-8 (surrogate escapes): protobuf strings cannot hold them.
        ({"url": "http://o/\udcff"}, "url"),
        ({"url": "http://o/f", "request_header": {"X-A": "\udcff"}}, "request_header"),
        ({"url": "http://o/f", "filtered_query_params": ["\udcff"]}, "filtered_query_params"),
        ({"url": "http://o/f", "output_path": "/tmp/\udcff"}, "output_path"),
    ],
)
def test_a_string_that_is_not_utf8_is_a_clear_error(download: dict[str, Any], field: str) -> None:
    with pytest.raises(messages.MessageError, match=f"{field} is not valid UTF-8"):
        messages.download_task_request(download)


# dfcache's messages (persistent cache tasks).
durations = st.fixed_dictionaries({"seconds": st.integers(0, 2**40), "nanos": st.integers(0, 999_999_999)})
uploads = st.fixed_dictionaries(
    {"path": text, "persistent_replica_count": uint64},
    optional={
        "content_for_calculating_task_id": optional_text,
        "tag": optional_text,
        "application": optional_text,
        "piece_length": st.none() | uint64,
        "ttl": durations,
        "timeout": durations,
    },
)
persistent_downloads = st.fixed_dictionaries(
    {"task_id": text},
    optional={
        "persistent": st.booleans(),
        "tag": optional_text,
        "application": optional_text,
        "output_path": optional_text,
        "timeout": durations,
        "need_piece_content": st.booleans(),
        "force_hard_link": st.booleans(),
        "overwrite": st.booleans(),
    },
)


@settings(max_examples=200, deadline=None)
@given(uploads, persistent_downloads)
def test_dfcaches_requests_parse_as_the_generated_classes_build_them(
    upload: dict[str, Any], download: dict[str, Any]
) -> None:
    encoded = messages.encode(messages.UPLOAD_PERSISTENT_CACHE_TASK_REQUEST, upload)
    assert dfdaemon_pb2.UploadPersistentCacheTaskRequest.FromString(encoded) == (
        dfdaemon_pb2.UploadPersistentCacheTaskRequest(**upload)
    )
    encoded = messages.encode(messages.DOWNLOAD_PERSISTENT_CACHE_TASK_REQUEST, download)
    assert dfdaemon_pb2.DownloadPersistentCacheTaskRequest.FromString(encoded) == (
        dfdaemon_pb2.DownloadPersistentCacheTaskRequest(**download)
    )
    for request in (dfdaemon_pb2.StatPersistentCacheTaskRequest, dfdaemon_pb2.DeleteTaskRequest):
        assert request.FromString(messages.encode(messages.TASK_ID_REQUEST, {"task_id": upload["path"]})) == request(
            task_id=upload["path"]
        )


def test_an_empty_tag_stays_set_as_dfcache_sent_it() -> None:
    encoded = messages.encode(
        messages.UPLOAD_PERSISTENT_CACHE_TASK_REQUEST, {"path": "/f", "tag": "", "application": ""}
    )
    parsed = dfdaemon_pb2.UploadPersistentCacheTaskRequest.FromString(encoded)
    assert parsed.HasField("tag")
    assert parsed.HasField("application")
    assert not parsed.HasField("piece_length")


int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
tasks = st.builds(
    common_pb2.PersistentCacheTask,
    id=text,
    persistent_replica_count=uint64,
    current_persistent_replica_count=uint64,
    current_replica_count=uint64,
    tag=optional_text,
    application=optional_text,
    piece_length=uint64,
    content_length=uint64,
    piece_count=st.integers(0, 2**32 - 1),
    state=text,
    ttl=st.builds(duration_pb2.Duration, seconds=int64, nanos=st.integers(-999_999_999, 999_999_999)),
    created_at=st.builds(timestamp_pb2.Timestamp, seconds=int64, nanos=st.integers(0, 999_999_999)),
)


@settings(max_examples=200, deadline=None)
@given(tasks)
def test_persistent_cache_tasks_read_as_the_generated_class_reads_them(task: Any) -> None:
    ours = messages.PersistentCacheTask(task.SerializeToString())
    assert (
        ours.id,
        ours.persistent_replica_count,
        ours.current_persistent_replica_count,
        ours.current_replica_count,
        ours.tag,
        ours.application,
        ours.piece_length,
        ours.content_length,
        ours.piece_count,
        ours.state,
        ours.ttl,
        ours.created_at,
    ) == (
        task.id,
        task.persistent_replica_count,
        task.current_persistent_replica_count,
        task.current_replica_count,
        task.tag,
        task.application,
        task.piece_length,
        task.content_length,
        task.piece_count,
        task.state,
        task.ttl.seconds + task.ttl.nanos * 1e-9,
        task.created_at.seconds,
    )


persistent_responses = st.builds(
    dfdaemon_pb2.DownloadPersistentCacheTaskResponse,
    host_id=text,
    task_id=text,
    peer_id=text,
    download_persistent_cache_task_started_response=st.none()
    | st.builds(dfdaemon_pb2.DownloadPersistentCacheTaskStartedResponse, content_length=uint64),
) | st.builds(
    dfdaemon_pb2.DownloadPersistentCacheTaskResponse,
    task_id=text,
    download_piece_finished_response=st.builds(dfdaemon_pb2.DownloadPieceFinishedResponse, piece=pieces),
)


@settings(max_examples=200, deadline=None)
@given(persistent_responses)
def test_persistent_cache_downloads_read_as_the_generated_class_reads_them(response: Any) -> None:
    ours = messages.PersistentCacheDownload(response.SerializeToString())
    if response.HasField("download_persistent_cache_task_started_response"):
        assert ours.content_length == response.download_persistent_cache_task_started_response.content_length
        assert ours.content is None
    else:
        assert ours.content_length is None
        piece = response.download_piece_finished_response.piece
        assert ours.offset == piece.offset
        if response.HasField("download_piece_finished_response") and piece.HasField("content"):
            assert ours.content is not None
            assert bytes(ours.content) == piece.content
        else:
            assert ours.content is None
