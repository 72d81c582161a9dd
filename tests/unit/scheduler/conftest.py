"""A small in-memory world of hosts, tasks and peers for the scheduler's unit tests."""

from __future__ import annotations

from typing import Any

import pytest
from dragonfly_api import common_pb2

from dragonfly.scheduler.config import SchedulerConfig, load
from dragonfly.scheduler.metrics import Metrics
from dragonfly.scheduler.resource import peer as peer_states
from dragonfly.scheduler.resource.manager import ResourceManager

TASK_ID = "a" * 64


class World:
    """Build hosts, a task and peers in given states without any gRPC."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.resource = ResourceManager(config)
        self.metrics = Metrics(self.resource)
        self.now = 1000.0

    def host(self, name: str, *, seed: bool = False, **network: Any):
        message = common_pb2.Host(
            id=f"10.0.0.1-{name}" + ("-seed" if seed else ""),
            type=1 if seed else 0,
            hostname=name,
            ip=f"10.0.{len(self.resource.hosts)}.1",
            port=4000,
            download_port=4000,
            network=common_pb2.Network(**network),
        )
        return self.resource.announce_host(message, 0.0, self.now)

    def message_of(self, host: Any, **network: Any) -> common_pb2.Host:
        """Return ``host``'s announcement with other network fields."""
        message = common_pb2.Host()
        message.CopyFrom(host.message)
        message.network.CopyFrom(common_pb2.Network(**network))
        return message

    def download(self, *, pieces: int = 8, **fields: Any) -> common_pb2.Download:
        download = common_pb2.Download(url="http://origin.test/f", **fields)
        download.actual_piece_length = 4096
        download.actual_content_length = 4096 * pieces
        download.actual_piece_count = pieces
        return download

    def peer(self, name: str, host=None, *, state: str = peer_states.RECEIVED_NORMAL, pieces=(), task_id=TASK_ID, **dl):
        host = host or self.host(f"host-{name}")
        download = self.download(**dl)
        task = self.resource.load_or_create_task(task_id, download, self.now)
        peer = self.resource.create_peer(name, task, host, download, self.now)
        path = {
            peer_states.PENDING: [],
            peer_states.RECEIVED_NORMAL: [peer_states.REGISTER_NORMAL],
            peer_states.RECEIVED_EMPTY: [peer_states.REGISTER_EMPTY],
            peer_states.RUNNING: [peer_states.REGISTER_NORMAL, peer_states.DOWNLOAD],
            peer_states.BACK_TO_SOURCE: [peer_states.REGISTER_NORMAL, peer_states.DOWNLOAD_BACK_TO_SOURCE],
            peer_states.SUCCEEDED: [peer_states.REGISTER_NORMAL, peer_states.DOWNLOAD, peer_states.DOWNLOAD_SUCCEEDED],
            peer_states.FAILED: [peer_states.REGISTER_NORMAL, peer_states.DOWNLOAD_FAILED],
            peer_states.LEAVE: [peer_states.EVENT_LEAVE],
        }[state]
        for event in path:
            peer.fire(event, self.now)
        for number in pieces:
            peer.pieces.add(number)
        task.refresh_pool(peer)
        return peer


@pytest.fixture
def make_world():
    def make(**scheduler: Any) -> World:
        return World(load(None, overrides={"scheduler": scheduler}).scheduler)

    return make


@pytest.fixture
def world(make_world) -> World:
    return make_world()
