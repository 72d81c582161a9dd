"""One AnnouncePeer stream: the messages of ``docs/reference/scheduler.md#announcepeer-on-the-scheduler`` in any legal
order, precise errors for the rest.

Protocol decisions where Dragonfly is silent or lax (clients following the reference never notice):

- The first message must be RegisterPeerRequest (FAILED_PRECONDITION otherwise); a stream carries one peer, and
  every later message must name the same host, task and peer ids (INVALID_ARGUMENT otherwise). Registering a
  peer id that exists already is ALREADY_EXISTS; a second register on the stream is FAILED_PRECONDITION.
- A request with no known oneof set is FAILED_PRECONDITION (as Dragonfly). Ids longer than MAX_ID_LENGTH,
  an empty URL or inconsistent sizes are INVALID_ARGUMENT; an unknown host is NOT_FOUND; a download matching
  the download block list is PERMISSION_DENIED.
- A register without ``actual_content_length`` leaves the task's length unknown and schedules it as NORMAL;
  Dragonfly would take 0 and answer EmptyTaskResponse, which would hand the client an empty file.
- Piece messages never end the stream; their errors are logged (as Dragonfly).
- A stream that ends without a terminal message (finished / failed) moves its peer to Failed, releasing its
  back-to-source slot; Dragonfly keeps such a peer until GC.
- The scheduler never sends a response the client did not ask for: clients count responses
  (``max_schedule_count``), so children of a removed parent get their new parents when they reschedule.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import grpc
from dragonfly_api import common_pb2, scheduler_pb2

from dragonfly.common.digest import is_valid_digest
from dragonfly.scheduler.resource import peer as peer_states
from dragonfly.scheduler.resource import task as task_states
from dragonfly.scheduler.resource.fsm import InvalidTransition
from dragonfly.scheduler.scheduling import scheduling
from dragonfly.scheduler.scheduling.scheduling import ScheduleError
from dragonfly.scheduler.service import convert

if TYPE_CHECKING:
    from dragonfly.scheduler.resource.peer import Peer
    from dragonfly.scheduler.server import SchedulerContext

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 1024
MAX_URL_LENGTH = 64 * 1024

_REGISTER = "register_peer_request"
_PIECE_FINISHED = "download_piece_finished_request"
_PIECE_BACK_TO_SOURCE_FINISHED = "download_piece_back_to_source_finished_request"
_TRAFFIC_NAMES = {value: name for name, value in common_pb2.TrafficType.items()}


class StreamError(Exception):
    """End the stream with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_id(name: str, value: str) -> None:
    if not value:
        raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"{name} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise StreamError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{name} is {len(value)} characters long, the limit is {MAX_ID_LENGTH}"
        )


