"""The parts of a ``common.v2.Download`` built from dfget's flags, and its debug rendering (credentials masked)."""

from __future__ import annotations

import argparse
from typing import Any


def object_storage_message(args: argparse.Namespace) -> Any:
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
    given = {key: value for key, value in fields.items() if value}
    if not given and not args.storage_insecure_skip_verify:
        return None
    from dragonfly_api import common_pb2

    return common_pb2.ObjectStorage(insecure_skip_verify=args.storage_insecure_skip_verify, **given)


def add_source_settings(download: Any, args: argparse.Namespace) -> None:
    """Put the HDFS and hub flags into ``download`` for the URL's scheme (the revision is part of the task id)."""
    from dragonfly_api import common_pb2

    scheme = download.url.partition("://")[0].lower()
    if scheme == "hdfs" and args.hdfs_delegation_token:
        download.hdfs.CopyFrom(common_pb2.HDFS(delegation_token=args.hdfs_delegation_token))
    elif scheme == "hf":
        download.hugging_face.CopyFrom(
            common_pb2.HuggingFace(
                token=args.hf_token or "", revision=args.hf_revision, base_url=args.hf_base_url or ""
            )
        )
    elif scheme == "modelscope":
        download.model_scope.CopyFrom(
            common_pb2.ModelScope(token=args.ms_token or "", revision=args.ms_revision, base_url=args.ms_base_url or "")
        )


def describe_download(download: Any) -> str:
    """Return a Download message as debug output shows it: credentials masked."""
    from dragonfly_api import common_pb2

    from dragonfly.common.redact import MASK, redact_headers, redact_url

    shown = common_pb2.Download()
    shown.CopyFrom(download)
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
