"""What a preheat asks for and which hosts it reaches (``docs/preheat.md#scopes``).

``PreheatSpec`` is a PreheatFile/PreheatImage request with Dragonfly's defaults filled in and checked; the
functions below pick hosts by scope:

- ``single_seed_peer`` (the default): for each URL the seed peer that owns its task id on the seed ring, the one a
  later download would be sent to;
- ``all_seed_peers``: every seed host; ``all_peers``: every normal host;
- within the last two, ``ips`` (only hosts with those IPs) wins over ``count`` (that many, chosen at random) which
  wins over ``percentage`` (that share, rounded down, at least one).

Image preheats without a platform give each host the layers of the platform it announces
(``dragonfly.common.oci.host_platform``); a host that announces none gets this scheduler's own platform.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from dragonfly_api import common_pb2

from dragonfly.common import ids, oci
from dragonfly.common.identity import canonical_ip
from dragonfly.scheduler.service.convert import duration, seconds

if TYPE_CHECKING:
    from dragonfly.scheduler.resource.host import Host
    from dragonfly.scheduler.resource.manager import ResourceManager
    from dragonfly.scheduler.seed import SeedPeers

SINGLE_SEED_PEER = "single_seed_peer"
ALL_SEED_PEERS = "all_seed_peers"
ALL_PEERS = "all_peers"
SCOPES = (SINGLE_SEED_PEER, ALL_SEED_PEERS, ALL_PEERS)

# Dragonfly's defaults (manager/types/job.go) and proto limits.
DEFAULT_CONCURRENT_TASK_COUNT = 8
DEFAULT_CONCURRENT_PEER_COUNT = 500
DEFAULT_TIMEOUT = 60 * 60.0
MAX_IPS = 100
MIN_PIECE_LENGTH = 4 * 1024 * 1024
MAX_PIECE_LENGTH = 64 * 1024 * 1024


class PlanError(Exception):
    """The request cannot be served; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Selection:
    """Which hosts of a scope: ``ips`` > ``count`` > ``percentage`` > all of them."""

    scope: str = SINGLE_SEED_PEER
    ips: frozenset[str] = frozenset()
    count: int | None = None
    percentage: int | None = None


@dataclass(frozen=True, slots=True)
class PreheatSpec:
    """One PreheatFile/PreheatImage (or Stat) request, defaults applied, checked."""

    url: str
    selection: Selection
    piece_length: int | None
    tag: str
    application: str
    filtered_query_params: tuple[str, ...]
    header: dict[str, str]
    priority: int
    certificate_chain: tuple[bytes, ...]
    insecure_skip_verify: bool
    concurrent_task_count: int
    concurrent_peer_count: int
    timeout: float
    username: str = ""
    password: str = ""
    platform: oci.Platform | None = None
    # Blob URLs get their digest as task id (the proxy's enableTaskIDBasedBlobDigest), so pulls find the blobs.
    blob_digest_task_id: bool = False

    def task_id(self, url: str) -> str:
        """Return the task id a download of ``url`` with this spec's parameters gets (what peers compute)."""
        if self.blob_digest_task_id:
            blob = ids.blob_digest_task_id(url)
            if blob is not None:
                return blob
        return ids.task_id(
            url,
            tag=self.tag or None,
            application=self.application or None,
            piece_length=self.piece_length,
            filtered_query_params=self.filtered_query_params,
        )

    def download(self, url: str, header: dict[str, str], remaining: float, remote_ip: str) -> common_pb2.Download:
        """Return the Download a target host is sent (DfdaemonUpload.DownloadTask), bounded by ``remaining``."""
        download = common_pb2.Download(
            url=url,
            type=common_pb2.STANDARD,
            priority=self.priority,  # type: ignore[arg-type]
            filtered_query_params=list(self.filtered_query_params),
            request_header=header,
            certificate_chain=list(self.certificate_chain),
            timeout=duration(max(remaining, 0.001)),
        )
        if self.tag:
            download.tag = self.tag
        if self.application:
            download.application = self.application
        if self.piece_length is not None:
            download.piece_length = self.piece_length
        if remote_ip:
            download.remote_ip = remote_ip
        download.enable_task_id_based_blob_digest = self.blob_digest_task_id
        return download


def _optional(request: Any, name: str) -> Any:
    return getattr(request, name) if request.HasField(name) else None


