"""Back-to-source order: pieces from the origin start in ascending order and, on a shared link, land one at a time.

The window logic is driven with a fake clock (deterministic); the task manager runs against a real aiohttp origin
on 127.0.0.1 whose bodies are paced either over one shared link or per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from dragonfly_api import common_pb2
from standalone import standalone_task_manager

from dragonfly.common.piece import MIN_PIECE_LENGTH
from dragonfly.daemon.download.source_window import SourcePiece, SourceWindow
from dragonfly.daemon.download.task_download import PieceDone
from dragonfly.daemon.download.task_manager import TaskManager

PIECE = MIN_PIECE_LENGTH
LEAD = PIECE // 8


# ---------------------------------------------------------------------------------------------- the window alone


@dataclass
class Simulation:
    window: SourceWindow
    starts: list[tuple[int, float, dict[int, int]]] = field(default_factory=list)  # number, time, others' bytes left
    completions: list[tuple[int, float]] = field(default_factory=list)
    most_in_flight: int = 0


def simulate(pieces: int, *, limit: int, rate_each: Callable[[int], float], step: float) -> Simulation:
    """Drive a SourceWindow in fake time; ``rate_each(k)`` is the byte rate of each of ``k`` pieces in flight."""
    now = [0.0]
    sim = Simulation(SourceWindow(limit, PIECE, clock=lambda: now[0]))
    flying: dict[int, SourcePiece] = {}
    following = 0
    while len(sim.completions) < pieces:
        while following < pieces and sim.window.admits():
            sim.starts.append((following, now[0], {n: p.left for n, p in flying.items()}))
            flying[following] = sim.window.begin(PIECE)
            following += 1
        sim.most_in_flight = max(sim.most_in_flight, len(flying))
        chunk = round(rate_each(len(flying)) * step)
        for piece in flying.values():
            piece.receive(chunk)
        now[0] += step
        for number in sorted(flying):
            if flying[number].left == 0:
                sim.window.complete(flying.pop(number))
                sim.completions.append((number, now[0]))
    return sim


def test_one_piece_at_a_time_when_the_origin_link_is_shared() -> None:
    link = 50e6  # 400 Mbit/s, which any one connection fills
    sim = simulate(64, limit=8, rate_each=lambda k: link / k, step=0.0005)
    assert sim.window.size == 1
    assert [n for n, _ in sim.completions] == list(range(64))
    # The first piece lands after one piece-time (plus the lead it shares with the next), not after `limit` of them.
    assert sim.completions[0][1] == pytest.approx((PIECE + LEAD) / link, abs=0.002)
    # The next piece is asked for just before the one in flight ends, so the link never idles between pieces.
    number, _, others = sim.starts[1]
    assert number == 1
    assert 0 < others[0] <= LEAD
    assert sim.completions[-1][1] == pytest.approx(64 * PIECE / link, rel=0.01)
    # Doubling the window was tried once (and brought nothing); outside that, at most one piece waits behind another.
    assert sim.most_in_flight == 3
    late = [others for number, _, others in sim.starts if number > 20]
    assert all(len(others) <= 1 for others in late)


def test_window_doubles_while_each_connection_adds_throughput() -> None:
    sim = simulate(96, limit=8, rate_each=lambda k: 10e6, step=0.001)
    assert sim.window.size == 8
    assert sim.most_in_flight == 8
    assert [n for n, _, _ in sim.starts] == list(range(96))


def test_window_settles_where_throughput_stops_growing() -> None:
    # Each connection gets 10 MB/s up to an origin total of 25 MB/s: 2 pieces at once help, 4 barely do.
    sim = simulate(96, limit=8, rate_each=lambda k: min(10e6, 25e6 / k), step=0.001)
    assert sim.window.size == 2


def test_quick_origin_gets_the_whole_window_at_once() -> None:
    # A piece-time of 2 ms: pieces in flight together cost no latency worth keeping the order for.
    sim = simulate(40, limit=8, rate_each=lambda k: 2e9 / k, step=0.0001)
    assert sim.window.size == 8
    assert sim.most_in_flight == 8


def test_a_retried_range_counts_its_bytes_once() -> None:
    ticks = iter(range(0, 1000, 10))  # slow pieces: the window stays at one piece
    window = SourceWindow(4, PIECE, clock=lambda: float(next(ticks)))
    first = window.begin(PIECE)
    first.receive(PIECE - LEAD)
    assert window.admits()
    second = window.begin(PIECE)
    assert not window.admits()
    first.receive(PIECE)  # a retry reads the whole range again
    assert first.left == 0
    window.end(second)
    window.complete(first)
    assert window.admits()
    # Both pieces are out of flight and no bytes are outstanding: a new piece may start whatever its size.
    window.begin(PIECE)
    window.begin(PIECE)
    assert not window.admits()


# ------------------------------------------------------------------------------------- against a paced origin


@dataclass
class Origin:
    base: str
    ranges: list[int] = field(default_factory=list)  # first byte of each piece request, in arrival order
    in_flight: int = 0
    most_in_flight: int = 0


@contextlib.asynccontextmanager
async def paced_origin(body: bytes, rate: float, *, shared: bool) -> AsyncIterator[Origin]:
    """Serve ``body`` at ``rate`` bytes/s over one shared link (chunks take turns) or per connection."""
    link_free = [0.0]
    origin = Origin("")

    async def handle(request: web.Request) -> web.StreamResponse:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("Range", ""))
        assert match, "the daemon asks for ranges"
        start, end = int(match.group(1)), min(int(match.group(2)), len(body) - 1)
        response = web.StreamResponse(status=206, headers={"Content-Range": f"bytes {start}-{end}/{len(body)}"})
        response.content_length = end - start + 1
        await response.prepare(request)
        if end == start:  # the stat
            await response.write(body[start : end + 1])
            return response
        origin.ranges.append(start)
        origin.in_flight += 1
        origin.most_in_flight = max(origin.most_in_flight, origin.in_flight)
        try:
            own_free = time.monotonic()
            for offset in range(start, end + 1, 64 * 1024):
                chunk = body[offset : min(offset + 64 * 1024, end + 1)]
                if shared:
                    link_free[0] = max(link_free[0], time.monotonic()) + len(chunk) / rate
                    ready = link_free[0]
                else:
                    own_free += len(chunk) / rate
                    ready = own_free
                await asyncio.sleep(max(0.0, ready - time.monotonic()))
                await response.write(chunk)
        finally:
            origin.in_flight -= 1
        return response

    app = web.Application()
    app.router.add_get("/blob", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    origin.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield origin
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def task_manager(tmp_path: Path, concurrency: int) -> AsyncIterator[TaskManager]:
    async with standalone_task_manager(
        tmp_path, {"download": {"concurrentPieceCount": concurrency}}, piece_timeout=30.0
    ) as daemon:
        yield daemon.manager


async def download(manager: TaskManager, origin: Origin, output: Path) -> list[tuple[int, list[int]]]:
    """Download the origin's blob; return each landed piece with the ranges the origin had been asked for by then."""
    landed: list[tuple[int, list[int]]] = []
    async with asyncio.timeout(60):
        async for event in manager.download(common_pb2.Download(url=origin.base + "/blob", output_path=str(output))):
            if isinstance(event, PieceDone):
                landed.append((event.piece.number, list(origin.ranges)))
    return landed


