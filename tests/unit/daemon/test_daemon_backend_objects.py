"""Object storage backend helpers: URL parts, errors without credentials, the chunk writer."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dragonfly_api import common_pb2
from obstore import exceptions as obx

from dragonfly.common import native
from dragonfly.daemon.backends.base import PieceWriter, SourceOptions
from dragonfly.daemon.backends.object_storage import ObjectStorageBackend, _error, split_url
from dragonfly.daemon.backends.piece_chunks import PieceDigest
from dragonfly.daemon.errors import BackendError


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def test_split_url() -> None:
    assert split_url("s3://Bucket/dir/a%20b.bin") == ("s3", "Bucket", "dir/a b.bin")
    assert split_url("gs://b/") == ("gs", "b", "")
    with pytest.raises(BackendError, match="without a bucket"):
        split_url("s3:///key")


def test_errors_name_the_cause_and_never_the_credentials() -> None:
    storage = common_pb2.ObjectStorage(access_key_id="AKIDEXAMPLE", access_key_secret="s3cr3t-value")
    exc = obx.PermissionDeniedError(
        "Error performing GET http://h/b/k - 403 Forbidden: <Code>SignatureDoesNotMatch</Code>"
        "<Message>bad signature for s3cr3t-value</Message>"
    )
    error = _error("s3://b/k", exc, storage, "stat")
    assert error.status_code == 403
    assert "access denied (HTTP 403)" in error.message
    assert "SignatureDoesNotMatch" in error.message
    assert "s3cr3t-value" not in error.message
    generic = _error("s3://b/k", RuntimeError("boom with s3cr3t-value in it\nsecond line"), storage, "stat")
    assert generic.message == "stat s3://b/k failed: boom with *** in it"


def test_source_options_never_print_credentials() -> None:
    download = common_pb2.Download(
        url="s3://b/k", object_storage=common_pb2.ObjectStorage(access_key_secret="s3cr3t-value")
    )
    options = SourceOptions.of(download)
    assert options.object_storage is not None
    assert "s3cr3t" not in repr(options)
    assert "object_storage" in repr(options)


async def test_other_stores_need_an_endpoint(executor: ThreadPoolExecutor) -> None:
    backend = ObjectStorageBackend(executor=executor, max_retries=0, piece_timeout=5)
    with pytest.raises(BackendError, match="needs the store's endpoint"):
        await backend.stat("oss://bucket/key", {}, SourceOptions())


async def test_piece_writer_gathers_chunks(executor: ThreadPoolExecutor, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    fd = os.open(tmp_path / "content", os.O_RDWR | os.O_CREAT)
    try:
        seen: list[int] = []
        digest = PieceDigest("blake3")
        digest.update(b"left over from an earlier attempt")
        writer = PieceWriter(
            "s3://b/k",
            executor,
            fd=fd,
            offset=500,
            length=len(data),
            buffer=bytearray(30_000),
            progress=seen.append,
            digest=digest,
        )
        for start in range(0, len(data), 7_000):
            await writer.add(data[start : start + 7_000])
        assert await writer.finish() == zlib.crc32(data)
        assert digest.result(len(data)) == f"blake3:{native.Hasher('blake3', data).hexdigest()}"
        assert sum(seen) == len(data)
        short = PieceWriter("s3://b/k", executor, fd=fd, offset=0, length=10, buffer=bytearray(4096))
        await short.add(b"12345")
        with pytest.raises(BackendError, match="content shorter than announced"):
            await short.finish()
        with pytest.raises(BackendError, match="more than the 10 bytes"):
            await short.add(b"123456")
    finally:
        os.close(fd)
    assert (tmp_path / "content").read_bytes()[500:] == data
