"""Conversions shared by both gRPC services: task messages, download events, errors to status codes."""

from __future__ import annotations

import json
import logging

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, errordetails_pb2
from google.protobuf import timestamp_pb2

from dragonfly.common.byte_range import RangeNotSatisfiable
from dragonfly.common.errors import DigestMismatch, InvalidDigest
from dragonfly.common.grpc_metadata import INSECURE_ORIGIN_METADATA, OUTPUT_COPY_METADATA
from dragonfly.common.ids import InvalidURL
from dragonfly.common.netguard import find_refusal
from dragonfly.common.piece import piece_count
from dragonfly.common.redact import redact_url
from dragonfly.daemon.download.task_download import PieceDone, TaskStarted, piece_message
from dragonfly.daemon.errors import (
    BackendError,
    DownloadFailed,
    DownloadTimeout,
    InvalidTaskId,
    NoSpace,
    OutputError,
    TaskNotFound,
)
from dragonfly.daemon.storage import TaskRecord

log = logging.getLogger(__name__)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


def task_state(task: TaskRecord, *, active: bool) -> str:
    """Return the task state name the scheduler uses."""
    if task.finished_at is not None:
        return "Succeeded"
    if active:
        return "Running"
    return "Failed" if task.failed_at is not None else "Pending"


def task_message(task: TaskRecord, *, active: bool) -> common_pb2.Task:
    """Return the common.v2.Task of a stored task, with its finished pieces."""
    return common_pb2.Task(
        id=task.id,
        type=common_pb2.STANDARD,
        url=redact_url(task.url),
        content_length=task.content_length,
        piece_count=piece_count(task.content_length, task.piece_length),
        pieces=[piece_message(task.pieces[n]) for n in sorted(task.pieces)],
        state=task_state(task, active=active),
        peer_count=1,
        has_available_peer=task.finished_at is not None,
        created_at=_timestamp(task.created_at),
        updated_at=_timestamp(task.updated_at),
    )


def local_task_message(task: TaskRecord) -> dfdaemon_pb2.StatLocalTaskResponse:
    message = dfdaemon_pb2.StatLocalTaskResponse(
        task_id=task.id,
        piece_length=task.piece_length,
        content_length=task.content_length,
        response_header=task.response_header,
        created_at=_timestamp(task.created_at),
        updated_at=_timestamp(task.updated_at),
    )
    if task.finished_at is not None:
        message.finished_at.CopyFrom(_timestamp(task.finished_at))
    if task.failed_at is not None:
        message.failed_at.CopyFrom(_timestamp(task.failed_at))
    return message


def download_response(event: TaskStarted | PieceDone, *, host_id: str) -> dfdaemon_pb2.DownloadTaskResponse:
    """Return the DownloadTaskResponse of one download event."""
    if isinstance(event, TaskStarted):
        started = dfdaemon_pb2.DownloadTaskStartedResponse(
            content_length=event.content_length, response_header=event.response_header
        )
        if event.range is not None:
            started.range.start, started.range.length = event.range.start, event.range.length
        return dfdaemon_pb2.DownloadTaskResponse(
            host_id=host_id,
            task_id=event.task_id,
            peer_id=event.peer_id,
            download_task_started_response=started,
        )
    return dfdaemon_pb2.DownloadTaskResponse(
        host_id=host_id,
        download_piece_finished_response=dfdaemon_pb2.DownloadPieceFinishedResponse(
            piece=piece_message(event.piece, event.traffic_type)
        ),
    )


#: The trailer that carries gRPC's ``Status.details`` bytes.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def backend_details(exc: BaseException) -> errordetails_pb2.Backend | None:
    """Return the origin failure behind ``exc`` (itself or a cause) as ``errordetails.v2.Backend``, else None."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, BackendError):
        seen = seen.__cause__
    if seen is None:
        return None
    backend = errordetails_pb2.Backend(message=seen.message, header=seen.header)
    if seen.status_code is not None:
        backend.status_code = seen.status_code
    return backend


def encode_backend_details(backend: errordetails_pb2.Backend) -> bytes:
    """Return ``backend`` as the JSON Dragonfly puts in ``Status.details``: every field, null for no status."""
    return json.dumps(
        {
            "message": backend.message,
            "header": dict(backend.header),
            "status_code": backend.status_code if backend.HasField("status_code") else None,
        }
    ).encode()


def error_trailers(exc: BaseException) -> tuple[tuple[str, bytes], ...]:
    """Return the trailing metadata of a failed call: Dragonfly's backend details when the origin failed."""
    backend = backend_details(exc)
    return () if backend is None else ((STATUS_DETAILS_KEY, encode_backend_details(backend)),)


def wants_insecure_origin(context: grpc.aio.ServicerContext, who: str) -> bool:
    """Tell whether the caller asked to skip the origin's certificate verification (logged as a warning).

    Only two callers can: a local user of the local API, and (on the upload API, where DownloadTask needs the
    scheduler or manager role) the scheduler for a preheat the manager asked for with ``insecure_skip_verify``.
    """
    for key, value in context.invocation_metadata() or ():
        if key == INSECURE_ORIGIN_METADATA and str(value).lower() in ("1", "true"):
            log.warning("%s asked to skip the verification of the origin's TLS certificate", who)
            return True
    return False


def wants_output_copy(context: grpc.aio.ServicerContext) -> bool:
    """Tell whether the local caller asked for its output as a copy, not a hard link to the cache (dfget --copy)."""
    return any(
        key == OUTPUT_COPY_METADATA and str(value).lower() in ("1", "true")
        for key, value in context.invocation_metadata() or ()
    )


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map a download error to the gRPC status the requester sees; the message is shown to the user as is."""
    # One line: clients print it as is.
    message = " ".join((str(exc) or type(exc).__name__).split())
    if isinstance(exc, BackendError):
        if find_refusal(exc) is not None:
            # The SSRF guard, not the origin, said no (docs/security.md#origin-addresses).
            return grpc.StatusCode.PERMISSION_DENIED, message
        if exc.status_code in (404, 410):
            return grpc.StatusCode.NOT_FOUND, message
        if exc.status_code in (401, 403):
            return grpc.StatusCode.PERMISSION_DENIED, message
        return grpc.StatusCode.UNAVAILABLE, message
    if isinstance(exc, DigestMismatch):
        return grpc.StatusCode.DATA_LOSS, message
    if isinstance(exc, OutputError):
        return grpc.StatusCode.FAILED_PRECONDITION, message
    if isinstance(exc, NoSpace):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, message
    if isinstance(exc, TaskNotFound):
        return grpc.StatusCode.NOT_FOUND, message
    if isinstance(exc, RangeNotSatisfiable):
        return grpc.StatusCode.OUT_OF_RANGE, message
    if isinstance(exc, InvalidURL | InvalidDigest | InvalidTaskId | ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, message
    if isinstance(exc, DownloadTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED, message
    if isinstance(exc, DownloadFailed):
        return grpc.StatusCode.UNAVAILABLE, message
    return grpc.StatusCode.INTERNAL, message