def spec_from_request(request: Any, *, with_selection: bool = True) -> PreheatSpec:
    """Build a PreheatSpec from any of the four request messages; PlanError(INVALID_ARGUMENT) when invalid."""

    def invalid(message: str) -> PlanError:
        return PlanError(grpc.StatusCode.INVALID_ARGUMENT, message)

    fields = request.DESCRIPTOR.fields_by_name
    if not request.url or "://" not in request.url:
        raise invalid(f"url {request.url[:256]!r} is not an absolute URL")
    piece_length = _optional(request, "piece_length")
    if piece_length is not None and not MIN_PIECE_LENGTH <= piece_length <= MAX_PIECE_LENGTH:
        raise invalid(f"piece_length must be between {MIN_PIECE_LENGTH} and {MAX_PIECE_LENGTH} bytes")
    selection = Selection()
    if with_selection and "scope" in fields:
        scope = request.scope or SINGLE_SEED_PEER
        if scope not in SCOPES:
            raise invalid(f"scope {scope[:64]!r} is not one of {', '.join(SCOPES)}")
        if len(request.ips) > MAX_IPS:
            raise invalid(f"ips lists {len(request.ips)} addresses, at most {MAX_IPS} are allowed")
        count, percentage = _optional(request, "count"), _optional(request, "percentage")
        if count is not None and not 1 <= count <= 200:
            raise invalid("count must be between 1 and 200")
        if percentage is not None and not 1 <= percentage <= 100:
            raise invalid("percentage must be between 1 and 100")
        for ip in request.ips:
            if not _is_ip(ip):
                raise invalid(f"ips: {ip[:64]!r} is not an IP address")
        selection = Selection(scope, frozenset(canonical_ip(ip) for ip in request.ips), count, percentage)
    task_count = DEFAULT_CONCURRENT_TASK_COUNT
    for name in ("concurrent_task_count", "concurrent_layer_count"):
        if name in fields and request.HasField(name):
            task_count = getattr(request, name)
            if not 1 <= task_count <= 100:
                raise invalid(f"{name} must be between 1 and 100")
    peer_count = DEFAULT_CONCURRENT_PEER_COUNT
    if request.HasField("concurrent_peer_count"):
        peer_count = request.concurrent_peer_count
        if not 1 <= peer_count <= 1000:
            raise invalid("concurrent_peer_count must be between 1 and 1000")
    timeout = seconds(request.timeout) if request.HasField("timeout") else DEFAULT_TIMEOUT
    if timeout <= 0:
        raise invalid("timeout must be positive")
    platform = None
    if "platform" in fields and request.HasField("platform") and request.platform:
        try:
            platform = oci.Platform.parse(request.platform)
        except oci.InvalidReference as exc:
            raise invalid(str(exc)) from None
    priority = request.priority if "priority" in fields else common_pb2.LEVEL0
    if priority not in common_pb2.Priority.values():
        raise invalid(f"priority {priority} is not a defined Priority")
    if "output_path" in fields and request.HasField("output_path"):
        raise invalid("output_path is not supported: a daemon never writes where a network request tells it to")
    for backend in ("object_storage", "hdfs"):
        if backend in fields and request.HasField(backend):
            raise invalid(f"{backend} is not supported by this cluster's daemons (http and https URLs only)")
    return PreheatSpec(
        url=request.url,
        selection=selection,
        piece_length=piece_length,
        tag=_optional(request, "tag") or "",
        application=_optional(request, "application") or "",
        filtered_query_params=tuple(request.filtered_query_params) or ids.DEFAULT_FILTERED_QUERY_PARAMS,
        header=dict(request.header),
        priority=priority,
        certificate_chain=tuple(request.certificate_chain),
        insecure_skip_verify=request.insecure_skip_verify,
        concurrent_task_count=task_count,
        concurrent_peer_count=peer_count,
        timeout=timeout,
        username=(_optional(request, "username") or "") if "username" in fields else "",
        password=(_optional(request, "password") or "") if "password" in fields else "",
        platform=platform,
        blob_digest_task_id="enable_task_id_based_blob_digest" in fields and request.enable_task_id_based_blob_digest,
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------- targets


@dataclass(slots=True)
class Assignment:
    """One URL and the hosts that must download it; ``missing`` explains an empty host list."""

    url: str
    hosts: list[Host]
    missing: str = ""


def select_hosts(resource: ResourceManager, selection: Selection) -> list[Host]:
    """Return the hosts of an ``all_seed_peers`` / ``all_peers`` preheat."""
    seeds = selection.scope == ALL_SEED_PEERS
    kind = "seed peer" if seeds else "peer"
    pool = [host for host in resource.hosts.values() if host.is_seed == seeds]
    if not pool:
        raise PlanError(grpc.StatusCode.FAILED_PRECONDITION, f"no {kind} has announced itself to this scheduler")
    if selection.ips:
        chosen = [host for host in pool if canonical_ip(host.ip) in selection.ips]
        if not chosen:
            wanted = ", ".join(sorted(selection.ips))
            raise PlanError(grpc.StatusCode.NOT_FOUND, f"no {kind} of this scheduler has one of the IPs {wanted}")
        return chosen
    if selection.count is not None:
        return random.sample(pool, min(selection.count, len(pool)))
    if selection.percentage is not None:
        return random.sample(pool, max(1, len(pool) * selection.percentage // 100))
    return pool


def seed_assignments(spec: PreheatSpec, seeds: SeedPeers, urls: Iterable[str]) -> list[Assignment]:
    """Give each URL to the seed peer that owns its task on the ring (``single_seed_peer``)."""
    result = []
    for url in urls:
        host = seeds.select(spec.task_id(url))
        result.append(Assignment(url, [host] if host else [], "" if host else "no healthy seed peer in this cluster"))
    return result


def host_platform(host: Host, fallback: oci.Platform) -> oci.Platform:
    """Return the platform ``host`` announces, else ``fallback``."""
    message = host.message
    return oci.host_platform(message.os, message.build.platform) or fallback


def platforms_of(hosts: Sequence[Host], fallback: oci.Platform) -> dict[oci.Platform, list[Host]]:
    """Group hosts by the platform they announce."""
    groups: dict[oci.Platform, list[Host]] = {}
    for host in hosts:
        groups.setdefault(host_platform(host, fallback), []).append(host)
    return groups
