"""The upload API's SyncPieces stream (daemon/upload/grpc_server.py) when its task finishes while pieces are being
sent. Stand-ins for storage, task manager and host: only the attributes SyncPieces reads (the whole path runs with real
daemons in tests/integration/daemon/test_daemon_file_urls.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from dragonfly_api import dfdaemon_pb2

from dragonfly.daemon.upload.grpc_server import DfdaemonUploadService

PIECE = 4 * 1024 * 1024


class _Storage:
    def __init__(self, task: Any) -> None:
        self.task = task

    def get_task(self, task_id: str) -> Any:
        return self.task if task_id == self.task.id else None

    async def wait_for_change(self, task_id: str, seconds: float) -> None:
        return None


@pytest.mark.parametrize("active_after", [True, False], ids=["still-active", "no-longer-active"])
async def test_pieces_stored_while_others_are_sent_reach_the_child_when_the_task_finishes_meanwhile(
    active_after: bool,
) -> None:
    # A finished download may or may not still count as active when the stream looks again: either way the pieces
    # stored during the yields are sent.
    active = [True]
    task = SimpleNamespace(
        id="a" * 64, content_length=11 * PIECE, piece_length=PIECE, finished_at=None, failed_at=None,
        pieces={n: SimpleNamespace(number=n, offset=n * PIECE, length=PIECE) for n in range(9)},
    )  # fmt: skip
    service = DfdaemonUploadService(
        storage=_Storage(task),  # type: ignore[arg-type]
        tasks=SimpleNamespace(is_active=lambda task_id: active[0]),  # type: ignore[arg-type]
        host=SimpleNamespace(ip="127.0.0.1"),  # type: ignore[arg-type]
        vortex_port=4000,
    )
    sent = []
    stream = service.SyncPieces(dfdaemon_pb2.SyncPiecesRequest(task_id=task.id), context=None)  # type: ignore[arg-type]
    async for response in stream:
        sent.append(response.number)
        if len(sent) == 1:
            # The download stores the last two pieces and finishes while the first is being sent.
            task.pieces.update({n: SimpleNamespace(number=n, offset=n * PIECE, length=PIECE) for n in (9, 10)})
            task.finished_at = 1.0
            active[0] = active_after
    assert sent == list(range(11))
