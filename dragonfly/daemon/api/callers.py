"""Who is calling the local API: SO_PEERCRED of each connection to the unix socket (docs/security.md).

gRPC's Python server does not expose the peer credentials of a unix-socket connection, so the daemon owns the
public socket itself: each accepted connection's credentials (pid, uid, gid and the process's supplementary
groups) are read at once, and its bytes are relayed to the gRPC server, listening on an abstract unix socket,
over a connection bound to a fresh random abstract name. The gRPC handler sees that name as its peer
(``unix-abstract:<name>``) and looks the caller up here. The mapping is dropped before the relay connection
closes, so a name can never be reused for another caller; a connection made straight to the internal socket has
no mapping and is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import struct

from dragonfly.daemon.output import Caller
from dragonfly.daemon.socket_relay import relay_sockets

log = logging.getLogger(__name__)

_CRED = struct.Struct("3i")


def _supplementary_groups(pid: int, gid: int) -> tuple[int, ...]:
    # Read while the connection is open: the caller is blocked in connect/write, so the pid is still its own.
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return (gid,)


class CallerRelay:
    """The public local API socket: records each caller, relays its connection to the internal gRPC socket."""

    def __init__(self, public_path: str) -> None:
        self.public_path = public_path
        self.internal_name = f"dfdaemon-{os.getpid()}-{secrets.token_hex(8)}"
        self._callers: dict[str, Caller] = {}
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def internal_target(self) -> str:
        """Return the gRPC address of the internal socket (``unix-abstract:...``)."""
        return f"unix-abstract:{self.internal_name}"

    def lookup(self, peer: str) -> Caller | None:
        """Return the caller behind a gRPC peer string, or None when it did not come through the public socket."""
        prefix = "unix-abstract:"
        if not peer.startswith(prefix):
            return None
        return self._callers.get(peer[len(prefix) :])

    def start(self, mode: int, gid: int | None) -> None:
        """Bind the public socket with ``mode`` (and group ``gid``), then accept in the background."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.public_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Nobody can connect between bind and chmod: the socket starts without any permission.
        old_umask = os.umask(0o777)
        try:
            listener.bind(self.public_path)
        finally:
            os.umask(old_umask)
        if gid is not None:
            os.chown(self.public_path, -1, gid)
        os.chmod(self.public_path, mode)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept_loop(), name="local-api-accept")

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for relay in list(self._relays):
            relay.cancel()
        if self._relays:
            await asyncio.wait(self._relays, timeout=2)
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.public_path)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except OSError as exc:
                log.warning("local API accept failed", extra={"error": str(exc)})
                await asyncio.sleep(0.1)
                continue
            relay = asyncio.create_task(self._relay(conn), name="local-api-relay")
            self._relays.add(relay)
            relay.add_done_callback(self._relays.discard)

    async def _relay(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        name = f"dfdaemon-caller-{secrets.token_hex(16)}"
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid, uid, gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
            self._callers[name] = Caller(pid, uid, gid, _supplementary_groups(pid, gid))
            conn.setblocking(False)
            inner.setblocking(False)
            inner.bind(f"\0{name}")
            await loop.sock_connect(inner, f"\0{self.internal_name}")
            # The relay's transports close what they are given: a duplicate of the inner socket, so that `inner`
            # keeps the name bound until the mapping is gone (below).
            await relay_sockets(conn, inner.dup())
        except OSError as exc:
            log.debug("local API relay ended", extra={"error": str(exc)})
        finally:
            # Forget the name before it is released, so no later connection can be taken for this caller.
            self._callers.pop(name, None)
            inner.close()
            conn.close()
