"""The URL schemes a daemon can fetch from (its back-to-source backends, docs/backends.md); cheap to import, so dfget
checks a URL before it loads grpc."""

from __future__ import annotations

#: Every scheme some back-to-source backend serves.
SOURCE_SCHEMES = ("http", "https", "file", "s3", "oss", "obs", "cos", "gs", "abs", "hdfs", "hf", "modelscope")
#: Object storage schemes (dfget's --storage-* flags apply to them).
OBJECT_STORAGE_SCHEMES = frozenset({"s3", "oss", "obs", "cos", "gs", "abs"})
#: Schemes whose URLs name a local path, not a host.
PATH_SCHEMES = frozenset({"file"})


def describe_schemes() -> str:
    """Return the served schemes as a user reads them: ``http://, https://, file://``."""
    return ", ".join(f"{s}://" for s in SOURCE_SCHEMES)


def scheme_of(url: str) -> str:
    """Return the lower-case scheme of ``url`` ("" when it has none)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""
