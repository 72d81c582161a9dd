"""Hosts: created and refreshed only by AnnounceHost (``docs/reference/scheduler.md#resource-model``,
``#announcehost``)."""

from __future__ import annotations

import time
from enum import IntEnum
from typing import TYPE_CHECKING

from dragonfly_api import common_pb2

if TYPE_CHECKING:
    from dragonfly.scheduler.resource.peer import Peer


class HostType(IntEnum):
    """Host types on the wire; 2 and 3 (strong and weak seeds before v2.3.4) are served as seeds."""

    NORMAL = 0
    SUPER = 1
    STRONG = 2
    WEAK = 3


#: Leading elements of an ``a|b|c`` location that count in the evaluator's location affinity.
LOCATION_ELEMENTS = 5

#: A location as the evaluator compares it: lower-cased whole, and its leading elements lower-cased.
LocationKey = tuple[str, tuple[str, ...]]


def location_key(location: str) -> LocationKey | None:
    """Return what the evaluator compares of a location (None when unset): computed once per announcement, not
    for every candidate of every decision."""
    if not location:
        return None
    return location.lower(), tuple(element.lower() for element in location.split("|")[:LOCATION_ELEMENTS])


class Host:
    """One announced host, with the upload bookkeeping the scheduler keeps for it."""

    __slots__ = (
        "announce_interval",
        "concurrent_upload_count",
        "concurrent_upload_limit",
        "concurrent_upload_piece_count",
        "created_at",
        "created_wall",
        "disable_shared",
        "download_port",
        "hostname",
        "id",
        "idc",
        "idc_key",
        "ip",
        "location",
        "location_key",
        "max_tx_bandwidth",
        "message",
        "peers",
        "port",
        "tx_bandwidth",
        "type",
        "updated_at",
        "upload_content_length",
        "upload_count",
        "upload_failed_count",
    )

    def __init__(self, message: common_pb2.Host, interval: float, upload_limit: int, now: float) -> None:
        self.id: str = message.id
        self.peers: dict[str, Peer] = {}
        self.created_at = now
        self.created_wall = time.time()
        # Estimates from the DAG's edges (``docs/reference/scheduler.md#peer-dag``); reset only with the host.
        self.tx_bandwidth = 0
        self.upload_content_length = 0
        self.concurrent_upload_piece_count = 0
        self.concurrent_upload_count = 0
        self.upload_count = 0
        self.upload_failed_count = 0
        self.update(message, interval, upload_limit, now)

    def update(self, message: common_pb2.Host, interval: float, upload_limit: int, now: float) -> None:
        """Overwrite ports, type, flags and figures with a new announcement."""
        self.message = message
        self.type = HostType(message.type) if message.type in HostType._value2member_map_ else HostType.NORMAL
        self.hostname = message.hostname
        self.ip = message.ip
        self.port = message.port
        self.download_port = message.download_port
        self.disable_shared = message.disable_shared
        network = message.network
        self.idc = network.idc
        self.location = network.location
        # Lower-cased once here; the evaluator compares them for every candidate of every decision.
        self.idc_key = network.idc.lower()
        self.location_key = location_key(network.location)
        self.max_tx_bandwidth = network.max_tx_bandwidth
        self.announce_interval = interval
        self.concurrent_upload_limit = upload_limit
        self.updated_at = now

    @property
    def is_seed(self) -> bool:
        """Return whether this host is a seed peer's."""
        return self.type != HostType.NORMAL

    @property
    def address(self) -> str:
        """Return the upload gRPC address ``ip:port``."""
        ip = self.ip
        return f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"

    def touch(self, now: float) -> None:
        """Record activity (serving a piece counts as being alive)."""
        self.updated_at = now
