"""Blind byte relays on the event loop: what one socket receives is written to the other, both ways.

Protocols rather than ``sock_recv`` / ``sock_sendall`` loops: a chunk costs one callback and one write, with no
future and no reader registered and removed per chunk, and flow control is the transports' own (a side whose
write buffer fills pauses reading on the other until it drains). The local API's caller relay
(``api/callers.py``: every DownloadTask message to dfget crosses it) and the proxy's CONNECT tunnels use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import typing


class RelayEnd(asyncio.Protocol):
    """One socket of a relay; ``link`` names the transport its bytes go to.

    Bytes (and an end of stream) that arrive before ``link`` are kept and passed on at ``link``. An end of stream
    is passed on as a half close (EOF written to the peer), and a socket whose both directions have ended is
    closed; a socket that is lost closes its peer (after the peer's buffered bytes are written). ``lost`` is done
    once this side's connection is gone.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._peer: asyncio.Transport | None = None
        self._peer_end: RelayEnd | None = None
        self._pending = bytearray()
        self._read_ended = False
        self._write_ended = False

    def link(self, peer: asyncio.Transport) -> None:
        self._peer = peer
        end = peer.get_protocol()
        self._peer_end = end if isinstance(end, RelayEnd) else None
        if self._pending:
            peer.write(bytes(self._pending))
            self._pending.clear()
        if self._read_ended:
            self._pass_on_eof()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._peer is None:
            self._pending += data
        elif not self._peer.is_closing():
            self._peer.write(data)

    def eof_received(self) -> bool:
        self._read_ended = True
        if self._peer is not None:
            self._pass_on_eof()
        self._close_if_ended()
        # Keep the socket open for the bytes still to come the other way.
        return True

    def _pass_on_eof(self) -> None:
        assert self._peer is not None
        if self._peer_end is not None:
            self._peer_end.end_writing()
        elif self._peer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self._peer.write_eof()

    def end_writing(self) -> None:
        """Write EOF on this socket (nothing more comes from the peer), closing it if its reads have ended too."""
        if self._write_ended or self.transport is None:
            return
        self._write_ended = True
        if self.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write_eof()
        self._close_if_ended()

    def _close_if_ended(self) -> None:
        if self._read_ended and self._write_ended and self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        if self._peer is not None:
            self._peer.pause_reading()

    def resume_writing(self) -> None:
        if self._peer is not None:
            self._peer.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._peer is not None:
            self._peer.close()
        if not self.lost.done():
            self.lost.set_result(None)


def _same(end: RelayEnd) -> RelayEnd:
    return end


async def relay_sockets(first: socket.socket, second: socket.socket) -> None:
    """Relay bytes both ways between two connected stream sockets until both connections are gone.

    The transports take the sockets over (and close them). Cancelled, it closes both at once, dropping what they
    still had to write, and returns once they are closed.
    """
    loop = asyncio.get_running_loop()
    ends: list[RelayEnd] = []
    transports: list[asyncio.Transport] = []
    try:
        for sock in (first, second):
            end = RelayEnd()
            transport, _ = await loop.connect_accepted_socket(functools.partial(_same, end), sock=sock)
            # Nothing is read until both sides are linked.
            transport.pause_reading()
            ends.append(end)
            transports.append(transport)
        ends[0].link(transports[1])
        ends[1].link(transports[0])
        for transport in transports:
            transport.resume_reading()
        await asyncio.gather(*(end.lost for end in ends))
    finally:
        # Ended early (cancelled, or a side failed to start): abort, not close, which would keep a socket open until
        # a peer that may never read again took the bytes still buffered for it. A relay that ended by itself has
        # nothing left to abort.
        for transport in transports:
            transport.abort()
        # The sockets no transport took over.
        for sock in (first, second)[len(transports) :]:
            sock.close()
        if ends:
            # Aborted transports close their sockets on the loop's next iterations (connection_lost).
            await asyncio.wait([end.lost for end in ends])
