"""The HTTP backend's redirects and headers against two real aiohttp origins on 127.0.0.1 (two origins: two ports).

``front`` redirects, ``store`` holds the bytes; what each one saw is recorded per request.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

import dragonfly
from dragonfly.daemon.backends.http import HTTPBackend, TemporaryRedirectCache
from dragonfly.daemon.errors import BackendError

DATA = os.urandom(3 * 1024 * 1024 + 5)
PIECE = 1024 * 1024
CREDENTIALS = {"Authorization": "Bearer secret", "Cookie": "session=s", "Proxy-Authorization": "Basic p"}


@dataclass
class Server:
    """One origin: ``routes`` maps a path to (status, Location) for redirects; every other path serves DATA."""

    base: str = ""
    routes: dict[str, tuple[int, str]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    seen: list[tuple[str, CIMultiDictProxy[str]]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers))
        if request.path in self.routes:
            status, location = self.routes[request.path]
            return web.Response(status=status, headers={"Location": location})
        if request.path in self.missing:
            return web.Response(status=404, text="gone")
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        if not match:
            return web.Response(body=DATA)
        start, end = int(match.group(1)), min(int(match.group(2)), len(DATA) - 1)
        headers = {"Content-Range": f"bytes {start}-{end}/{len(DATA)}"}
        return web.Response(status=206, body=DATA[start : end + 1], headers=headers)


async def start_server(server: Server) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


@pytest.fixture
async def origins() -> AsyncIterator[tuple[Server, Server]]:
    front, store = Server(), Server()
    runners = [await start_server(front), await start_server(store)]
    yield front, store
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
async def backend(executor: ThreadPoolExecutor) -> AsyncIterator[HTTPBackend]:
    made = HTTPBackend(request_header={}, max_retries=0, piece_timeout=10.0, executor=executor)
    await made.start()
    yield made
    await made.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def fetch_all(backend: HTTPBackend, url: str, path: Path, header: dict[str, str] | None = None) -> bytes:
    """Stat, then fetch every piece the way the task manager does; return the file's bytes."""
    length = (await backend.stat(url, header or {})).content_length
    buffer = bytearray(PIECE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, length)
        for offset in range(0, length, PIECE):
            size = min(PIECE, length - offset)
            crc = await backend.download_piece(url, header or {}, fd=fd, offset=offset, length=size, buffer=buffer)
            assert crc == zlib.crc32(DATA[offset : offset + size])
        return os.pread(fd, length + 1, 0)
    finally:
        os.close(fd)


async def test_a_307_location_is_remembered_per_url(
    origins: tuple[Server, Server], backend: HTTPBackend, tmp_path: Path
) -> None:
    front, store = origins
    front.routes["/f"] = (307, f"{store.base}/signed?sig=1")
    content = await fetch_all(backend, f"{front.base}/f", tmp_path / "out")
    assert hashlib.sha256(content).digest() == hashlib.sha256(DATA).digest()
    # One stat and four pieces: the front is asked once, the store five times.
    assert front.paths() == ["/f"]
    assert store.paths() == ["/signed"] * 5
    assert backend.redirects is not None
    assert backend.redirects.get(f"{front.base}/f") == f"{store.base}/signed?sig=1"


async def test_a_remembered_location_expires_after_the_ttl(
    origins: tuple[Server, Server], backend: HTTPBackend
) -> None:
    front, store = origins
    front.routes["/f"] = (307, f"{store.base}/signed")
    clock = FakeClock()
    backend.redirects = TemporaryRedirectCache(600.0, clock=clock)
    url = f"{front.base}/f"
    for _ in range(2):
        assert (await backend.stat(url, {})).content_length == len(DATA)
    clock.now += 599.0
    await backend.stat(url, {})
    assert front.paths() == ["/f"]
    clock.now += 1.0
    await backend.stat(url, {})
    assert front.paths() == ["/f", "/f"]
    assert store.paths() == ["/signed"] * 4


@pytest.mark.parametrize("status", [301, 302, 303, 308])
async def test_other_redirects_are_followed_but_not_remembered(
    origins: tuple[Server, Server], backend: HTTPBackend, status: int
) -> None:
    front, store = origins
    front.routes["/f"] = (status, f"{store.base}/data")
    for _ in range(2):
        assert (await backend.stat(f"{front.base}/f", {})).content_length == len(DATA)
    assert front.paths() == ["/f", "/f"]
    assert store.paths() == ["/data", "/data"]


async def test_remembering_can_be_turned_off(origins: tuple[Server, Server], executor: ThreadPoolExecutor) -> None:
    front, store = origins
    front.routes["/f"] = (307, f"{store.base}/data")
    backend = HTTPBackend(
        request_header={}, max_retries=0, piece_timeout=10.0, executor=executor, cache_temporary_redirect=False
    )
    await backend.start()
    try:
        for _ in range(2):
            await backend.stat(f"{front.base}/f", {})
    finally:
        await backend.close()
    assert backend.redirects is None
    assert front.paths() == ["/f", "/f"]


async def test_a_stale_location_is_forgotten_and_the_url_asked_again(
    origins: tuple[Server, Server], backend: HTTPBackend
) -> None:
    front, store = origins
    url = f"{front.base}/f"
    front.routes["/f"] = (307, f"{store.base}/old")
    await backend.stat(url, {})
    # The signed location expires at the store before our TTL does; the front now hands out a new one.
    store.missing.add("/old")
    front.routes["/f"] = (307, f"{store.base}/new")
    assert (await backend.stat(url, {})).content_length == len(DATA)
    assert store.paths() == ["/old", "/old", "/new"]
    assert front.paths() == ["/f", "/f"]
    assert backend.redirects is not None
    assert backend.redirects.get(url) == f"{store.base}/new"


