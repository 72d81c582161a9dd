"""A TLS piece send waits for its socket on its executor thread for a bounded time before handing back to the loop.

A reader that keeps up costs one loop round trip per piece; one that does not, or never reads, gets the wait handed
to the event loop (never a thread held for long).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dragonfly.daemon.upload import vortex_server


class FakeSender:
    """Answers ``send_some`` from a script ("write" = would block, None = all sent) over a real socket."""

    def __init__(self, sock: socket.socket, answers: list[str | None]) -> None:
        self.sock = sock
        self._answers = iter(answers)
        self.calls = 0

    def send_some(self) -> str | None:
        self.calls += 1
        return next(self._answers, "write")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    left.setblocking(False)
    yield left, right
    left.close()
    right.close()


def test_a_socket_that_takes_more_is_waited_for_on_the_thread(pair: tuple[socket.socket, socket.socket]) -> None:
    sender = FakeSender(pair[0], ["write", "write", None])  # the socket has room: each wait ends at once
    assert vortex_server._send_patiently(sender) is None  # type: ignore[arg-type]
    assert sender.calls == 3


def test_a_full_socket_is_handed_to_the_loop(pair: tuple[socket.socket, socket.socket]) -> None:
    left, _right = pair
    while True:  # fill the socket: nobody reads the other end
        try:
            left.send(b"x" * 65536)
        except BlockingIOError:
            break
    sender = FakeSender(left, ["write", None])
    assert vortex_server._send_patiently(sender) == "write"
    assert sender.calls == 1


def test_a_reader_that_never_lets_the_send_finish_gets_the_loop_after_the_patience(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sender = FakeSender(pair[0], [])  # always "write" while the socket always has room: bounded by the patience
    assert vortex_server._send_patiently(sender) == "write"  # type: ignore[arg-type]
    assert sender.calls > 1
