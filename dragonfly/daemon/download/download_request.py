"""What a Download request asks for (its task id as Dragonfly computes it, its byte range, the digest its content
must have), and whether this daemon can serve it at all.
"""

from __future__ import annotations

import contextlib

from dragonfly_api import common_pb2

from dragonfly.common import ids
from dragonfly.common.byte_range import ByteRange, RangeSpec, find_range_header, parse_range_header, range_from_fields
from dragonfly.common.digest import Digest, parse_digest
from dragonfly.common.errors import InvalidDigest
from dragonfly.common.piece import MAX_PIECE_LENGTH, MIN_PIECE_LENGTH
from dragonfly.common.redact import redact_url
from dragonfly.daemon.backends import check_scheme
from dragonfly.daemon.download.piece_verifier import is_strong
from dragonfly.daemon.output import check_output_path
from dragonfly.daemon.storage import TaskRecord


def task_id_for(download: common_pb2.Download) -> str:
    """Return the task id of a Download request exactly as Dragonfly computes it."""
    if download.enable_task_id_based_blob_digest:
        blob = ids.blob_digest_task_id(download.url)
        if blob is not None:
            return blob
    content = download.content_for_calculating_task_id if download.HasField("content_for_calculating_task_id") else None
    return ids.task_id(
        download.url,
        tag=download.tag or None,
        application=download.application or None,
        revision=hub_revision(download),
        piece_length=download.piece_length if download.HasField("piece_length") else None,
        filtered_query_params=list(download.filtered_query_params) or ids.DEFAULT_FILTERED_QUERY_PARAMS,
        content=content,
    )


def hub_revision(download: common_pb2.Download) -> str | None:
    """Return the model hub revision that is part of the task id (Dragonfly hashes the one the request names)."""
    scheme = download.url.partition("://")[0].lower()
    if scheme == "hf" and download.HasField("hugging_face"):
        return download.hugging_face.revision or None
    if scheme == "modelscope" and download.HasField("model_scope"):
        return download.model_scope.revision or None
    return None


def requested_range(download: common_pb2.Download) -> RangeSpec | None:
    """Return the range a request asks for: ``Download.range``, else its ``Range`` header (as Dragonfly), else None.

    Raises InvalidRange (a ValueError) when it is malformed.
    """
    if download.HasField("range"):
        return range_from_fields(download.range.start, download.range.length)
    header = find_range_header(download.request_header)
    return None if header is None else parse_range_header(header)


def wanted_pieces(task: TaskRecord, byte_range: ByteRange | None) -> frozenset[int] | None:
    """Return the pieces a download of ``byte_range`` needs (None: the whole task)."""
    if byte_range is None:
        return None
    return frozenset(byte_range.pieces(task.piece_length))


def whole_content_digest(download: common_pb2.Download, *, ranged: bool) -> Digest | None:
    """Return the cryptographic digest the whole content must have (``--digest`` or an OCI blob's), if any.

    A ranged download's ``--digest`` is the digest of its range, not of the content.
    """
    if not ranged and download.HasField("digest") and download.digest:
        digest = parse_digest(download.digest)
        if is_strong(str(digest)):
            return digest
    blob = ids.blob_digest(download.url) if download.enable_task_id_based_blob_digest else None
    if blob is not None:
        # An OCI blob is named by its digest: its bytes must hash to it, whoever served them.
        with contextlib.suppress(InvalidDigest):
            digest = parse_digest(blob)
            if is_strong(str(digest)):
                return digest
    return None


def validate_download(download: common_pb2.Download, *, as_daemon: bool = True) -> None:
    """Refuse requests this daemon cannot serve, with a message naming the field.

    ``as_daemon`` False (a caller with other rights) leaves the output checks to the write itself.
    """
    check_scheme(download.url, redact_url)
    requested_range(download)
    if download.HasField("piece_length") and not MIN_PIECE_LENGTH <= download.piece_length <= MAX_PIECE_LENGTH:
        raise ValueError(
            f"piece_length must be between {MIN_PIECE_LENGTH} and {MAX_PIECE_LENGTH} bytes, got {download.piece_length}"
        )
    if download.HasField("digest") and download.digest:
        parse_digest(download.digest)
    if download.HasField("output_path"):
        check_output_path(download.output_path, overwrite=download.overwrite, as_daemon=as_daemon)