async def test_a_location_that_no_longer_answers_is_forgotten(
    origins: tuple[Server, Server], backend: HTTPBackend
) -> None:
    front, store = origins
    url = f"{front.base}/f"
    assert backend.redirects is not None
    backend.redirects.put(url, "http://127.0.0.1:9/unreachable")  # discard port: connection refused
    front.routes["/f"] = (307, f"{store.base}/data")
    assert (await backend.stat(url, {})).content_length == len(DATA)
    assert front.paths() == ["/f"]
    assert backend.redirects.get(url) == f"{store.base}/data"


async def test_credentials_do_not_follow_a_redirect_to_another_origin(
    origins: tuple[Server, Server], backend: HTTPBackend, tmp_path: Path
) -> None:
    front, store = origins
    front.routes["/f"] = (307, f"{store.base}/data")
    header = {**CREDENTIALS, "X-Request": "kept"}
    content = await fetch_all(backend, f"{front.base}/f", tmp_path / "out", header)
    assert content == DATA
    (_, front_headers), *_ = front.seen
    assert {name: front_headers.get(name) for name in CREDENTIALS} == CREDENTIALS
    # The first request follows the 307; the later ones go to the remembered location: none carries them.
    assert len(store.seen) == 5
    for _, headers in store.seen:
        assert [name for name in CREDENTIALS if name in headers] == []
        assert headers["X-Request"] == "kept"


async def test_credentials_stay_on_a_redirect_within_the_origin(
    origins: tuple[Server, Server], backend: HTTPBackend
) -> None:
    front, _store = origins
    front.routes["/f"] = (307, "/data")
    front.routes["/g"] = (302, f"{front.base}/data")
    for path in ("/f", "/f", "/g"):
        await backend.stat(f"{front.base}{path}", dict(CREDENTIALS))
    assert front.paths() == ["/f", "/data", "/data", "/g", "/data"]
    for _, headers in front.seen:
        assert {name: headers.get(name) for name in CREDENTIALS} == CREDENTIALS


async def test_credentials_dropped_once_stay_dropped_back_on_the_first_origin(
    origins: tuple[Server, Server], backend: HTTPBackend
) -> None:
    front, store = origins
    front.routes["/f"] = (302, f"{store.base}/bounce")
    store.routes["/bounce"] = (302, f"{front.base}/data")
    await backend.stat(f"{front.base}/f", dict(CREDENTIALS))
    assert front.paths() == ["/f", "/data"]
    assert [name for name in CREDENTIALS if name in front.seen[1][1]] == []


async def test_a_redirect_loop_is_an_error(origins: tuple[Server, Server], backend: HTTPBackend) -> None:
    front, _store = origins
    front.routes["/a"] = (302, "/b")
    front.routes["/b"] = (302, "/a")
    with pytest.raises(BackendError, match=r"origin redirected http://127\.0\.0\.1:\d+/a more than 10 times"):
        await backend.stat(f"{front.base}/a", {})
    assert len(front.seen) == 11


async def test_user_agent_is_dragonflys_unless_the_request_names_one(
    origins: tuple[Server, Server], executor: ThreadPoolExecutor
) -> None:
    front, _store = origins
    backend = HTTPBackend(request_header={"X-Default": "d"}, max_retries=0, piece_timeout=10.0, executor=executor)
    await backend.start()
    try:
        await backend.stat(f"{front.base}/data", {})
        await backend.stat(f"{front.base}/data", {"user-agent": "custom/1.0"})
    finally:
        await backend.close()
    (_, ours), (_, theirs) = front.seen
    assert ours.getall("User-Agent") == [f"dragonfly/{dragonfly.__version__}"]
    assert theirs.getall("User-Agent") == ["custom/1.0"]
    assert ours["X-Default"] == theirs["X-Default"] == "d"


async def test_no_cookie_set_by_an_origin_goes_out_with_later_requests(
    origins: tuple[Server, Server], backend: HTTPBackend
) -> None:
    front, _store = origins

    async def set_cookie(request: web.Request) -> web.StreamResponse:
        front.seen.append((request.path, request.headers))
        return web.Response(body=DATA, headers={"Set-Cookie": "session=one-users; Path=/"})

    front.handle = set_cookie  # type: ignore[method-assign]
    await backend.stat(f"{front.base}/data", {})
    await backend.stat(f"{front.base}/data", {})
    assert [headers.get("Cookie") for _, headers in front.seen] == [None, None]


def test_the_cache_keeps_the_most_recently_used_urls() -> None:
    clock = FakeClock()
    cache = TemporaryRedirectCache(600.0, clock=clock)
    for i in range(1000):
        cache.put(f"http://o/{i}", f"http://s/{i}")
    assert cache.get("http://o/0") == "http://s/0"  # now the most recently used
    cache.put("http://o/1000", "http://s/1000")
    assert len(cache) == 1000
    assert cache.get("http://o/1") is None
    assert cache.get("http://o/0") == "http://s/0"
    assert cache.get("http://o/1000") == "http://s/1000"
    clock.now += 600.0
    assert cache.get("http://o/0") is None
    assert len(cache) == 999
