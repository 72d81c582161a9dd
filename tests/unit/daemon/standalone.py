"""A TaskManager with real storage and a real HTTP backend, but no scheduler: the origin path of a daemon in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dragonfly.daemon.backends.http import HTTPBackend
from dragonfly.daemon.config import load_dfdaemon_config
from dragonfly.daemon.download.parents import ParentChannels
from dragonfly.daemon.download.task_manager import TaskManager
from dragonfly.daemon.host_info import TrafficMeter
from dragonfly.daemon.metrics import DaemonMetrics
from dragonfly.daemon.storage import Storage


@dataclass
class Standalone:
    manager: TaskManager
    storage: Storage
    backend: HTTPBackend


@contextlib.asynccontextmanager
async def standalone_task_manager(
    tmp_path: Path, overrides: dict[str, Any] | None = None, *, workers: int = 4, piece_timeout: float = 10.0
) -> AsyncIterator[Standalone]:
    """Yield a task manager storing under ``tmp_path/storage``; config ``overrides`` are camelCase sections."""
    config = load_dfdaemon_config(
        None, overrides={"host": {"hostname": "unit", "ip": "127.0.0.1"}, **(overrides or {})}
    )
    with ThreadPoolExecutor(workers) as executor:
        # As in the daemon: files of deleted tasks are removed on an executor thread.
        storage = Storage(str(tmp_path / "storage"), keep=True, executor=executor)
        storage.open()
        backend = HTTPBackend(request_header={}, max_retries=0, piece_timeout=piece_timeout, executor=executor)
        await backend.start()
        manager = TaskManager(
            config,
            storage=storage,
            backend=backend,
            scheduler=None,
            channels=ParentChannels(),
            executor=executor,
            metrics=DaemonMetrics(),
            download_traffic=TrafficMeter(),
            host_id="127.0.0.1-unit",
            ip="127.0.0.1",
        )
        try:
            yield Standalone(manager, storage, backend)
        finally:
            await manager.shutdown(1.0)
            await backend.close()
            storage.close()
