"""The query parameters Dragonfly leaves out of a task id by default: the signing parameters of object stores.

A module of its own so that dfget, which sends the list, imports it without the task-id code (hashlib, uuid).
"""

from __future__ import annotations

DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            # S3
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
            "X-Amz-Security-Token",
            "X-Amz-User-Agent",
            # GCS
            "X-Goog-Algorithm",
            "X-Goog-Credential",
            "X-Goog-Date",
            "X-Goog-Expires",
            "X-Goog-SignedHeaders",
            "X-Goog-Signature",
            # OSS
            "OSSAccessKeyId",
            "Expires",
            "Signature",
            "SecurityToken",
            # OBS (Signature and Expires repeat; the first occurrence wins)
            "AccessKeyId",
            "Signature",
            "Expires",
            "X-Obs-Date",
            "X-Obs-Security-Token",
            # COS
            "q-sign-algorithm",
            "q-ak",
            "q-sign-time",
            "q-key-time",
            "q-header-list",
            "q-url-param-list",
            "q-signature",
            "x-cos-security-token",
            # containerd
            "ns",
        ]
    )
)
