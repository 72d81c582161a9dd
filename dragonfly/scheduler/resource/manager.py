"""The in-memory resource model: hosts, tasks and peers, and the operations that keep them consistent."""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from dragonfly.scheduler.resource import dag
from dragonfly.scheduler.resource import peer as peer_states
from dragonfly.scheduler.resource.host import Host
from dragonfly.scheduler.resource.peer import Peer
from dragonfly.scheduler.resource.task import Task

if TYPE_CHECKING:
    from collections.abc import Callable

    from dragonfly_api import common_pb2

    from dragonfly.scheduler.config import SchedulerConfig

log = logging.getLogger(__name__)


class ResourceManager:
    """Hosts, tasks and peers by id; every removal goes through here so the DAG and counters stay right."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.hosts: dict[str, Host] = {}
        self.tasks: dict[str, Task] = {}
        self.peers: dict[str, Peer] = {}
        self.peer_state_counts: Counter[str] = Counter()
        # Called with the seed hosts whenever that set changes (the seed-peer ring is rebuilt from it).
        self.on_seed_hosts_changed: Callable[[list[Host]], None] | None = None

    # hosts

    def seed_hosts(self) -> list[Host]:
        """Return every seed-peer host."""
        return [host for host in self.hosts.values() if host.is_seed]

    def announce_host(self, message: common_pb2.Host, interval: float, now: float) -> Host:
        """Create or refresh a host from AnnounceHost."""
        config = self.config
        limit = config.seed_peer_concurrent_upload_limit if message.type != 0 else config.peer_concurrent_upload_limit
        host = self.hosts.get(message.id)
        if host is None:
            host = self.hosts[message.id] = Host(message, interval, limit, now)
            seeds_changed = host.is_seed
            log.info("host announced", extra={"host_id": host.id, "ip": host.ip, "type": host.type.name})
        else:
            before = (host.is_seed, host.ip, host.port)
            host.update(message, interval, limit, now)
            seeds_changed = (host.is_seed, host.ip, host.port) != before and (before[0] or host.is_seed)
        if seeds_changed:
            self._seeds_changed()
        return host

    def delete_host(self, host: Host, now: float) -> list[Peer]:
        """Remove a host and its peers; return the children that lost a parent."""
        orphans: list[Peer] = []
        for peer in list(host.peers.values()):
            orphans.extend(self.delete_peer(peer, now))
        self.hosts.pop(host.id, None)
        log.info("host deleted", extra={"host_id": host.id})
        if host.is_seed:
            self._seeds_changed()
        return [child for child in orphans if not child.deleted]

    def _seeds_changed(self) -> None:
        if self.on_seed_hosts_changed is not None:
            self.on_seed_hosts_changed(self.seed_hosts())

    # tasks

    def load_or_create_task(self, task_id: str, download: common_pb2.Download, now: float) -> Task:
        """Return the task, creating it from the registrant's download; refresh URL, params and headers."""
        task = self.tasks.get(task_id)
        if task is None:
            task = self.tasks[task_id] = Task(
                task_id,
                download,
                back_to_source_limit=self.config.back_to_source_count,
                window_size=self.config.bad_parent.window_size,
                on_peer_state=self._count_peer_state,
                now=now,
            )
            return task
        task.url = download.url
        task.filtered_query_params = list(download.filtered_query_params)
        task.request_header = dict(download.request_header)
        if task.content_length < 0:
            task.set_sizes(download)
        return task

    def delete_task(self, task: Task) -> None:
        """Forget a task that has no peers."""
        if self.tasks.get(task.id) is task:
            del self.tasks[task.id]

    # peers

    def create_peer(self, peer_id: str, task: Task, host: Host, download: common_pb2.Download, now: float) -> Peer:
        """Create a Pending peer of ``task`` on ``host``."""
        peer = Peer(
            peer_id,
            task,
            host,
            download,
            window_size=self.config.bad_parent.window_size,
            piece_limit=self.config.max_piece_count,
            now=now,
        )
        self.peers[peer_id] = peer
        task.peers[peer_id] = peer
        host.peers[peer_id] = peer
        self.peer_state_counts[peer.state] += 1
        return peer

    def delete_peer(self, peer: Peer, now: float) -> list[Peer]:
        """Move a peer to Leave and remove it from every index and the DAG; return its former children."""
        if peer.deleted:
            return []
        if peer.state != peer_states.LEAVE:
            peer.fire(peer_states.EVENT_LEAVE, now)
        peer.deleted = True
        children = dag.delete_out_edges(peer)
        dag.delete_in_edges(peer)
        task = peer.task
        task.peers.pop(peer.id, None)
        task.back_to_source_peers.discard(peer.id)
        task.parent_pool.discard(peer)
        peer.host.peers.pop(peer.id, None)
        if self.peers.get(peer.id) is peer:
            del self.peers[peer.id]
        self.peer_state_counts[peer.state] -= 1
        task.notify()
        return children

    def _count_peer_state(self, old: str, new: str) -> None:
        counts = self.peer_state_counts
        counts[old] -= 1
        counts[new] += 1
