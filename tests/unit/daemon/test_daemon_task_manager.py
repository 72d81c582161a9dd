"""The task manager without a scheduler: ids and piece math as Dragonfly, back-to-source, local hits, outputs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from dragonfly_api import common_pb2, dfdaemon_pb2
from loop_guard import no_blocking_calls
from standalone import standalone_task_manager

from dragonfly.common import ids
from dragonfly.common.byte_range import ByteRange
from dragonfly.common.errors import DigestMismatch, InvalidDigest
from dragonfly.common.piece import calculate_piece_length
from dragonfly.daemon.api.download_server import DfdaemonDownloadService
from dragonfly.daemon.download.download_request import task_id_for, validate_download
from dragonfly.daemon.download.task_download import PieceDone, TaskStarted
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.errors import BackendError, DownloadFailed, OutputError
from dragonfly.daemon.output import write_output
from dragonfly.daemon.storage import Storage

FILES = {"/big": os.urandom(9 * 1024 * 1024 + 7), "/small": os.urandom(1000), "/empty": b""}


def test_task_id_follows_dragonfly() -> None:
    assert (
        task_id_for(common_pb2.Download(url="https://example.com"))
        == "457b4328cde278e422c9e243f7bfd1e97f511fec43a80f535cf6b0ef6b086776"
    )
    assert (
        task_id_for(common_pb2.Download(url="https://example.com", tag="foo", application="bar"))
        == "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca"
    )
    assert (
        task_id_for(common_pb2.Download(url="https://example.com", piece_length=1024))
        == "9f7c9aafbc6f30f8f41a96ca77eeae80c5b60964b3034b0ee43ccf7b2f9e52b8"
    )
    signed = "https://example.com/f?X-Amz-Signature=abc&keep=1"
    assert task_id_for(common_pb2.Download(url=signed)) == task_id_for(
        common_pb2.Download(url="https://example.com/f?keep=1")
    )
    blob = "http://r/v2/lib/alpine/blobs/sha256:" + "ab" * 32
    assert task_id_for(common_pb2.Download(url=blob, enable_task_id_based_blob_digest=True)) == "ab" * 32


@pytest.mark.parametrize(
    ("download", "error", "match"),
    [
        (common_pb2.Download(url="ftp://h/f"), ValueError, "the supported schemes are http://, https://, file://"),
        (common_pb2.Download(url="http://h/f", piece_length=1024), ValueError, "piece_length must be between"),
        (common_pb2.Download(url="http://h/f", digest="md5:abc"), InvalidDigest, "unknown algorithm"),
        (common_pb2.Download(url="http://h/f", output_path="relative"), OutputError, "must be absolute"),
        (common_pb2.Download(url="http://h/f", output_path="/nonexistent-dir/f"), OutputError, "does not exist"),
    ],
)
def test_requests_are_validated(download: common_pb2.Download, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        validate_download(download)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        validate_download(common_pb2.Download(url="http://h/f", output_path=str(out)))
    validate_download(common_pb2.Download(url="http://h/f", output_path=str(out), overwrite=True))


def _write(content: Path, out: str, *, overwrite: bool = False, link: bool = False) -> None:
    fd = os.open(content, os.O_RDONLY)
    try:
        write_output(fd, str(content), out, overwrite=overwrite, link=link)
    finally:
        os.close(fd)


def test_write_output_copies_by_default_and_never_leaves_a_temp_file(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.write_bytes(b"payload")
    out = tmp_path / "out"
    _write(content, str(out))
    assert out.read_bytes() == b"payload"
    # A copy: editing the output leaves the cache alone (docs/output-and-cache.md).
    assert not os.path.samestat(out.stat(), content.stat())
    out.write_bytes(b"edited!")
    assert content.read_bytes() == b"payload"
    with pytest.raises(OutputError, match="already exists"):
        _write(content, str(out))
    _write(content, str(out), overwrite=True)
    assert out.read_bytes() == b"payload"
    assert sorted(os.listdir(tmp_path)) == ["content", "out"]


def test_write_output_hard_links_only_when_forced(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.write_bytes(b"payload")
    out = tmp_path / "out"
    _write(content, str(out), link=True)
    assert os.path.samestat(out.stat(), content.stat())


def test_write_output_links_if_possible_and_copies_otherwise(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.write_bytes(b"payload")
    fd = os.open(content, os.O_RDONLY)
    try:
        write_output(fd, str(content), str(tmp_path / "linked"), overwrite=False, link=False, link_if_possible=True)
        assert os.path.samestat((tmp_path / "linked").stat(), content.stat())
        # A range is never a link; nor is an output on another file system (/dev/shm is a tmpfs of its own).
        write_output(
            fd, str(content), str(tmp_path / "ranged"), overwrite=False, link=False, link_if_possible=True,
            byte_range=ByteRange(1, 3),
        )  # fmt: skip
        assert (tmp_path / "ranged").read_bytes() == b"ayl"
        assert not os.path.samestat((tmp_path / "ranged").stat(), content.stat())
        if os.stat("/dev/shm").st_dev != content.stat().st_dev:
            other = Path(f"/dev/shm/dragonfly-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                write_output(fd, str(content), str(other), overwrite=False, link=False, link_if_possible=True)
                assert other.read_bytes() == b"payload"
                assert other.stat().st_nlink == 1
            finally:
                other.unlink(missing_ok=True)
        # The daemon cannot link for another user (no content path): a copy, where force_hard_link fails.
        write_output(fd, None, str(tmp_path / "theirs"), overwrite=False, link=False, link_if_possible=True)
        assert (tmp_path / "theirs").read_bytes() == b"payload"
        with pytest.raises(OutputError, match="only made for the daemon's own user"):
            write_output(fd, None, str(tmp_path / "forced"), overwrite=False, link=True)
    finally:
        os.close(fd)
    assert content.stat().st_nlink == 2  # the content and "linked"


async def test_outputs_are_hard_links_to_the_sealed_cache_by_default(harness: Harness) -> None:
    out = harness.tmp_path / "out"
    await harness.download("/big", output_path=str(out))
    assert out.read_bytes() == FILES["/big"]
    task = harness.storage.get_task(task_id_for(common_pb2.Download(url=harness.base + "/big")))
    assert task is not None
    assert os.path.samestat(out.stat(), os.stat(harness.storage.content_path(task.id)))
    # Sealed at completion (docs/output-and-cache.md): read-only, and what the local-hit check compares with.
    assert stat.S_IMODE(out.stat().st_mode) == 0o444
    assert (out.stat().st_mtime_ns, out.stat().st_ino) == (task.content_mtime_ns, task.content_inode)
    # A local hit links too; the cache stays intact as long as nobody edits in place.
    again = harness.tmp_path / "again"
    events = await harness.download("/big", output_path=str(again))
    assert {e.traffic_type for e in events if isinstance(e, PieceDone)} == {common_pb2.LOCAL_PEER}
    assert os.path.samestat(again.stat(), out.stat())


async def test_an_edit_through_a_hard_linked_output_is_downloaded_again(harness: Harness) -> None:
    out = harness.tmp_path / "out"
    await harness.download("/big", output_path=str(out))
    # Root (the tests' user) writes through the read-only mode; same size, so only the seal's stamp shows it.
    fd = os.open(out, os.O_WRONLY)
    try:
        os.pwrite(fd, b"edited", 0)
    finally:
        os.close(fd)
    hits = len(harness.origin_hits)
    again = harness.tmp_path / "again"
    events = await harness.download("/big", output_path=str(again))
    assert again.read_bytes() == FILES["/big"]
    assert common_pb2.LOCAL_PEER not in {e.traffic_type for e in events if isinstance(e, PieceDone)}
    assert len(harness.origin_hits) > hits
    # The edited file is the user's own now; the cache holds a new, sealed copy.
    assert out.read_bytes()[:6] == b"edited"
    assert not os.path.samestat(again.stat(), out.stat())


async def test_a_caller_that_asks_for_a_copy_gets_one(harness: Harness) -> None:
    out = harness.tmp_path / "out"
    download = common_pb2.Download(url=harness.base + "/big", output_path=str(out))
    events = [event async for event in harness.manager.download(download, copy_output=True)]
    assert events
    assert out.read_bytes() == FILES["/big"]
    assert out.stat().st_nlink == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


async def test_hard_link_output_false_copies(tmp_path: Path) -> None:
    async with make_harness(tmp_path, download={"hardLinkOutput": False}) as harness:
        out = harness.tmp_path / "out"
        await harness.download("/big", output_path=str(out))
        task = harness.storage.get_task(task_id_for(common_pb2.Download(url=harness.base + "/big")))
        assert task is not None
        assert out.read_bytes() == FILES["/big"]
        assert out.stat().st_nlink == 1
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        assert os.stat(harness.storage.content_path(task.id)).st_nlink == 1


@pytest.mark.parametrize("overwrite", [False, True])
def test_special_files_are_never_replaced(tmp_path: Path, overwrite: bool) -> None:
    content = tmp_path / "content"
    content.write_bytes(b"payload")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        validate_download(common_pb2.Download(url="http://h/f", output_path=str(fifo), overwrite=overwrite))
    with pytest.raises(OutputError, match="not a regular file"):
        _write(content, str(fifo), overwrite=overwrite)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(OutputError, match="not a regular file"):
        _write(content, "/dev/null", overwrite=overwrite)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


class Harness:
    def __init__(
        self, tmp_path: Path, base: str, manager: TaskManager, storage: Storage, origin_hits: list[str]
    ) -> None:
        self.tmp_path = tmp_path
        self.base = base
        self.manager = manager
        self.storage = storage
        self.origin_hits = origin_hits

    async def download(self, path: str, **fields: object) -> list[TaskStarted | PieceDone]:
        download = common_pb2.Download(url=self.base + path, **fields)  # type: ignore[arg-type]
        # The whole download, as a daemon serves it, must never block the event loop (issue 8 item 21).
        with no_blocking_calls():
            return [event async for event in self.manager.download(download)]


@contextlib.asynccontextmanager
async def make_harness(tmp_path: Path, **overrides: Any) -> AsyncIterator[Harness]:
    hits: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        hits.append(request.headers.get("Range", ""))
        if request.path == "/breaks" and not request.headers.get("Range", "").startswith("bytes=0-"):
            raise web.HTTPInternalServerError()  # the stat (with piece 0, or not) succeeds, every other piece fails
        body = FILES.get(request.path.replace("/breaks", "/big"))
        if body is None:
            raise web.HTTPNotFound()
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        if match and not body:
            return web.Response(status=416)
        if match:
            start, end = int(match.group(1)), min(int(match.group(2)), len(body) - 1)
            headers = {"Content-Range": f"bytes {start}-{end}/{len(body)}"}
            return web.Response(status=206, body=body[start : end + 1], headers=headers)
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"

    try:
        async with standalone_task_manager(tmp_path, overrides, workers=8) as daemon:
            yield Harness(tmp_path, base, daemon.manager, daemon.storage, hits)
    finally:
        await runner.cleanup()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with make_harness(tmp_path) as made:
        yield made


async def test_back_to_source_then_local_hit(harness: Harness) -> None:
    out = harness.tmp_path / "out"
    events = await harness.download("/big", output_path=str(out))
    started = events[0]
    assert isinstance(started, TaskStarted)
    assert started.content_length == len(FILES["/big"])
    assert started.piece_length == calculate_piece_length(len(FILES["/big"])) == 4 * 1024 * 1024
    assert started.peer_id.startswith("127.0.0.1-unit-")
    pieces = [e for e in events[1:] if isinstance(e, PieceDone)]
    assert sorted(p.piece.number for p in pieces) == [0, 1, 2]
    assert {p.traffic_type for p in pieces} == {common_pb2.BACK_TO_SOURCE}
    assert [p.piece.length for p in sorted(pieces, key=lambda p: p.piece.number)] == [4194304, 4194304, 1048583]
    assert out.read_bytes() == FILES["/big"]
    # One Range GET per piece: with no scheduler to ask, piece 0's is the stat (its body is piece 0), so it comes
    # first. Pieces 1 and 2 may be in flight together (a quick piece 0 opens the source window to its limit) and
    # their requests then reach the origin in either order.
    assert harness.origin_hits[0] == "bytes=0-4194303"
    assert sorted(harness.origin_hits[1:]) == ["bytes=4194304-8388607", "bytes=8388608-9437190"]

    harness.origin_hits.clear()
    again = await harness.download("/big", output_path=str(harness.tmp_path / "again"))
    assert {e.traffic_type for e in again if isinstance(e, PieceDone)} == {common_pb2.LOCAL_PEER}
    assert harness.origin_hits == []
    assert (harness.tmp_path / "again").read_bytes() == FILES["/big"]


async def test_small_and_empty_objects(harness: Harness) -> None:
    events = await harness.download("/small", output_path=str(harness.tmp_path / "small"))
    assert [e.piece.length for e in events if isinstance(e, PieceDone)] == [1000]
    assert (harness.tmp_path / "small").read_bytes() == FILES["/small"]
    events = await harness.download("/empty", output_path=str(harness.tmp_path / "empty"))
    assert len(events) == 1
    assert (harness.tmp_path / "empty").read_bytes() == b""


async def test_digest_is_checked_and_a_mismatch_leaves_no_file(harness: Harness) -> None:
    good = "sha256:" + hashlib.sha256(FILES["/big"]).hexdigest()
    await harness.download("/big", output_path=str(harness.tmp_path / "good"), digest=good)
    assert (harness.tmp_path / "good").read_bytes() == FILES["/big"]
    with pytest.raises(DigestMismatch, match="expected sha256:0000") as info:
        await harness.download("/big", output_path=str(harness.tmp_path / "bad"), digest="sha256:" + "0" * 64)
    # Issue 8 item 16: the message names what the user asked for, not the daemon's content file.
    assert f"{harness.base}/big (output {harness.tmp_path / 'bad'})" in str(info.value)
    assert str(harness.storage.dir) not in str(info.value)
    assert not (harness.tmp_path / "bad").exists()
    assert [n for n in os.listdir(harness.tmp_path) if "tmp" in n] == []


async def test_origin_error_reaches_the_requester_without_a_file(harness: Harness) -> None:
    out = harness.tmp_path / "missing"
    with pytest.raises(BackendError, match="HTTP 404") as info:
        await harness.download("/missing", output_path=str(out))
    assert info.value.status_code == 404
    assert not out.exists()


async def test_failed_tasks_are_not_listed_as_local_tasks(harness: Harness) -> None:
    """Issue 8 item 13: a task whose download failed was listed like one that is here."""
    await harness.download("/big", output_path=str(harness.tmp_path / "big"))
    with pytest.raises(BackendError, match="500"):
        await harness.download("/breaks", output_path=str(harness.tmp_path / "breaks"))
    service = DfdaemonDownloadService(storage=harness.storage, tasks=harness.manager, scheduler=None, callers=None)
    listed = await service.ListLocalTasks(dfdaemon_pb2.ListLocalTasksRequest(), None)  # type: ignore[arg-type]
    failed = task_id_for(common_pb2.Download(url=harness.base + "/breaks"))
    assert harness.storage.get_task(failed) is not None  # kept for a retry, but not as a local task
    assert [t.task_id for t in listed.tasks] == [task_id_for(common_pb2.Download(url=harness.base + "/big"))]
    assert listed.tasks[0].HasField("finished_at")


async def test_back_to_source_disabled_without_a_scheduler_fails(harness: Harness) -> None:
    out = harness.tmp_path / "never"
    with pytest.raises(DownloadFailed, match="no scheduler is configured and back-to-source is disabled"):
        await harness.download("/big", output_path=str(out), disable_back_to_source=True)
    assert not out.exists()


async def test_download_bandwidth_limit_is_never_exceeded(tmp_path: Path) -> None:
    # 9 MiB at 10 MiB/s: the bucket starts with one minimum piece (4 MiB), so ~0.5 s for the remaining 5 MiB.
    async with make_harness(tmp_path, download={"bandwidthLimit": "10MiB/s"}) as limited:
        began = time.monotonic()
        await limited.download("/big")
        elapsed = time.monotonic() - began
    expected = (len(FILES["/big"]) - 4 * 1024 * 1024) / (10 * 1024 * 1024)
    # Only the floor: a loaded machine can only make it slower (the bucket's accuracy is a bench figure).
    assert elapsed >= expected * 0.95


async def test_concurrent_requests_share_one_download(harness: Harness) -> None:
    first, second = await asyncio.gather(
        harness.download("/big", output_path=str(harness.tmp_path / "a")),
        harness.download("/big", output_path=str(harness.tmp_path / "b")),
    )
    assert (harness.tmp_path / "a").read_bytes() == FILES["/big"]
    assert (harness.tmp_path / "b").read_bytes() == FILES["/big"]
    for events in (first, second):
        assert sorted(e.piece.number for e in events if isinstance(e, PieceDone)) == [0, 1, 2]
    assert len(harness.origin_hits) == 3  # three pieces (the stat asked for piece 0), for both requests together


def test_hub_revisions_are_part_of_the_task_id() -> None:
    url = "hf://acme/llm/model.bin"
    with_revision = common_pb2.Download(url=url, hugging_face=common_pb2.HuggingFace(revision="v1", token="t"))
    assert task_id_for(with_revision) == ids.task_id(url, revision="v1")
    # The token is not part of it; another revision is another task.
    other_token = common_pb2.Download(url=url, hugging_face=common_pb2.HuggingFace(revision="v1", token="u"))
    assert task_id_for(other_token) == task_id_for(with_revision)
    assert task_id_for(common_pb2.Download(url=url)) == ids.task_id(url)
    ms = common_pb2.Download(url="modelscope://q/m/w.bin", model_scope=common_pb2.ModelScope(revision="master"))
    assert task_id_for(ms) == ids.task_id("modelscope://q/m/w.bin", revision="master")
    # A revision only counts for its own hub's URLs.
    http = common_pb2.Download(url="https://e.com/f", hugging_face=common_pb2.HuggingFace(revision="v1"))
    assert task_id_for(http) == ids.task_id("https://e.com/f")


async def test_shutdown_waits_for_work_a_runner_hands_to_the_background_as_it_ends(tmp_path: Path) -> None:
    # A download that ends hands its AnnouncePeer stream's close (the peer's last reports to the scheduler) to the
    # background; shutdown waited only for the background work that existed when it began, so such a close was
    # left running when the daemon went on to close its scheduler channels.
    ended = asyncio.Event()
    closed = asyncio.Event()

    async with standalone_task_manager(tmp_path) as daemon:
        manager = daemon.manager

        async def stream_close() -> None:
            await asyncio.sleep(0.2)  # the scheduler's end of the stream: a round trip
            closed.set()

        async def runner() -> None:
            await ended.wait()
            manager._spawn(stream_close())

        manager._spawn(runner())
        stopping = asyncio.ensure_future(manager.shutdown(10.0))
        await asyncio.sleep(0)  # shutdown has taken the runners to wait for
        ended.set()
        await stopping
        assert closed.is_set()
