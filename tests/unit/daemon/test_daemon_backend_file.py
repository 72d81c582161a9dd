"""The file:// backend: allowed directories, symlink escapes, special files, piece copies with their CRC, listing."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dragonfly.common import native
from dragonfly.daemon.backends import NO_OPTIONS, Backends, NotReadableHere, UnsupportedScheme
from dragonfly.daemon.backends.file import FileBackend, path_of, url_of
from dragonfly.daemon.backends.piece_chunks import PieceDigest
from dragonfly.daemon.errors import BackendError


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    directory = tmp_path / "allowed"
    directory.mkdir()
    return directory


@pytest.fixture
def backend(allowed: Path, executor: ThreadPoolExecutor) -> FileBackend:
    return FileBackend(allowed_dirs=[str(allowed)], executor=executor)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///data/a.bin", "/data/a.bin"),
        ("file://localhost/data/a.bin", "/data/a.bin"),
        ("file:///data/a%20b.bin", "/data/a b.bin"),
    ],
)
def test_path_of(url: str, path: str) -> None:
    assert path_of(url) == path
    assert path_of(url_of(path)) == path


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("file://otherhost/data", "only local paths"),
        ("file:///data?x=1", "query or fragment"),
        ("file:relative", "no absolute path"),
        ("http://h/data", "not a file:// URL"),
    ],
)
def test_bad_file_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        path_of(url)


async def test_stat_and_pieces(backend: FileBackend, allowed: Path, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    (allowed / "f.bin").write_bytes(data)
    url = url_of(str(allowed / "f.bin"))
    stat = await backend.stat(url, {}, NO_OPTIONS)
    assert stat.content_length == len(data)
    assert stat.header["Content-Length"] == str(len(data))
    out = tmp_path / "content"
    out.write_bytes(b"\0" * len(data))
    fd = os.open(out, os.O_RDWR)
    try:
        seen: list[int] = []
        # A buffer smaller than the piece: the copy goes in several chunks and the CRC spans them.
        digest = PieceDigest("blake3")
        crc = await backend.download_piece(
            url,
            {},
            NO_OPTIONS,
            fd=fd,
            offset=1000,
            length=200_000,
            buffer=bytearray(65536),
            progress=seen.append,
            digest=digest,
        )
        assert crc == zlib.crc32(data[1000:201_000])
        assert digest.result(200_000) == f"blake3:{native.Hasher('blake3', data[1000:201_000]).hexdigest()}"
        assert sum(seen) == 200_000
        crc = await backend.download_piece(
            url, {}, NO_OPTIONS, fd=fd, offset=201_000, length=99_000, buffer=bytearray(1 << 20)
        )
        assert crc == zlib.crc32(data[201_000:])
    finally:
        os.close(fd)
    assert out.read_bytes()[1000:] == data[1000:]


async def test_a_file_shorter_than_its_stat_fails_the_piece(
    backend: FileBackend, allowed: Path, tmp_path: Path
) -> None:
    (allowed / "f.bin").write_bytes(b"x" * 100)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(BackendError, match="changed during the download"):
            await backend.download_piece(
                url_of(str(allowed / "f.bin")), {}, NO_OPTIONS, fd=fd, offset=0, length=200, buffer=bytearray(4096)
            )
    finally:
        os.close(fd)


async def test_paths_outside_the_allowed_directories(backend: FileBackend, allowed: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    (allowed / "link").symlink_to(secret)
    (allowed / "dirlink").symlink_to(tmp_path)
    for path in (str(secret), str(allowed / "link"), str(allowed / "dirlink" / "secret"), f"{allowed}/../secret"):
        with pytest.raises(NotReadableHere, match="allowedDirs") as info:
            await backend.stat(url_of(path), {}, NO_OPTIONS)
        assert "secret" not in info.value.message.replace(path, "") or path in info.value.message
    # A sibling whose name starts like the allowed directory is outside it.
    sibling = tmp_path / "allowed-not"
    sibling.mkdir()
    (sibling / "f").write_bytes(b"f")
    with pytest.raises(NotReadableHere):
        await backend.stat(url_of(str(sibling / "f")), {}, NO_OPTIONS)


async def test_missing_and_special_files(backend: FileBackend, allowed: Path) -> None:
    with pytest.raises(NotReadableHere, match="no such file") as info:
        await backend.stat(url_of(str(allowed / "missing")), {}, NO_OPTIONS)
    assert info.value.status_code == 404
    os.mkfifo(allowed / "fifo")
    with pytest.raises(BackendError, match="not a regular file"):
        await backend.stat(url_of(str(allowed / "fifo")), {}, NO_OPTIONS)
    (allowed / "d").mkdir()
    with pytest.raises(BackendError, match="is a directory"):
        await backend.stat(url_of(str(allowed / "d")), {}, NO_OPTIONS)


async def test_no_allowed_directories_reads_nothing(executor: ThreadPoolExecutor, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"f")
    backend = FileBackend(allowed_dirs=[], executor=executor)
    with pytest.raises(NotReadableHere, match="reads no file:// paths"):
        await backend.stat(url_of(str(tmp_path / "f")), {}, NO_OPTIONS)


async def test_list_entries(backend: FileBackend, allowed: Path, tmp_path: Path) -> None:
    (allowed / "a").mkdir()
    (allowed / "a" / "one.bin").write_bytes(b"1")
    (allowed / "a" / "b").mkdir()
    (allowed / "a" / "b" / "two bin").write_bytes(b"22")
    (allowed / "a" / "out").symlink_to(tmp_path)  # not followed
    entries = await backend.list_entries(url_of(str(allowed / "a")) + "/", {}, NO_OPTIONS)
    files = {e.url: e.content_length for e in entries if not e.is_dir}
    dirs = {e.url for e in entries if e.is_dir}
    base = url_of(str(allowed / "a"))
    assert files == {f"{base}/one.bin": 1, f"{base}/b/two%20bin": 2}
    assert dirs == {f"{base}/b/"}
    with pytest.raises(BackendError, match="no such directory"):
        await backend.list_entries(url_of(str(allowed / "nope")) + "/", {}, NO_OPTIONS)


def test_registry_picks_by_scheme(backend: FileBackend) -> None:
    backends = Backends(object(), {"file": backend})  # type: ignore[arg-type]
    assert backends.get("file:///x") is backend
    assert backends.get("FILE:///x") is backend
    assert backends.get("https://h/x") is backends.get("http://h/x")
    with pytest.raises(UnsupportedScheme, match="the supported schemes are"):
        backends.get("ftp://h/x")
