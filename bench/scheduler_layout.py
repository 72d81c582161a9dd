"""bench scheduler's simulated swarm: which host and task every peer has, and the messages describing them."""

from __future__ import annotations

import argparse
from typing import Any


class Layout:
    """Which host and task every peer has; the same in every client process (client k plays indices ≡ k mod n).

    Task t's source peer is on host t; children never share a host with their task's source, so the source is
    always a candidate.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.hosts = args.hosts
        self.tasks = [f"{index:064x}" for index in range(max(args.peers // args.peers_per_task, 1))]
        self.first_child_host = min(len(self.tasks), self.hosts - 1)
        self.children = args.peers - len(self.tasks)
        self.late = self.children // 10

    def source_host(self, task: int) -> int:
        return task % self.hosts

    def child(self, index: int) -> tuple[str, int]:
        """Return the task id and host index of child ``index``."""
        child_hosts = self.hosts - self.first_child_host
        return self.tasks[index % len(self.tasks)], self.first_child_host + index % child_hosts


def host_message(index: int) -> Any:
    """Return the common.v2 Host of simulated host ``index`` (a distinct IP, 4 IDCs, 8 zones in 2 regions)."""
    from dragonfly_api import common_pb2

    ip = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
    return common_pb2.Host(
        id=f"{ip}-host-{index}",
        type=0,
        hostname=f"host-{index}",
        ip=ip,
        port=4000,
        download_port=4000,
        network=common_pb2.Network(
            idc=f"idc-{index % 4}",
            location=f"region-{index % 2}|zone-{index % 8}",
            max_tx_bandwidth=10_000_000_000,
            max_rx_bandwidth=10_000_000_000,
        ),
    )


def download_message(pieces: int, *, source: bool) -> Any:
    """Return the Download a peer registers with: ``pieces`` pieces of 4 MiB, from the origin when ``source``."""
    from dragonfly_api import common_pb2

    download = common_pb2.Download(url="http://origin.bench/blob", need_back_to_source=source)
    download.actual_piece_length = 4 * 1024 * 1024
    download.actual_content_length = pieces * 4 * 1024 * 1024
    download.actual_piece_count = pieces
    download.concurrent_piece_count = 8
    return download
