"""The per-task peer DAG: parent → child edges that never form a cycle (``docs/reference/scheduler.md#peer-dag``).

Edges live on the peers (``peer.parents`` / ``peer.children``, keyed by peer id). Adding an edge charges the
parent's host with the child's expected upload load; removing it releases exactly what was charged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from dragonfly.scheduler.resource.peer import Peer


class CycleError(ValueError):
    """The edge would close a cycle, join a peer to itself, or already exists."""


def descendants(peer: Peer) -> set[str]:
    """Return the ids of every peer reachable from ``peer`` through child edges (itself excluded)."""
    seen: set[str] = set()
    stack = list(peer.children.values())
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen.add(node.id)
        stack.extend(node.children.values())
    return seen


def check_edge(parent: Peer, child: Peer, child_descendants: set[str] | None = None) -> None:
    """Raise CycleError unless ``parent → child`` may be added."""
    if parent is child:
        raise CycleError(f"peer {child.id} cannot be its own parent")
    if parent.id in child.parents:
        raise CycleError(f"edge {parent.id} -> {child.id} already exists")
    if child_descendants is None:
        child_descendants = descendants(child)
    if parent.id in child_descendants:
        raise CycleError(f"edge {parent.id} -> {child.id} would form a cycle")


def add_edge(parent: Peer, child: Peer) -> None:
    """Add ``parent → child`` (after check_edge) and charge the parent's host."""
    check_edge(parent, child)
    _link(parent, child)


def add_edges(parents: Iterable[Peer], child: Peer) -> list[Peer]:
    """Add every edge that check_edge allows, computing the child's descendants once; return the added parents."""
    below = descendants(child)
    added = []
    for parent in parents:
        try:
            check_edge(parent, child, below)
        except CycleError:
            continue
        _link(parent, child)
        added.append(parent)
    return added


def _link(parent: Peer, child: Peer) -> None:
    parent.children[child.id] = child
    child.parents[parent.id] = parent
    bandwidth, pieces, length = child.edge_load()
    host = parent.host
    host.upload_count += 1
    host.concurrent_upload_count += 1
    host.tx_bandwidth += bandwidth
    host.concurrent_upload_piece_count += pieces
    host.upload_content_length += length


def _unlink(parent: Peer, child: Peer) -> None:
    del parent.children[child.id]
    del child.parents[parent.id]
    bandwidth, pieces, length = child.edge_load()
    host = parent.host
    host.concurrent_upload_count = max(host.concurrent_upload_count - 1, 0)
    host.tx_bandwidth = max(host.tx_bandwidth - bandwidth, 0)
    host.concurrent_upload_piece_count = max(host.concurrent_upload_piece_count - pieces, 0)
    host.upload_content_length = max(host.upload_content_length - length, 0)


def delete_in_edges(child: Peer) -> None:
    """Remove every edge into ``child``."""
    for parent in list(child.parents.values()):
        _unlink(parent, child)


def delete_out_edges(parent: Peer) -> list[Peer]:
    """Remove every edge out of ``parent``; return the children that lost it."""
    children = list(parent.children.values())
    for child in children:
        _unlink(parent, child)
    return children
