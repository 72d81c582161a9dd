"""Score candidate parents for a child; every sub-score is in [0, 1] (``docs/reference/scheduler.md#evaluator``).

Total = load·LoadQuality + piece·Pieces + idc·IDC + location·Location + hostType·HostType (weights from config).

- LoadQuality is Dragonfly's load-aware score of the parent's host (peak bandwidth 0.5, bandwidth duration 0.3,
  concurrency 0.2) computed from the announced ``max_tx_bandwidth`` and the scheduler's edge-based estimates.
  Hosts that announce no bandwidth would all score 0 there, so they get the share of free upload slots instead.
- Pieces (from Dragonfly's legacy scorer): the share of the pieces the child still needs that the parent holds.
- IDC and Location as Dragonfly. HostType: a seed still fetching the task (ReceivedNormal, Running or
  BackToSource) 1, a normal host 0.5, any other seed 0; Dragonfly gives a BackToSource seed 0, which would rank
  the only holder of a new task last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dragonfly.scheduler.resource import peer as peer_states
from dragonfly.scheduler.resource.host import LOCATION_ELEMENTS, LocationKey, location_key

if TYPE_CHECKING:
    from dragonfly.scheduler.config import EvaluatorConfig
    from dragonfly.scheduler.resource.host import Host
    from dragonfly.scheduler.resource.peer import Peer

# Dragonfly's constants: a 60 s bandwidth window and 16 MiB per concurrent piece.
BANDWIDTH_WINDOW_SECONDS = 60.0
PIECE_BITS = 16 * 1024 * 1024 * 8
MAX_LOCATION_ELEMENTS = LOCATION_ELEMENTS
_SEED_FETCHING_STATES = frozenset((peer_states.RECEIVED_NORMAL, peer_states.RUNNING, peer_states.BACK_TO_SOURCE))


def load_quality(host: Host) -> float:
    """Return how much upload capacity ``host`` has left."""
    max_tx = host.max_tx_bandwidth
    if max_tx <= 0:
        limit = host.concurrent_upload_limit
        return max(1.0 - host.concurrent_upload_count / limit, 0.0) if limit > 0 else 0.0
    peak = 0.0 if host.tx_bandwidth >= max_tx else 1.0 - host.tx_bandwidth / max_tx
    if host.upload_content_length <= 0:
        duration = 1.0
    else:
        ratio = host.upload_content_length * 8 / max_tx / BANDWIDTH_WINDOW_SECONDS
        duration = 0.0 if ratio >= 1 else 1.0 - ratio
    need = max_tx / PIECE_BITS
    pieces = host.concurrent_upload_piece_count
    if need <= 1:
        concurrency = 0.0
    elif pieces == 0 or pieces <= need:
        concurrency = 1.0
    else:
        concurrency = need / pieces
    return 0.5 * peak + 0.3 * duration + 0.2 * concurrency


def piece_score(parent: Peer, child: Peer, total: int) -> float:
    """Return the share of the child's missing pieces that the parent can give it."""
    succeeded = parent.state == peer_states.SUCCEEDED
    if total > 0:
        missing = total - child.pieces.count
        if missing <= 0:
            return 0.0
        if succeeded:
            return 1.0
        needed = parent.pieces.count if child.pieces.count == 0 else child.pieces.needed_from(parent.pieces)
        return min(needed / missing, 1.0)
    if succeeded:
        return 1.0
    return 1.0 if child.pieces.needed_from(parent.pieces) > 0 else 0.0


def idc_affinity(parent: str, child: str) -> float:
    """Return 1 when both IDCs are set and equal (case-insensitive)."""
    return 1.0 if parent and child and parent.lower() == child.lower() else 0.0


def location_affinity(parent: str, child: str) -> float:
    """Return the share of equal leading elements of ``a|b|c`` locations, 1 on an exact match (case-insensitive)."""
    return location_key_affinity(location_key(parent), location_key(child))


def location_key_affinity(parent: LocationKey | None, child: LocationKey | None) -> float:
    """``location_affinity`` of two hosts' precomputed ``location_key``s."""
    if parent is None or child is None:
        return 0.0
    if parent[0] == child[0]:
        return 1.0
    equal = 0
    for a, b in zip(parent[1], child[1], strict=False):
        if a != b:
            break
        equal += 1
    return equal / MAX_LOCATION_ELEMENTS


def host_type_score(parent: Peer) -> float:
    """Return the host-type preference (see the module docstring)."""
    if not parent.host.is_seed:
        return 0.5
    return 1.0 if parent.state in _SEED_FETCHING_STATES else 0.0


class Evaluator:
    """The weighted score of a candidate parent."""

    __slots__ = ("_weights",)

    def __init__(self, config: EvaluatorConfig) -> None:
        self._weights = (
            config.load_weight,
            config.piece_weight,
            config.idc_weight,
            config.location_weight,
            config.host_type_weight,
        )

    def score(self, parent: Peer, child: Peer) -> float:
        """Return the score of ``parent`` for ``child``; higher is better."""
        load, piece, idc, location, host_type = self._weights
        parent_host, child_host = parent.host, child.host
        return (
            load * load_quality(parent_host)
            + piece * piece_score(parent, child, child.task.piece_count)
            # The hosts' lower-cased IDCs and locations: idc_affinity and location_affinity without lower().
            + idc * (1.0 if parent_host.idc_key and parent_host.idc_key == child_host.idc_key else 0.0)
            + location * location_key_affinity(parent_host.location_key, child_host.location_key)
            + host_type * host_type_score(parent)
        )

    def sort(self, parents: list[Peer], child: Peer) -> list[Peer]:
        """Return ``parents`` best first; ties keep the given (random) order."""
        scored = [(self.score(parent, child), index, parent) for index, parent in enumerate(parents)]
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [parent for _, _, parent in scored]
