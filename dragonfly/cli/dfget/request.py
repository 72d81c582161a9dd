"""The parts of a ``common.v2.Download`` built from dfget's flags, and its debug rendering (credentials masked).

Messages are plain dicts keyed by the protos' field names (nested messages as dicts): dfget's download path writes
them itself (dragonfly.cli.dfget.messages), and the protobuf classes take them as they are where they are needed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

# typing is for the type checker only here: importing it costs a few ms at every dfget start (bench/RESULTS.md §3).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def object_storage_fields(args: argparse.Namespace) -> dict[str, Any] | None:
    """Return the ``common.v2.ObjectStorage`` of the --storage-* flags, or None when none is given."""
    fields = {
        "region": args.storage_region,
        "endpoint": args.storage_endpoint,
        "access_key_id": args.storage_access_key_id,
        "access_key_secret": args.storage_access_key_secret,
        "session_token": args.storage_session_token,
        "security_token": args.storage_security_token,
        "credential_path": args.storage_credential_path,
        "predefined_acl": args.storage_predefined_acl,
    }
    given: dict[str, Any] = {key: value for key, value in fields.items() if value}
    if not given and not args.storage_insecure_skip_verify:
        return None
    return {"insecure_skip_verify": args.storage_insecure_skip_verify, **given}


def source_settings(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Return the object storage, HDFS and hub settings of the flags for the URL's scheme (the revision is part of
    the task id), as fields of a Download or a ListTaskEntriesRequest."""
    settings: dict[str, Any] = {}
    storage = object_storage_fields(args)
    if storage is not None:
        settings["object_storage"] = storage
    scheme = url.partition("://")[0].lower()
    if scheme == "hdfs" and args.hdfs_delegation_token:
        settings["hdfs"] = {"delegation_token": args.hdfs_delegation_token}
    elif scheme == "hf":
        settings["hugging_face"] = {
            "token": args.hf_token or "",
            "revision": args.hf_revision,
            "base_url": args.hf_base_url or "",
        }
    elif scheme == "modelscope":
        settings["model_scope"] = {
            "token": args.ms_token or "",
            "revision": args.ms_revision,
            "base_url": args.ms_base_url or "",
        }
    return settings


def describe_download(download: Mapping[str, Any]) -> str:
    """Return a Download (as dfget sends it) as debug output shows it: credentials masked."""
    from dragonfly_api import common_pb2

    from dragonfly.common.redact import MASK, redact_headers, redact_url

    shown = common_pb2.Download(**download)
    shown.url = redact_url(shown.url)
    headers = redact_headers(dict(shown.request_header))
    shown.request_header.clear()
    shown.request_header.update(headers)
    for name in ("object_storage", "hdfs", "hugging_face", "model_scope"):
        if shown.HasField(name):
            message = getattr(shown, name)
            for secret in ("access_key_secret", "session_token", "security_token", "delegation_token", "token"):
                if secret in message.DESCRIPTOR.fields_by_name and getattr(message, secret):
                    setattr(message, secret, MASK)
    return str(shown)