class PeerStream:
    """Handle the requests of one AnnouncePeer stream; ``done`` turns true after a terminal message."""

    __slots__ = ("_ctx", "_metrics", "done", "peer")

    def __init__(self, ctx: SchedulerContext) -> None:
        self._ctx = ctx
        self._metrics = ctx.metrics
        self.peer: Peer | None = None
        self.done = False

    async def handle(self, request: scheduler_pb2.AnnouncePeerRequest) -> scheduler_pb2.AnnouncePeerResponse | None:
        """Apply one request; return the response to send, if any; raise StreamError to end the stream."""
        kind = request.WhichOneof("request")
        if kind is None:
            raise StreamError(
                grpc.StatusCode.FAILED_PRECONDITION, "AnnouncePeerRequest carries no known request (unknown oneof)"
            )
        self._metrics.count_request(kind)
        peer = self.peer
        if peer is None:
            if kind != _REGISTER:
                raise StreamError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"the first message must be RegisterPeerRequest, got {kind}"
                )
            return await self._register(request)
        if request.peer_id != peer.id or request.task_id != peer.task.id or request.host_id != peer.host.id:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"message for host {request.host_id[:MAX_ID_LENGTH]!r}, task {request.task_id[:MAX_ID_LENGTH]!r}, "
                f"peer {request.peer_id[:MAX_ID_LENGTH]!r} on the stream of peer {peer.id}",
            )
        if kind == _PIECE_FINISHED:
            self._piece_finished(peer, request.download_piece_finished_request.piece, back_to_source=False)
            return None
        if kind == _PIECE_BACK_TO_SOURCE_FINISHED:
            self._piece_finished(
                peer, request.download_piece_back_to_source_finished_request.piece, back_to_source=True
            )
            return None
        if kind == _REGISTER:
            raise StreamError(
                grpc.StatusCode.FAILED_PRECONDITION, f"peer {peer.id} is already registered on this stream"
            )
        if peer.deleted:
            raise StreamError(grpc.StatusCode.NOT_FOUND, f"peer {peer.id} not found (it was deleted)")
        handler = getattr(self, f"_on_{kind}")
        response: scheduler_pb2.AnnouncePeerResponse | None = await handler(peer, getattr(request, kind))
        return response

    def close(self) -> None:
        """Release the peer when the stream ends; a peer left mid-download becomes Failed.

        This also covers every error that ends the stream, after which Dragonfly marks the peer Failed.
        """
        peer = self.peer
        if peer is None:
            return
        peer.stream_open = False
        if (
            self.done
            or peer.deleted
            or not peer.can(peer_states.DOWNLOAD_FAILED)
            or peer.state == peer_states.SUCCEEDED
        ):
            return
        peer.fire(peer_states.DOWNLOAD_FAILED, time.monotonic())
        log.info("stream closed before the download ended", extra={"task_id": peer.task.id, "peer_id": peer.id})

    # registration (``docs/reference/scheduler.md#registration``)

    async def _register(self, request: scheduler_pb2.AnnouncePeerRequest) -> scheduler_pb2.AnnouncePeerResponse:
        ctx = self._ctx
        _check_id("host_id", request.host_id)
        _check_id("task_id", request.task_id)
        _check_id("peer_id", request.peer_id)
        download = request.register_peer_request.download
        self._check_download(download)
        resource = ctx.resource
        host = resource.hosts.get(request.host_id)
        if host is None:
            raise StreamError(
                grpc.StatusCode.NOT_FOUND, f"host {request.host_id} not found: announce the host before its peers"
            )
        if request.peer_id in resource.peers:
            raise StreamError(grpc.StatusCode.ALREADY_EXISTS, f"peer {request.peer_id} is already registered")
        if ctx.config.block_list.download.matches(download.url, download.application, download.tag):
            raise StreamError(
                grpc.StatusCode.PERMISSION_DENIED, f"task {request.task_id} is blocked by the scheduler's block list"
            )
        now = time.monotonic()
        started = time.perf_counter()
        task = resource.load_or_create_task(request.task_id, download, now)
        peer = resource.create_peer(request.peer_id, task, host, download, now)
        peer.stream_open = True
        self.peer = peer
        log.debug("peer registering", extra={"task_id": task.id, "peer_id": peer.id, "host_id": host.id})

        if download.metadata_only:
            if task.state != task_states.RUNNING:
                task.fire(task_states.DOWNLOAD, now)
            peer.fire(peer_states.REGISTER_NORMAL, now)
            return self._respond(scheduling.Decision(scheduling.METADATA_ONLY), started)

        self._decide_source(peer, download, now)
        if task.state != task_states.RUNNING:
            task.fire(task_states.DOWNLOAD, now)
        else:
            task.touch(now)
        if task.size_scope() == common_pb2.EMPTY:
            peer.fire(peer_states.REGISTER_EMPTY, now)
            return self._respond(scheduling.Decision(scheduling.EMPTY), started)
        peer.fire(peer_states.REGISTER_NORMAL, now)
        return self._respond(await self._schedule(peer), started)

    def _check_download(self, download: common_pb2.Download) -> None:
        if not download.url:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "download.url is empty")
        if len(download.url) > MAX_URL_LENGTH:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"download.url is longer than {MAX_URL_LENGTH}")
        if download.type != common_pb2.STANDARD:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"task type {common_pb2.TaskType.Name(download.type)} is not served by AnnouncePeer",
            )
        length = download.actual_content_length if download.HasField("actual_content_length") else None
        piece_length = download.actual_piece_length if download.HasField("actual_piece_length") else None
        count = download.actual_piece_count if download.HasField("actual_piece_count") else None
        if length and not piece_length:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "download.actual_piece_length must be > 0 when the content is not empty",
            )
        if length is not None and piece_length and count is not None and count != -(-length // piece_length):
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"download.actual_piece_count {count} does not match content length {length} "
                f"and piece length {piece_length}",
            )
        limit = self._ctx.config.scheduler.max_piece_count
        pieces = count if count is not None else (-(-length // piece_length) if length and piece_length else 0)
        if pieces > limit:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT, f"the task has {pieces} pieces, more than this scheduler's {limit}"
            )

    def _decide_source(self, peer: Peer, download: common_pb2.Download, now: float) -> None:
        """Trigger a seed peer, or mark the peer for the origin, when nobody has the task
        (``docs/reference/scheduler.md#registration`` step 5)."""
        if download.need_back_to_source:
            peer.need_back_to_source = True
            peer.asked_for_source = True
            return
        task = peer.task
        nobody_has_it = task.state in (task_states.PENDING, task_states.FAILED, task_states.LEAVE) or (
            task.state == task_states.SUCCEEDED and not task.has_available_peer(peer.host.id, peer.block_parents)
        )
        seeds = self._ctx.seeds
        if task.seed_trigger_active:
            return
        if not nobody_has_it:
            if (
                not task.seed_has_pieces
                and not peer.host.is_seed
                and self._ctx.config.scheduler.piece_digest_sources == "seedPeers"
                and not seeds.recently_failed(task, now)
            ):
                # Normal peers hold the task, but they vouch for nothing: a seed peer's digests let children use
                # them (docs/security.md).
                seed = seeds.select(task.id)
                if seed is not None and seed is not peer.host:
                    seeds.trigger(task, download, seed)
            return
        if peer.host.is_seed or not seeds.available():
            peer.need_back_to_source = True
            return
        priority: int = download.priority
        if not priority and download.application in self._ctx.applications:
            # No priority asked for: the manager's application priority (Dragonfly's CalculatePriority).
            priority = self._ctx.applications[download.application].priority_for(download.url)
        if priority == common_pb2.LEVEL1:
            raise StreamError(
                grpc.StatusCode.FAILED_PRECONDITION, f"download of task {task.id} is forbidden for priority LEVEL1"
            )
        if priority == common_pb2.LEVEL2:
            raise StreamError(grpc.StatusCode.NOT_FOUND, f"no candidate peers for task {task.id} (priority LEVEL2)")
        if priority == common_pb2.LEVEL3 or seeds.recently_failed(task, now):
            peer.need_back_to_source = True
            return
        seed = seeds.select(task.id)
        if seed is None or seed is peer.host:
            peer.need_back_to_source = True
            return
        seeds.trigger(task, download, seed)

    # scheduling

    async def _schedule(self, peer: Peer) -> scheduling.Decision:
        try:
            return await self._ctx.scheduling.schedule(peer)
        except ScheduleError as exc:
            self._metrics.decision["error"].inc()
            raise StreamError(exc.code, exc.message) from None

    def _respond(self, decision: scheduling.Decision, started: float) -> scheduler_pb2.AnnouncePeerResponse:
        metrics = self._metrics
        metrics.schedule_duration.observe(time.perf_counter() - started)
        metrics.decision[decision.kind].inc()
        peer = self.peer
        assert peer is not None
        kind = decision.kind
        if kind == scheduling.NORMAL:
            peer.handed_parents.update(parent.id for parent in decision.parents)
            task = convert.task_message(peer.task)
            candidates = [convert.peer_message(parent, task) for parent in decision.parents]
            for parent, message in zip(decision.parents, candidates, strict=True):
                if _holds_every_piece_unannounced(parent):
                    # The child then treats it as finished: no SyncPieces stream to learn what it already knows.
                    convert.add_held_pieces(message, parent)
            # The trusted piece digests travel once per response, in the first candidate's task (docs/security.md).
            if candidates:
                convert.add_trusted_pieces(candidates[0].task, peer.task)
            response = scheduler_pb2.AnnouncePeerResponse(
                normal_task_response=scheduler_pb2.NormalTaskResponse(candidate_parents=candidates)
            )
            log.debug(
                "parents scheduled",
                extra={
                    "task_id": peer.task.id,
                    "peer_id": peer.id,
                    "parents": ",".join(parent.id for parent in decision.parents),
                },
            )
            return response
        log.info("peer scheduled", extra={"task_id": peer.task.id, "peer_id": peer.id, "decision": kind})
        if kind == scheduling.BACK_TO_SOURCE:
            return scheduler_pb2.AnnouncePeerResponse(
                need_back_to_source_response=scheduler_pb2.NeedBackToSourceResponse(description=decision.description)
            )
        if kind == scheduling.EMPTY:
            return scheduler_pb2.AnnouncePeerResponse(empty_task_response=scheduler_pb2.EmptyTaskResponse())
        return scheduler_pb2.AnnouncePeerResponse(metadata_only_response=scheduler_pb2.MetadataOnlyResponse())

    # peer messages

    def _fire(self, peer: Peer, event: str) -> None:
        try:
            peer.fire(event, time.monotonic())
        except InvalidTransition as exc:
            raise StreamError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None

    async def _on_download_peer_started_request(self, peer: Peer, _message: object) -> None:
        if peer.state != peer_states.RUNNING:
            self._fire(peer, peer_states.DOWNLOAD)

    async def _on_download_peer_back_to_source_started_request(self, peer: Peer, _message: object) -> None:
        if peer.state != peer_states.BACK_TO_SOURCE:
            self._fire(peer, peer_states.DOWNLOAD_BACK_TO_SOURCE)

    async def _on_reschedule_peer_request(
        self, peer: Peer, message: scheduler_pb2.ReschedulePeerRequest
    ) -> scheduler_pb2.AnnouncePeerResponse:
        started = time.perf_counter()
        for candidate in message.candidate_parents:
            if candidate.id and len(candidate.id) <= MAX_ID_LENGTH:
                peer.block_parents.add(candidate.id)
        log.debug(
            "peer rescheduling",
            extra={"task_id": peer.task.id, "peer_id": peer.id, "description": message.description or "-"},
        )
        return self._respond(await self._schedule(peer), started)

    async def _on_download_peer_finished_request(self, peer: Peer, _message: object) -> None:
        self._finish(peer)

    async def _on_download_peer_back_to_source_finished_request(self, peer: Peer, _message: object) -> None:
        self._finish(peer)
        task = peer.task
        if peer.range is None and task.state != task_states.SUCCEEDED:
            task.fire(task_states.DOWNLOAD_SUCCEEDED, time.monotonic())

    def _finish(self, peer: Peer) -> None:
        now = time.monotonic()
        peer.cost = now - peer.created_at
        self._fire(peer, peer_states.DOWNLOAD_SUCCEEDED)
        self.done = True
        log.info("peer succeeded", extra={"task_id": peer.task.id, "peer_id": peer.id, "cost": f"{peer.cost:.3f}s"})

    async def _on_download_peer_failed_request(
        self, peer: Peer, message: scheduler_pb2.DownloadPeerFailedRequest
    ) -> None:
        self._fire(peer, peer_states.DOWNLOAD_FAILED)
        self.done = True
        log.info("peer failed", extra={"task_id": peer.task.id, "peer_id": peer.id, "description": message.description})

    async def _on_download_peer_back_to_source_failed_request(
        self, peer: Peer, message: scheduler_pb2.DownloadPeerBackToSourceFailedRequest
    ) -> None:
        self._fire(peer, peer_states.DOWNLOAD_FAILED)
        self.done = True
        task = peer.task
        task.reset_sizes()
        if task.state == task_states.RUNNING:
            task.fire(task_states.DOWNLOAD_FAILED, time.monotonic())
        log.warning(
            "peer failed back-to-source",
            extra={"task_id": task.id, "peer_id": peer.id, "description": message.description},
        )

    async def _on_download_piece_failed_request(
        self, peer: Peer, message: scheduler_pb2.DownloadPieceFailedRequest
    ) -> None:
        now = time.monotonic()
        peer.touch(now)
        peer.task.touch(now)
        parent_id = message.parent_id
        if not parent_id or len(parent_id) > MAX_ID_LENGTH:
            log.warning("piece failure names no valid parent", extra={"task_id": peer.task.id, "peer_id": peer.id})
            return
        peer.block_parents.add(parent_id)
        parent = self._ctx.resource.peers.get(parent_id)
        if parent is None or parent.task is not peer.task:
            return
        parent.host.upload_failed_count += 1
        self._ctx.abnormal.piece_failed(parent, temporary=message.temporary, now=now)

    async def _on_download_piece_back_to_source_failed_request(
        self, peer: Peer, message: scheduler_pb2.DownloadPieceBackToSourceFailedRequest
    ) -> None:
        now = time.monotonic()
        peer.touch(now)
        peer.task.touch(now)
        which = message.WhichOneof("response")
        detail = getattr(message, which).message if which else ""
        log.warning(
            "piece back-to-source failed",
            extra={"task_id": peer.task.id, "peer_id": peer.id, "piece": message.piece_number, "error": detail},
        )

    def _piece_finished(self, peer: Peer, piece: common_pb2.Piece, *, back_to_source: bool) -> None:
        """Record a finished piece the peer can prove it may have; O(1) apart from a first piece.

        Claims are checked (docs/security.md): a piece from a parent must name a parent this scheduler handed out
        that holds the piece (or a piece the origin's digest is known for); a digest that contradicts the trusted
        one is refused. Only a digest authority's back-to-source digests become trusted digests.
        """
        if peer.deleted or peer.state in (peer_states.FAILED, peer_states.LEAVE):
            return
        number = piece.number
        task = peer.task
        digest = piece.digest
        if digest and not is_valid_digest(digest):
            self._reject_claim(peer, number, "malformed digest")
            return
        trusted = task.pieces.get(number)
        if trusted is not None and digest and not _digests_agree(trusted.digest, digest):
            # The reporter holds other bytes than the origin's: never hand it out for this task.
            self._reject_claim(peer, number, "digest differs from the trusted one")
            self._ctx.abnormal.digest_mismatch(peer, number, trusted.digest, digest, time.monotonic())
            return
        parent: Peer | None = None
        if not back_to_source:
            parent = self._claimed_parent(peer, piece)
            if parent is None:
                return
        try:
            added = peer.pieces.add(number)
        except ValueError as exc:
            self._reject_claim(peer, number, str(exc))
            return
        now = time.monotonic()
        cost = convert.seconds(piece.cost)
        peer.cost_window.add(cost)
        peer.piece_updated_at = peer.updated_at = now
        task.updated_at = now
        self._metrics.count_piece(_TRAFFIC_NAMES.get(piece.traffic_type, "UNKNOWN"), piece.length)
        if added:
            length = max(piece.length, 0)
            self._ctx.traffic.add(length, from_source=back_to_source)
            if back_to_source:
                peer.bytes_from_source += length
            elif parent is not None:
                peer.bytes_from_parents[parent.id] = peer.bytes_from_parents.get(parent.id, 0) + length
                peer.pieces_from_parents[parent.id] = peer.pieces_from_parents.get(parent.id, 0) + 1
        if back_to_source:
            if trusted is None and digest and self._vouches(peer):
                # cost and created_at too: Dragonfly's rules require them in every Piece, and a client echoes
                # its candidate parents (with these pieces) back in ReschedulePeerRequest.
                stored = common_pb2.Piece(
                    number=number,
                    offset=piece.offset,
                    length=piece.length,
                    digest=digest,
                    cost=piece.cost,
                    created_at=piece.created_at,
                )
                task.pieces[number] = stored
        elif parent is not None:
            self._piece_served(parent, cost, now)
        if added and peer.pieces.count == 1:
            task.refresh_pool(peer)
            task.notify()

    def _vouches(self, peer: Peer) -> bool:
        """Return whether ``peer``'s back-to-source digests are trusted digests of the task."""
        if peer.host.is_seed:
            return True
        return (
            self._ctx.config.scheduler.piece_digest_sources == "backToSourcePeers"
            and not peer.asked_for_source
            and peer.id in peer.task.back_to_source_peers
        )

    def _claimed_parent(self, peer: Peer, piece: common_pb2.Piece) -> Peer | None:
        """Return the parent a piece report names if the claim holds, else None (and count the rejection)."""
        parent_id = piece.parent_id
        if not parent_id or parent_id not in peer.handed_parents:
            self._reject_claim(peer, piece.number, "names no parent handed to this peer")
            return None
        parent = self._ctx.resource.peers.get(parent_id)
        if parent is not None and parent.task is not peer.task:
            parent = None
        if (parent is None or piece.number not in parent.pieces) and piece.number not in peer.task.pieces:
            # A piece the parent never reported and whose origin digest nobody trusted has no provenance.
            self._reject_claim(peer, piece.number, "the named parent does not hold the piece")
            return None
        return parent

    def _reject_claim(self, peer: Peer, number: int, reason: str) -> None:
        self._metrics.rejected_piece_claims.labels(reason).inc()
        log.debug(
            "piece claim rejected",
            extra={"task_id": peer.task.id, "peer_id": peer.id, "piece": number, "reason": reason},
        )

    def _piece_served(self, parent: Peer, cost: float, now: float) -> None:
        parent.updated_at = now
        parent.host.updated_at = now
        self._ctx.abnormal.piece_served(parent, cost, now)


def _holds_every_piece_unannounced(peer: Peer) -> bool:
    """Return whether ``peer`` holds the only piece of its task but has not reported its download finished.

    Typically a seed peer of a one-piece task between its piece report and its finished message: a candidate
    parent listed with all its pieces is as good as finished to the child. A Succeeded parent says so by its state.
    Only for one-piece tasks: a peer that reports every piece of a large task and never finishes (stuck, or lying)
    would otherwise have its whole piece list built into every answer naming it, and an honest one is in that state
    only for a moment.
    """
    return peer.task.piece_count == 1 and peer.state != peer_states.SUCCEEDED and peer.pieces.count == 1


def _digests_agree(trusted: str, reported: str) -> bool:
    """Return False only when two digests of the same algorithm differ (a crc32 says nothing about a blake3)."""
    if trusted.partition(":")[0] != reported.partition(":")[0]:
        return True
    return trusted == reported
