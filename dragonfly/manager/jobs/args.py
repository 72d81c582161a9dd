"""Preheat job arguments: Dragonfly's ``PreheatArgs`` JSON (what Harbor and the console send), checked.

Field names and defaults are Dragonfly's (``manager/types/job.go``): ``timeout`` is a Go duration, an integer of
nanoseconds, 0 meaning the default (60 minutes); ``filtered_query_params`` is ``&``-joined; Harbor's
``concurrent_count`` is accepted and ignored, as Dragonfly does; Harbor's scope ``single_peer`` means
``single_seed_peer``. Credentials (``username``, ``password``, and the headers ``redact`` deems sensitive, such as
the registry ``Authorization`` header Harbor passes, and the credentials a URL carries: userinfo, signed query
values) are split off: ``public`` is what a job answer may show (URLs redacted), ``secret`` is sealed apart
(``sealing``) and dropped when the job ends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dragonfly_api import scheduler_pb2
from google.protobuf import duration_pb2

from dragonfly.common import oci
from dragonfly.common.redact import is_sensitive_header, redact_url

TYPE_IMAGE = "image"
TYPE_FILE = "file"
SINGLE_SEED_PEER = "single_seed_peer"
ALL_SEED_PEERS = "all_seed_peers"
ALL_PEERS = "all_peers"
SCOPES = (SINGLE_SEED_PEER, ALL_SEED_PEERS, ALL_PEERS)
#: Harbor's policy scopes (``single_peer``, ``all_peers``); Dragonfly treats ``single_peer`` as its default scope.
SCOPE_ALIASES = {"single_peer": SINGLE_SEED_PEER, "": SINGLE_SEED_PEER}
DEFAULT_TIMEOUT = 60 * 60.0
MAX_HEADERS = 64
MAX_HEADER_VALUE = 8192
MIN_PIECE_LENGTH = 4 * 1024 * 1024
MAX_PIECE_LENGTH = 64 * 1024 * 1024
#: Headers whose values are credentials besides ``redact``'s (Docker's registry auth header).
SENSITIVE_HEADERS = frozenset({"x-registry-auth"})
_KNOWN = frozenset(
    {
        "type",
        "url",
        "urls",
        "piece_length",
        "tag",
        "application",
        "filtered_query_params",
        "headers",
        "username",
        "password",
        "platform",
        "scope",
        "ips",
        "count",
        "percentage",
        "concurrent_task_count",
        "concurrent_peer_count",
        "concurrent_layer_count",
        "timeout",
        "insecure_skip_verify",
        "enable_task_id_based_blob_digest",
        # Harbor sends it; Dragonfly ignores it.
        "concurrent_count",
    }
)


class ArgsError(ValueError):
    """The arguments are not a valid preheat; the message names the field."""


@dataclass(frozen=True, slots=True)
class PreheatArgs:
    """A checked preheat request; ``secret`` holds the credentials apart from what may be shown."""

    type: str
    urls: tuple[str, ...]
    scope: str = SINGLE_SEED_PEER
    piece_length: int | None = None
    tag: str = ""
    application: str = ""
    filtered_query_params: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    username: str = ""
    platform: str = ""
    ips: tuple[str, ...] = ()
    count: int | None = None
    percentage: int | None = None
    concurrent_task_count: int | None = None
    concurrent_peer_count: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    insecure_skip_verify: bool = False
    enable_task_id_based_blob_digest: bool = False
    secret_headers: dict[str, str] = field(default_factory=dict)
    password: str = ""

    @property
    def url(self) -> str:
        return self.urls[0]

    def public(self) -> dict[str, Any]:
        """Return the arguments as a job answer shows them: Dragonfly's field names, no credentials."""
        shown = [redact_url(url) for url in self.urls]
        doc: dict[str, Any] = {"type": self.type, "url": shown[0], "scope": self.scope}
        if len(shown) > 1:
            doc["urls"] = shown
        optional: dict[str, Any] = {
            "piece_length": self.piece_length,
            "tag": self.tag,
            "application": self.application,
            "filtered_query_params": "&".join(self.filtered_query_params),
            "headers": dict(self.headers),
            "platform": self.platform,
            "ips": list(self.ips),
            "count": self.count,
            "percentage": self.percentage,
            "concurrent_task_count": self.concurrent_task_count,
            "concurrent_peer_count": self.concurrent_peer_count,
            "insecure_skip_verify": self.insecure_skip_verify,
            "enable_task_id_based_blob_digest": self.enable_task_id_based_blob_digest,
        }
        doc.update({key: value for key, value in optional.items() if value not in (None, "", [], {}, False)})
        doc["timeout"] = int(self.timeout * 1e9)
        return doc

    def secret(self) -> dict[str, Any]:
        """Return the credentials to keep apart (restored by ``parse_args(public, secret)``)."""
        doc: dict[str, Any] = {}
        if any(redact_url(url) != url for url in self.urls):
            doc["urls"] = list(self.urls)
        if self.secret_headers:
            doc["headers"] = dict(self.secret_headers)
        if self.username:
            doc["username"] = self.username
        if self.password:
            doc["password"] = self.password
        return doc

    def all_headers(self) -> dict[str, str]:
        return {**self.headers, **self.secret_headers}

    # scheduler requests

    def _common(self, request: Any) -> Any:
        if self.piece_length is not None:
            request.piece_length = self.piece_length
        if self.tag:
            request.tag = self.tag
        if self.application:
            request.application = self.application
        request.filtered_query_params.extend(self.filtered_query_params)
        request.header.update(self.all_headers())
        request.insecure_skip_verify = self.insecure_skip_verify
        request.timeout.CopyFrom(_duration(self.timeout))
        if self.concurrent_peer_count is not None:
            request.concurrent_peer_count = self.concurrent_peer_count
        return request

    def _selection(self, request: Any) -> Any:
        request.scope = self.scope
        request.ips.extend(self.ips)
        if self.count is not None:
            request.count = self.count
        if self.percentage is not None:
            request.percentage = self.percentage
        if self.concurrent_task_count is not None:
            request.concurrent_task_count = self.concurrent_task_count
        return request

    def preheat_requests(self) -> list[Any]:
        """Return the scheduler.v2 requests of this preheat: one PreheatImage, or one PreheatFile per URL."""
        if self.type == TYPE_IMAGE:
            request = self._selection(self._common(scheduler_pb2.PreheatImageRequest(url=self.url)))
            if self.username:
                request.username = self.username
            if self.password:
                request.password = self.password
            if self.platform:
                request.platform = self.platform
            request.enable_task_id_based_blob_digest = self.enable_task_id_based_blob_digest
            return [request]
        return [self._selection(self._common(scheduler_pb2.PreheatFileRequest(url=url))) for url in self.urls]

    def stat_requests(self, timeout: float) -> list[Any]:
        """Return the StatImage / StatFile requests that show who holds what this preheat fetched."""
        requests: list[Any] = []
        if self.type == TYPE_IMAGE:
            request = self._common(scheduler_pb2.StatImageRequest(url=self.url))
            if self.username:
                request.username = self.username
            if self.password:
                request.password = self.password
            if self.platform:
                request.platform = self.platform
            request.scope = self.scope
            request.enable_task_id_based_blob_digest = self.enable_task_id_based_blob_digest
            requests.append(request)
        else:
            requests.extend(self._common(scheduler_pb2.StatFileRequest(url=url)) for url in self.urls)
        for request in requests:
            request.timeout.CopyFrom(_duration(timeout))
        return requests


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def _int(doc: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgsError(f"args.{name} must be an integer")
    if value == 0 and name not in ("piece_length",):
        return None  # Go's zero value: not set
    if not low <= value <= high:
        raise ArgsError(f"args.{name} must be between {low} and {high}")
    return value


def _str(doc: Mapping[str, Any], name: str, limit: int = 4096) -> str:
    value = doc.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ArgsError(f"args.{name} must be a string")
    if len(value) > limit:
        raise ArgsError(f"args.{name} is longer than {limit} characters")
    return value


def _url(value: Any, name: str) -> str:
    if not isinstance(value, str) or "://" not in value or len(value) > 8192:
        raise ArgsError(f"args.{name} must be an absolute URL")
    scheme = value.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ArgsError(f"args.{name}: scheme {scheme[:16]!r} is not supported (http and https)")
    return value


def _sensitive(header: str) -> bool:
    return is_sensitive_header(header) or header.lower() in SENSITIVE_HEADERS


def _timeout(value: Any) -> float:
    if value is None or value == 0:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgsError("args.timeout must be an integer number of nanoseconds (a Go duration)")
    seconds = float(value) / 1e9
    if seconds < 1 or seconds > 24 * 3600:
        raise ArgsError("args.timeout must be between 1 second and 24 hours (in nanoseconds)")
    return seconds


def parse_args(doc: Any, secret: Mapping[str, Any] | None = None) -> PreheatArgs:
    """Check a preheat job's ``args`` object (plus the secrets kept apart, when re-reading a stored job)."""
    if not isinstance(doc, Mapping):
        raise ArgsError("args must be an object")
    unknown = sorted(set(doc) - _KNOWN)
    if unknown:
        raise ArgsError(f"args has unknown fields: {', '.join(name[:64] for name in unknown[:10])}")
    kind = doc.get("type")
    if kind not in (TYPE_IMAGE, TYPE_FILE):
        raise ArgsError("args.type must be 'image' or 'file'")
    urls: list[str] = []
    if doc.get("url"):
        urls.append(_url(doc["url"], "url"))
    extra = doc.get("urls") or []
    if not isinstance(extra, list):
        raise ArgsError("args.urls must be a list of URLs")
    if extra and kind != TYPE_FILE:
        raise ArgsError("args.urls is for file preheats; an image preheat takes one manifest URL in args.url")
    urls.extend(_url(url, "urls[]") for url in extra)
    secret = secret or {}
    if secret.get("urls"):
        # A stored job: its args show the URLs redacted; the real ones (with their credentials) are sealed apart.
        urls = [_url(url, "urls[]") for url in secret["urls"]]
    urls = list(dict.fromkeys(urls))
    if not urls:
        raise ArgsError("args.url is required")
    if len(urls) > 1000:
        raise ArgsError("at most 1000 URLs per preheat job")
    if kind == TYPE_IMAGE:
        try:
            oci.parse_manifest_url(urls[0])
        except oci.InvalidReference as exc:
            raise ArgsError(f"args.url: {exc}") from None
    scope = _str(doc, "scope", 64)
    scope = SCOPE_ALIASES.get(scope, scope)
    if scope not in SCOPES:
        raise ArgsError(f"args.scope {scope!r} is not one of {', '.join(SCOPES)}")
    piece_length = _int(doc, "piece_length", MIN_PIECE_LENGTH, MAX_PIECE_LENGTH)
    headers_doc = doc.get("headers") or {}
    if not isinstance(headers_doc, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers_doc.items()
    ):
        raise ArgsError("args.headers must be an object of strings")
    # They travel to every seed peer as request metadata: bounded like an HTTP server bounds a request's headers.
    if len(headers_doc) > MAX_HEADERS or any(
        not 0 < len(k) <= 256 or len(v) > MAX_HEADER_VALUE for k, v in headers_doc.items()
    ):
        raise ArgsError(
            f"args.headers: at most {MAX_HEADERS} headers, names of 1..256 characters, values up to "
            f"{MAX_HEADER_VALUE} characters"
        )
    headers = {k: v for k, v in headers_doc.items() if not _sensitive(k)}
    secret_headers = {k: v for k, v in headers_doc.items() if _sensitive(k)}
    secret_headers.update(secret.get("headers") or {})
    password = _str(doc, "password") or str(secret.get("password") or "")
    username = _str(doc, "username") or str(secret.get("username") or "")
    ips = doc.get("ips") or []
    if not isinstance(ips, list) or len(ips) > 100:
        raise ArgsError("args.ips must be a list of at most 100 IP addresses")
    for ip in ips:
        try:
            ipaddress.ip_address(ip if isinstance(ip, str) else "")
        except ValueError:
            raise ArgsError(f"args.ips: {str(ip)[:64]!r} is not an IP address") from None
    platform = _str(doc, "platform", 64)
    if platform:
        try:
            oci.Platform.parse(platform)
        except oci.InvalidReference as exc:
            raise ArgsError(f"args.platform: {exc}") from None
    filtered = _str(doc, "filtered_query_params")
    task_count = _int(doc, "concurrent_task_count", 1, 100) or _int(doc, "concurrent_layer_count", 1, 100)
    return PreheatArgs(
        type=kind,
        urls=tuple(urls),
        scope=scope,
        piece_length=piece_length,
        tag=_str(doc, "tag"),
        application=_str(doc, "application"),
        filtered_query_params=tuple(p for p in filtered.split("&") if p),
        headers=headers,
        username=username,
        platform=platform,
        ips=tuple(ips),
        count=_int(doc, "count", 1, 200),
        percentage=_int(doc, "percentage", 1, 100),
        concurrent_task_count=task_count,
        concurrent_peer_count=_int(doc, "concurrent_peer_count", 1, 1000),
        timeout=_timeout(doc.get("timeout")),
        insecure_skip_verify=bool(doc.get("insecure_skip_verify", False)),
        enable_task_id_based_blob_digest=bool(doc.get("enable_task_id_based_blob_digest", False)),
        secret_headers=secret_headers,
        password=password,
    )
