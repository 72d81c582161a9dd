"""The event loop's blind byte relay (dragonfly/daemon/socket_relay.py): the local API's caller relay and the proxy's
CONNECT tunnels. Real unix socket pairs; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import select
import socket
from collections.abc import AsyncIterator

import pytest

from dragonfly.daemon import socket_relay
from dragonfly.daemon.socket_relay import RelayEnd, relay_sockets
from tests.waiting import eventually

_WITHIN = 10.0


def _pair() -> tuple[socket.socket, socket.socket]:
    outer, inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    outer.setblocking(False)
    inner.setblocking(False)
    return outer, inner


async def _read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
async def relayed() -> AsyncIterator[tuple[socket.socket, socket.socket, asyncio.Task[None]]]:
    """Two outer sockets, ``client`` and ``server``, whose inner ends are relayed to each other."""
    client, client_inner = _pair()
    server, server_inner = _pair()
    task = asyncio.create_task(relay_sockets(client_inner, server_inner))
    yield client, server, task
    task.cancel()
    await asyncio.wait([task], timeout=_WITHIN)
    client.close()
    server.close()


async def test_bytes_cross_both_ways_and_each_half_close_is_passed_on(
    relayed: tuple[socket.socket, socket.socket, asyncio.Task[None]],
) -> None:
    loop = asyncio.get_running_loop()
    client, server, task = relayed
    request, answer = os.urandom(8 << 20), os.urandom(3 << 20)

    async def send_and_end(sock: socket.socket, data: bytes) -> None:
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)

    async with asyncio.timeout(_WITHIN):
        # More than the sockets and the relay hold: the sender waits on the reader (flow control) as it goes.
        _, received = await asyncio.gather(send_and_end(client, request), _read_to_eof(server))
        # The server sees the request whole and then its end, while its own direction stays open.
        assert hashlib.sha256(received).digest() == hashlib.sha256(request).digest()
        _, received = await asyncio.gather(send_and_end(server, answer), _read_to_eof(client))
        assert hashlib.sha256(received).digest() == hashlib.sha256(answer).digest()
        # Both directions ended: the relay closes both of its sockets and returns.
        await task


async def test_a_side_that_goes_away_ends_the_relay_and_the_other_side_sees_the_end(
    relayed: tuple[socket.socket, socket.socket, asyncio.Task[None]],
) -> None:
    loop = asyncio.get_running_loop()
    client, server, task = relayed
    async with asyncio.timeout(_WITHIN):
        await loop.sock_sendall(client, b"request")
        assert await loop.sock_recv(server, 100) == b"request"
        # The server answers a client that has closed without reading: the relay's write to it fails.
        client.close()
        # The relay closes the server's side once its write to the client fails: the answer may not all go in,
        # and what the relay had not read when it closed ends the server's connection with a reset.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await loop.sock_sendall(server, os.urandom(1 << 20))
        with contextlib.suppress(ConnectionResetError):
            assert await _read_to_eof(server) == b""
        await task


async def test_a_cancelled_relay_closes_both_sides(
    relayed: tuple[socket.socket, socket.socket, asyncio.Task[None]],
) -> None:
    loop = asyncio.get_running_loop()
    client, server, task = relayed
    async with asyncio.timeout(_WITHIN):
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(server, 100) == b"ping"
        task.cancel()
        await asyncio.wait([task])
        assert await _read_to_eof(client) == b""
        assert await _read_to_eof(server) == b""


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the other end of a unix stream socket is closed (POLLHUP), now, without reading."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return any(events & select.POLLHUP for _fd, events in poller.poll(0))


async def test_a_cancelled_relay_closes_both_sockets_at_once_even_with_bytes_a_side_never_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    ends: list[RelayEnd] = []

    class Recorded(RelayEnd):
        def __init__(self) -> None:
            super().__init__()
            ends.append(self)

    monkeypatch.setattr(socket_relay, "RelayEnd", Recorded)
    client, client_inner = _pair()
    server, server_inner = _pair()
    relay = asyncio.create_task(relay_sockets(client_inner, server_inner))
    # The server never reads: the relay buffers what it has read from the client for the server, then stops reading.
    sending = asyncio.create_task(loop.sock_sendall(client, os.urandom(8 << 20)))
    try:
        await eventually(
            lambda: len(ends) == 2 and ends[1].transport is not None and ends[1].transport.get_write_buffer_size(),
            _WITHIN,
            "the relay to hold bytes for the server",
        )
        assert not _peer_closed(client)
        assert not _peer_closed(server)
        relay.cancel()
        async with asyncio.timeout(_WITHIN):
            await asyncio.wait([relay])
        # Both sockets are closed by the time the relay returns, the one with bytes still to write included.
        assert _peer_closed(client)
        assert _peer_closed(server)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):  # the client's peer is gone
            await sending
        client.close()
        server.close()


class _Transport:
    """Records what a RelayEnd asks of its peer's transport (flow control and EOF, no socket involved)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")

    def get_protocol(self) -> None:
        return None

    def close(self) -> None:
        self.calls.append("close")


async def test_a_full_side_pauses_reading_on_the_other_and_early_bytes_wait_for_the_link() -> None:
    end = RelayEnd()
    end.data_received(b"early")
    end.eof_received()
    peer = _Transport()
    end.link(peer)  # type: ignore[arg-type]
    assert bytes(peer.written) == b"early"
    end.pause_writing()
    end.resume_writing()
    assert peer.calls == ["write_eof", "pause_reading", "resume_reading"]
    end.connection_lost(None)
    assert peer.calls[-1] == "close"
    assert end.lost.done()
