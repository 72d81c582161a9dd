"""bench scheduler's simulated swarm: which host and task every peer has, and the messages describing them."""

from __future__ import annotations

import argparse
from typing import Any


class Layout:
    """Which host and task every peer has; the same in every client process.

    Task t's source peer is on host t; children never share a host with their task's source, so the source is
    always a candidate. The children are, in index order: early (register in phase 1; bulk client k of n plays
    indices ≡ k mod n), probe (``probe_peers`` of them, all played by the probe process, registered one at a time
    in phase 1b), late (the last 10 %, registered during the flood, shared like the early ones).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.hosts = args.hosts
        self.tasks = [f"{index:064x}" for index in range(max(args.peers // args.peers_per_task, 1))]
        self.first_child_host = min(len(self.tasks), self.hosts - 1)
        self.children = args.peers - len(self.tasks)
        self.late = self.children // 10
        # At most half the early children, so the bulk clients still fill the scheduler before the probe runs.
        self.probes = min(args.probe_peers, (self.children - self.late) // 2)
        self.probe_start = self.children - self.late - self.probes

    def source_host(self, task: int) -> int:
        return task % self.hosts

    def child(self, index: int) -> tuple[str, int]:
        """Return the task id and host index of child ``index``."""
        child_hosts = self.hosts - self.first_child_host
        return self.tasks[index % len(self.tasks)], self.first_child_host + index % child_hosts

    def early(self, client: int, clients: int) -> range:
        """Return the early children bulk client ``client`` of ``clients`` plays."""
        return range(client, self.probe_start, clients)

    def late_children(self, client: int, clients: int) -> range:
        """Return the late children bulk client ``client`` of ``clients`` plays."""
        first = self.children - self.late
        return range(first + (client - first) % clients, self.children, clients)

    def probe_children(self) -> range:
        """Return the children the probe process plays."""
        return range(self.probe_start, self.children - self.late)


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
