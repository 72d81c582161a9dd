"""Task, host, peer and piece ids, computed exactly as Dragonfly v2 does so mixed clusters agree on identities.

Facts: ``docs/reference/protocol.md#identifiers``. The task id is the lower-case hex SHA-256 of the
normalised URL (filtered query parameters removed, the rest re-serialised as application/x-www-form-urlencoded)
followed by tag, application, revision and piece length, then the task type name.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from urllib.parse import unquote_to_bytes, urlsplit

from dragonfly.common.errors import DragonflyError

# Re-exported: the task id's users find the default list here, dfget imports the light module directly.
from dragonfly.common.filtered_query_params import DEFAULT_FILTERED_QUERY_PARAMS as DEFAULT_FILTERED_QUERY_PARAMS

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
# WHATWG's special schemes: lower-cased hosts, "/" for an empty path; the others (s3, hdfs, hf...) are opaque.
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp", "file"})
# The port part of a netloc (after a host or an IPv6 literal).
_OPAQUE_HOST = re.compile(r":\d*$")
_BLOB_URL = re.compile(r"^(.*)://(.*)/v2/(.*)/blobs/([^?]+)(\?.*)?$")
# Bytes left as they are by the application/x-www-form-urlencoded serialiser (WHATWG URL standard §5.2).
_FORM_SAFE = frozenset(b"*-._0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TASK_ID = re.compile(r"^[0-9a-f]{64}$")
# The WHATWG path percent-encode set beyond C0 controls and non-ASCII bytes.
_PATH_ESCAPE = frozenset(b' "#<>?`{}')


class InvalidURL(DragonflyError, ValueError):
    """A URL cannot be parsed into scheme, host and path."""


def _form_decode(text: str) -> str:
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", errors="replace")


def _path_encode(path: str) -> str:
    out = []
    for byte in path.encode("utf-8"):
        if byte < 0x21 or byte > 0x7E or byte in _PATH_ESCAPE:
            out.append(f"%{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """Resolve "." and ".." segments (also percent-encoded) as the WHATWG path parser does."""
    if not path.startswith("/"):
        return path
    segments = path.split("/")[1:]
    out: list[str] = []
    for index, segment in enumerate(segments):
        lowered = segment.lower()
        last = index == len(segments) - 1
        if lowered in ("..", ".%2e", "%2e.", "%2e%2e"):
            if out:
                out.pop()
            if last:
                out.append("")
        elif lowered in (".", "%2e"):
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _form_encode(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        if byte in _FORM_SAFE:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def normalize_url(url: str, filtered_query_params: tuple[str, ...] | list[str] = DEFAULT_FILTERED_QUERY_PARAMS) -> str:
    """Return the URL as Dragonfly hashes it: normalised, filtered query pairs dropped, the rest form-encoded."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"invalid URL {url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    special = scheme in _SPECIAL_SCHEMES
    if not scheme or (not parts.netloc and scheme != "file"):
        raise InvalidURL(f"invalid URL {url!r}: expected scheme://host/path")
    if special:
        host = (parts.hostname or "").lower()
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        if scheme == "file" and host == "localhost":
            host = ""
    else:
        # WHATWG keeps the host of a non-special URL (s3://Bucket, hf://Owner) as it is written: an opaque host.
        host = _OPAQUE_HOST.sub("", parts.netloc.rpartition("@")[2])
    netloc = host
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{userinfo}@{host}"
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        netloc = f"{netloc}:{port}"
    # A special URL's empty path is "/"; a non-special one's stays empty (s3://bucket).
    path = _path_encode(_remove_dot_segments(parts.path)) if parts.path else ("/" if special else "")

    serialized = f"{scheme}://{netloc}{path}"
    if parts.query:
        filtered = set(filtered_query_params)
        pairs = []
        for chunk in parts.query.split("&"):
            if not chunk:
                continue
            key, _, value = chunk.partition("=")
            key, value = _form_decode(key), _form_decode(value)
            if key not in filtered:
                pairs.append(f"{_form_encode(key)}={_form_encode(value)}")
        if pairs:
            serialized += "?" + "&".join(pairs)
    if parts.fragment:
        serialized += "#" + parts.fragment
    # Dragonfly strips the single trailing slash of a root path ("https://example.com/" hashes as without it).
    if path == "/" and serialized.endswith("/"):
        serialized = serialized[:-1]
    return serialized


def task_id(
    url: str,
    *,
    tag: str | None = None,
    application: str | None = None,
    revision: str | None = None,
    piece_length: int | None = None,
    filtered_query_params: tuple[str, ...] | list[str] = DEFAULT_FILTERED_QUERY_PARAMS,
    content: str | bytes | None = None,
) -> str:
    """Return the standard task id; ``content`` (Dragonfly's content_for_calculating_task_id) overrides the URL."""
    if content is not None:
        data = content.encode() if isinstance(content, str) else content
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256(normalize_url(url, filtered_query_params).encode())
    # None and "" hash identically (dfget sends "", the proxy sends None), as in Dragonfly.
    for part in (tag, application, revision):
        if part:
            h.update(part.encode())
    if piece_length is not None:
        h.update(str(piece_length).encode())
    h.update(b"STANDARD")
    return h.hexdigest()


def blob_digest_task_id(url: str) -> str | None:
    """Return the hex part of an OCI blob URL's digest (used verbatim as task id), or None for other URLs."""
    match = _BLOB_URL.match(url)
    if not match:
        return None
    _, _, encoded = match.group(4).partition(":")
    return encoded if _TASK_ID.match(encoded) else None


def blob_digest(url: str) -> str | None:
    """Return an OCI blob URL's digest (``sha256:<hex>``), or None for other URLs."""
    match = _BLOB_URL.match(url)
    if not match:
        return None
    digest: str = match.group(4)
    return digest


def is_task_id(value: str) -> bool:
    """Tell whether ``value`` has the form of a standard task id (64 lower-case hex), safe to use as a file name."""
    return bool(_TASK_ID.match(value))


def host_id(ip: str, hostname: str, *, seed: bool = False) -> str:
    """Return Dragonfly's host id ``{ip}-{hostname}`` (``-seed`` suffix for a seed peer)."""
    return f"{ip}-{hostname}-seed" if seed else f"{ip}-{hostname}"


def peer_id(ip: str, hostname: str, *, seed: bool = False) -> str:
    """Return a fresh peer id ``{ip}-{hostname}-{uuid4}`` (``-seed`` suffix for a seed peer)."""
    base = f"{ip}-{hostname}-{uuid.uuid4()}"
    return f"{base}-seed" if seed else base


def piece_id(task_id: str, number: int) -> str:
    """Return the storage key of one piece."""
    return f"{task_id}-{number}"
