"""Keep secrets out of logs, metrics, RPC answers, error messages and the metadata DB (docs/security.md).

Secrets travel in two places: URL userinfo (``https://user:password@host/``) and the values of signing query
parameters (``X-Amz-Signature`` ...), and request headers (``Authorization``, ``Cookie``, ``X-Api-Key``, any
``*-Token``, plus the names an operator adds with ``configure``). They are needed in memory to reach the origin and
nowhere else: everything that shows or stores a URL or headers goes through this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

#: Header names whose values are always secret (compared case-insensitively), besides any name ending in -token.
DEFAULT_SENSITIVE_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-amz-security-token",
)
#: Query parameters whose values are credentials (the signing parameters of S3, GCS, Azure, OSS and OBS).
SENSITIVE_QUERY_PARAMS = frozenset(
    name.lower()
    for name in (
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "X-Goog-Signature",
        "X-Goog-Credential",
        "Signature",
        "sig",
        "AccessKeyId",
        "OSSAccessKeyId",
        "SecurityToken",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "password",
        # WebHDFS's delegation token (an hdfs:// source's --hdfs-delegation-token).
        "delegation",
    )
)

_sensitive_headers = frozenset(DEFAULT_SENSITIVE_HEADERS)

# userinfo in any URL inside free text (error messages, log lines).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@?#]+@")
# "Name: value" / "'Name': 'value'" / "Name=value" for a sensitive header name inside free text.
_HEADER_TEXT = re.compile(
    r"""(?P<name>\b(?:proxy-authorization|authorization|set-cookie|cookie|x-api-key|[\w-]+-token)\b)"""
    r"""(?P<sep>["']?\s*[:=]\s*["']?)(?P<value>[^"',}\r\n]+)""",
    re.IGNORECASE,
)
_QUERY_TEXT = re.compile(r"(?P<key>[?&;](?P<name>[\w.-]+)=)(?P<value>[^&#\s\"']*)")


def configure(extra_headers: Iterable[str]) -> None:
    """Add operator-configured header names to the sensitive ones (process-wide, at start-up)."""
    global _sensitive_headers
    _sensitive_headers = frozenset(DEFAULT_SENSITIVE_HEADERS) | {name.strip().lower() for name in extra_headers}


def is_sensitive_header(name: str) -> bool:
    """Return whether a header's value is a secret."""
    lowered = name.lower()
    return lowered in _sensitive_headers or lowered.endswith("-token")


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return ``headers`` with every sensitive value replaced by ``***``."""
    return {name: MASK if is_sensitive_header(name) else value for name, value in headers.items()}


def redact_url(url: str) -> str:
    """Return ``url`` without userinfo and with the values of credential query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query and any(name.lower() in SENSITIVE_QUERY_PARAMS for name, _ in parse_qsl(query, keep_blank_values=True)):
        query = urlencode(
            [
                (name, MASK if name.lower() in SENSITIVE_QUERY_PARAMS else value)
                for name, value in parse_qsl(query, keep_blank_values=True)
            ],
            safe="*",
        )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Mask URL userinfo, credential query values and sensitive header values anywhere in free text."""
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    if "=" in text:
        text = _QUERY_TEXT.sub(
            lambda m: f"{m.group('key')}{MASK}" if m.group("name").lower() in SENSITIVE_QUERY_PARAMS else m.group(0),
            text,
        )
    if ":" in text or "=" in text:
        text = _HEADER_TEXT.sub(lambda m: f"{m.group('name')}{m.group('sep')}{MASK}", text)
    return text
