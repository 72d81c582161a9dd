"""A plain-HTTP piece body read straight from its socket on an executor thread, instead of through aiohttp.

Through aiohttp each ~64-256 KiB of body costs the event loop a wake-up, a fresh ``bytes`` (page faults on the
allocation), the parser's slice, the StreamReader, and a copy into the piece buffer, all holding the GIL. A seed
peer reads every byte of a task that way, and on a busy host its loop then does not get the CPU in time: the origin
socket's buffer fills and the origin link idles (bench/RESULTS.md §2 "CPU per GiB in the swarm, profile"). Here
aiohttp still sends the request and checks the answer's head; when the body is plain bytes of a known length on a
plain TCP connection, the bytes aiohttp already holds are taken from it, its reading is paused, and one executor
thread receives the rest into the pooled buffer (``recv_into``: one copy, GIL released; woken per 256 KiB, not
per segment), writing, CRC-ing and hashing what has arrived while it waits for more. The connection is closed
afterwards (aiohttp's parser never saw the body), never reused. Anything else (TLS, chunked framing, an unknown
length) goes through aiohttp as before.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

import aiohttp

from dragonfly.daemon.backends.piece_chunks import PieceDigest, write_chunk
from dragonfly.daemon.blocking import run_blocking

# How often the thread looks up from a silent socket to see whether the download was cancelled.
_STOP_POLL = 0.1
# Progress is told to the loop (``loop.call_soon_threadsafe``) per this many bytes, not per recv: the
# back-to-source window starts the next piece when one has an eighth of a piece left (4 MiB pieces: 512 KiB).
_PROGRESS_STEP = 256 * 1024
#: While the socket has nothing to read, what has arrived is written and hashed if at least this much (fewer, larger
#: writes: the thread is woken per ``_PROGRESS_STEP`` anyway).
IDLE_WRITE_MIN = 64 * 1024


class BodySocket:
    """The rest of a body to read from a duplicate of the response's socket, and what aiohttp had already read.

    ``transport``: the connection's transport, detached from aiohttp's protocol (``take_over``); closed with this.
    """

    __slots__ = ("prefix", "sock", "transport")

    def __init__(self, sock: socket.socket, prefix: bytes, transport: asyncio.Transport | None = None) -> None:
        self.sock = sock
        self.prefix = prefix
        self.transport = transport

    def close(self) -> None:
        self.sock.close()
        if self.transport is not None:
            self.transport.close()


def take_over(resp: aiohttp.ClientResponse, length: int) -> BodySocket | None:
    """Take the body of ``resp`` (its first ``length`` bytes) away from aiohttp, or return None to leave it there.

    Only plain bytes of a declared length of at least ``length`` on a plain TCP connection qualify. The caller must
    close ``resp`` (so its connection) and the returned ``BodySocket`` when done.
    """
    connection = resp.connection
    declared = resp.content_length
    if connection is None or declared is None or declared < length or "Transfer-Encoding" in resp.headers:
        return None
    transport = connection.transport
    protocol = connection.protocol
    if transport is None or protocol is None:
        return None
    # Over TLS the socket carries records, not the body.
    if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return None
    # What aiohttp holds: its buffer, and what it kept unparsed while that buffer was full, which reading the
    # buffer makes it parse (synchronously: nothing else runs on the loop meanwhile). Then it reads no more.
    prefix = bytearray()
    while chunk := resp.content.read_nowait():
        prefix += chunk
    protocol.pause_reading()
    # And nothing may resume it: aiohttp hands a connection to the next request once its parser has seen the end of
    # a body, while that body's reader may still be draining its buffer, and every such read resumes the protocol's
    # reading (StreamReader -> protocol.resume_reading()): the transport would then read this body's bytes into
    # aiohttp's buffer, never to reach the thread, and the piece would stall until its timeout. Without its
    # transport the protocol cannot resume it; the BodySocket closes the transport instead.
    protocol.transport = None
    # A duplicate: the thread's descriptor stays valid even if aiohttp closes the connection meanwhile. It shares
    # the non-blocking file description: a recv with nothing to read raises BlockingIOError.
    return BodySocket(socket.socket(fileno=os.dup(sock.fileno())), bytes(prefix[:length]), transport)


def _wait_readable(sock: socket.socket, want: int, stall: float, stop: threading.Event) -> None:
    """Wait until ``sock`` has ``want`` bytes (or EOF); TimeoutError after ``stall`` seconds, or soon after ``stop``.

    SO_RCVLOWAT makes the kernel wake this thread once per ``want`` bytes rather than per arriving segment: on a
    link slower than the CPU, a wake-up per few KiB would cost more than the copy (the socket is never reused).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + stall
    while not poller.poll(_STOP_POLL * 1000):
        if stop.is_set():
            raise TimeoutError("the piece download was stopped")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no byte from the origin in {stall:g} s")


