"""Preheat job arguments: Harbor's exact bodies, Dragonfly's fields and defaults, secrets kept apart."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from dragonfly.manager.jobs.args import DEFAULT_TIMEOUT, ArgsError, parse_args
from dragonfly.manager.jobs.model import JobRecord, MemoryJobStore, NewJob, rfc3339

MANIFEST = "https://harbor.example.com/v2/library/app/manifests/v1"

# What Harbor's Dragonfly provider marshals (src/pkg/p2p/preheat/provider/dragonfly.go): every field present,
# Go zero values for the ones it does not set.
HARBOR_ARGS: dict[str, Any] = {
    "type": "image",
    "url": MANIFEST,
    "tag": "",
    "filtered_query_params": "",
    "headers": {"Authorization": "Bearer harbor-registry-token"},
    "scope": "single_peer",
    "concurrent_count": 0,
    "timeout": 0,
}


def test_harbor_body_is_accepted_with_dragonflys_defaults() -> None:
    args = parse_args(HARBOR_ARGS)
    assert args.type == "image"
    assert args.urls == (MANIFEST,)
    assert args.scope == "single_seed_peer"
    assert args.timeout == DEFAULT_TIMEOUT
    assert args.filtered_query_params == ()
    [request] = args.preheat_requests()
    assert request.DESCRIPTOR.name == "PreheatImageRequest"
    assert request.header["Authorization"] == "Bearer harbor-registry-token"
    assert request.scope == "single_seed_peer"
    assert request.timeout.seconds == 3600


def test_credentials_are_never_in_the_public_args() -> None:
    headers = {
        "authorization": "Bearer x",
        "X-Auth-Token": "tok-1",
        "X-Registry-Token": "tok-2",
        "Cookie": "c=1",
        "X-Api-Key": "key-1",
        "X-Trace": "1",
    }
    args = parse_args({**HARBOR_ARGS, "headers": headers, "username": "robot$ci", "password": "pw"})
    public = args.public()
    assert public["headers"] == {"X-Trace": "1"}
    assert "password" not in public
    assert "username" not in public
    for value in ("Bearer x", "tok-1", "tok-2", "c=1", "key-1", "robot$ci"):
        assert value not in repr(public)
    again = parse_args(public, args.secret())
    assert again.all_headers() == headers
    assert again.password == "pw"
    [request] = again.preheat_requests()
    assert (request.username, request.password) == ("robot$ci", "pw")


def test_public_args_round_trip() -> None:
    doc = {
        "type": "file",
        "url": "http://origin/a",
        "urls": ["http://origin/b"],
        "scope": "all_peers",
        "ips": ["10.0.0.1"],
        "count": 2,
        "percentage": 50,
        "piece_length": 4 * 1024 * 1024,
        "tag": "t",
        "application": "app",
        "filtered_query_params": "X-Amz-Signature&Expires",
        "timeout": 30 * 10**9,
        "concurrent_peer_count": 10,
    }
    args = parse_args(doc)
    assert parse_args(args.public()) == args
    requests = args.preheat_requests()
    assert [r.url for r in requests] == ["http://origin/a", "http://origin/b"]
    assert list(requests[0].filtered_query_params) == ["X-Amz-Signature", "Expires"]
    assert requests[0].count == 2
    assert requests[0].percentage == 50
    assert list(requests[0].ips) == ["10.0.0.1"]
    assert requests[0].timeout.seconds == 30


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"type": "blob", "url": "http://x/a"}, "args.type"),
        ({"type": "file"}, "args.url is required"),
        ({"type": "file", "url": "ftp://x/a"}, "scheme"),
        ({"type": "image", "url": "http://x/not-a-manifest"}, "args.url"),
        ({"type": "file", "url": "http://x/a", "scope": "everyone"}, "args.scope"),
        ({"type": "file", "url": "http://x/a", "count": 500}, "args.count"),
        ({"type": "file", "url": "http://x/a", "percentage": 101}, "args.percentage"),
        ({"type": "file", "url": "http://x/a", "ips": ["nope"]}, "args.ips"),
        ({"type": "file", "url": "http://x/a", "piece_length": 1024}, "args.piece_length"),
        ({"type": "file", "url": "http://x/a", "timeout": "30m"}, "args.timeout"),
        ({"type": "file", "url": "http://x/a", "headers": {"a": 1}}, "args.headers"),
        ({"type": "file", "url": "http://x/a", "bogus": 1}, "unknown fields: bogus"),
        ({"type": "image", "url": MANIFEST, "platform": "linux"}, "args.platform"),
        ({"type": "image", "url": MANIFEST, "urls": ["http://x/b"]}, "args.urls"),
    ],
)
def test_invalid_args_name_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ArgsError, match=message):
        parse_args(doc)


def test_job_json_has_an_integer_id_and_rfc3339_times_with_zone() -> None:
    moment = dt.datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)
    record = JobRecord(id=7, type="preheat", args={}, created_at=moment, updated_at=moment)
    doc = record.to_json()
    assert doc["id"] == 7
    assert isinstance(doc["id"], int)
    assert doc["created_at"] == "2026-12-01T10:00:00.123456Z"
    assert dt.datetime.fromisoformat(doc["created_at"]).tzinfo is not None
    assert rfc3339(dt.datetime(2026, 1, 1)) == "2026-01-01T00:00:00Z"


async def test_memory_store_ends_a_job_once_and_drops_its_secret() -> None:
    store = MemoryJobStore()
    job = await store.create(NewJob(type="preheat", args={"url": "u"}, secret={"password": "pw"}))
    assert "pw" not in repr(job)
    assert await store.secrets(job.id) == {"password": "pw"}
    assert await store.unfinished() == [job.id]
    assert await store.finish(job.id, "SUCCESS", {"state": "SUCCESS"}, {"phase": "succeeded"})
    assert not await store.finish(job.id, "FAILURE", {}, {})
    ended = await store.get(job.id)
    assert ended is not None
    assert ended.state == "SUCCESS"
    assert await store.secrets(job.id) == {}
    assert await store.unfinished() == []
    jobs, total = await store.query(state="SUCCESS")
    assert total == 1
    assert jobs[0].id == job.id


def test_credentials_inside_urls_are_kept_apart_and_restored_for_the_scheduler() -> None:
    signed = "https://user:pw-1@origin/a.bin?X-Amz-Signature=sig-1&part=2"
    args = parse_args({"type": "file", "url": signed, "urls": ["https://origin/b.bin"]})
    public = args.public()
    assert public["url"] == "https://***@origin/a.bin?X-Amz-Signature=***&part=2"
    assert "pw-1" not in repr(public)
    assert "sig-1" not in repr(public)
    assert args.secret()["urls"] == [signed, "https://origin/b.bin"]
    again = parse_args(public, args.secret())
    assert [request.url for request in again.preheat_requests()] == [signed, "https://origin/b.bin"]
    plain = parse_args({"type": "file", "url": "https://origin/c.bin"})
    assert "urls" not in plain.secret()


def test_headers_are_bounded() -> None:
    with pytest.raises(ArgsError, match="at most 64 headers"):
        parse_args({"type": "file", "url": "https://o/f", "headers": {f"X-{i}": "v" for i in range(65)}})
    with pytest.raises(ArgsError, match="values up to 8192"):
        parse_args({"type": "file", "url": "https://o/f", "headers": {"X-Big": "v" * 8193}})