async def test_pieces_land_in_order_over_a_shared_origin_link(tmp_path: Path) -> None:
    body = os.urandom(PIECE) * 12
    async with paced_origin(body, 40e6, shared=True) as origin, task_manager(tmp_path, 8) as manager:
        landed = await download(manager, origin, tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out").read_bytes()).digest() == hashlib.sha256(body).digest()
    assert [number for number, _ in landed] == list(range(12))
    assert origin.ranges == [n * PIECE for n in range(12)]
    # Piece 0 lands before piece 2 is asked for: one piece at a time, the next one queued just behind it.
    assert 2 * PIECE not in landed[0][1]
    # Not 8 pieces sharing the link: the window tried two (plus one queued) and went back to one.
    assert origin.most_in_flight <= 3


async def test_pieces_from_an_origin_paced_per_connection_arrive_complete_and_in_order(tmp_path: Path) -> None:
    body = os.urandom(PIECE) * 24
    async with paced_origin(body, 20e6, shared=False) as origin, task_manager(tmp_path, 4) as manager:
        landed = await download(manager, origin, tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out").read_bytes()).digest() == hashlib.sha256(body).digest()
    assert sorted(number for number, _ in landed) == list(range(24))
    # Each asked once, never more at once than the limit. How far the window grows depends on measured throughput,
    # i.e. on how loaded the machine is: that is test_window_doubles_while_each_connection_adds_throughput's job,
    # with a fake clock.
    assert sorted(origin.ranges) == [n * PIECE for n in range(24)]
    assert 1 <= origin.most_in_flight <= 4