def receive_body(
    body: BodySocket,
    fd: int,
    offset: int,
    length: int,
    buffer: bytearray,
    digest: PieceDigest | None,
    stall: float,
    stop: threading.Event,
    progress: Callable[[int], None] | None,
) -> int:
    """Write ``length`` bytes of the body (its prefix, then the socket) at ``offset`` of ``fd``; return their CRC-32.

    Runs on an executor thread. ``progress`` is called here, from this thread, per ``_PROGRESS_STEP`` bytes.
    """
    view = memoryview(buffer)
    capacity = len(buffer)
    # The buffer holds ``filled`` bytes, the first ``flushed`` of them written. Whatever has arrived is written and
    # hashed while the socket has nothing more to read (on a link slower than the CPU, most of the time), so at the
    # piece's last byte only what came since the last such moment is left to write; while bytes keep coming they
    # are received first, in as few calls as the buffer allows.
    crc = received = written = filled = flushed = unreported = 0
    prefix = memoryview(body.prefix)
    while received < length:
        want = min(capacity - filled, length - received)
        if prefix:
            count = min(want, len(prefix))
            view[filled : filled + count] = prefix[:count]
            prefix = prefix[count:]
        else:
            try:
                count = body.sock.recv_into(view[filled : filled + want])
            except BlockingIOError:
                if filled - flushed >= IDLE_WRITE_MIN:
                    crc = write_chunk(fd, offset + written, view[flushed:filled], crc, written == 0, digest)
                    written, flushed = received, filled
                else:
                    _wait_readable(body.sock, min(want, _PROGRESS_STEP), stall, stop)
                continue
            if count == 0:
                # What aiohttp raises for a body cut short: a transient failure, retried (describe_origin_error).
                raise aiohttp.ClientPayloadError(f"received {received} of {length} bytes")
        filled += count
        received += count
        unreported += count
        if progress is not None and (unreported >= _PROGRESS_STEP or received == length):
            progress(unreported)
            unreported = 0
        if filled == capacity or received == length:
            crc = write_chunk(fd, offset + written, view[flushed:filled], crc, written == 0, digest)
            written = received
            filled = flushed = 0
    return crc


async def read_body(
    executor: Executor,
    body: BodySocket,
    fd: int,
    offset: int,
    length: int,
    buffer: bytearray,
    digest: PieceDigest | None,
    stall: float,
    progress: Callable[[int], None] | None,
) -> int:
    """Run ``receive_body`` on ``executor``; a cancelled caller stops the thread and waits for it (it writes from
    the pooled buffer and through the borrowed descriptor until it returns)."""
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    told: Callable[[int], None] | None = None
    if progress is not None:

        def told(count: int) -> None:
            loop.call_soon_threadsafe(progress, count)

    if digest is not None:
        digest.restart()
    return await run_blocking(
        executor, receive_body, body, fd, offset, length, buffer, digest, stall, stop, told, on_cancel=stop.set
    )
