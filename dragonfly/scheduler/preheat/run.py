"""Running a preheat: ``DfdaemonUpload.DownloadTask`` for every (URL, host) of the plan, bounded, timed, reported.

Each target host downloads as any peer would (it registers on AnnouncePeer; the first of a task is sent to the
origin or its seed peer, the rest to parents), so a preheat of all peers moves each byte out of the origin about
once. ``concurrentTaskCount`` URLs run at a time, each on at most ``concurrentPeerCount`` hosts at a time; the
whole run has one deadline. The result lists every (URL, host) pair as a success or a failure with its reason, in
the shape of Dragonfly's preheat job result (``success_tasks`` / ``failure_tasks``).

Cancelling the run (the caller went away, or the manager cancelled the job) stops it from starting more
downloads and drops the ones in flight; a daemon keeps what it already stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc

from dragonfly.common import tls
from dragonfly.common.grpc_metadata import INSECURE_ORIGIN_METADATA
from dragonfly.common.redact import redact_text, redact_url

if TYPE_CHECKING:
    from dragonfly.scheduler.metrics import Metrics
    from dragonfly.scheduler.preheat.plan import Assignment, PreheatSpec
    from dragonfly.scheduler.resource.host import Host

log = logging.getLogger(__name__)

#: Failure descriptions are cut here: one misbehaving daemon must not bloat a job's result.
MAX_DESCRIPTION = 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one (URL, host) pair ended; ``error`` is empty on success."""

    url: str
    hostname: str
    ip: str
    error: str = ""


@dataclass(frozen=True, slots=True)
class PreheatResult:
    """Every pair's outcome; ``to_dict`` is Dragonfly's per-scheduler preheat response."""

    outcomes: tuple[Outcome, ...]

    @property
    def succeeded(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.error]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success_tasks": [{"url": o.url, "hostname": o.hostname, "ip": o.ip} for o in self.succeeded],
            "failure_tasks": [
                {"url": o.url, "hostname": o.hostname, "ip": o.ip, "description": o.error} for o in self.failed
            ],
        }

    def encode(self) -> bytes:
        """Return the result as compressed JSON (the ``dragonfly-preheat-result-bin`` trailer)."""
        return zlib.compress(json.dumps(self.to_dict(), separators=(",", ":")).encode(), 6)


def decode_result(data: bytes, limit: int = 64 * 1024 * 1024) -> dict[str, Any]:
    """Decode a ``dragonfly-preheat-result-bin`` trailer (bounded, so a hostile scheduler cannot blow memory)."""
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, limit)
    if inflater.unconsumed_tail:
        raise ValueError(f"preheat result larger than {limit} bytes")
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("preheat result is not a JSON object")
    return doc


class HostChannels:
    """gRPC channels to the upload servers of the hosts of one run (mutual TLS with the scheduler's client files)."""

    def __init__(self, files: tls.TLSFiles | None) -> None:
        self._files = files
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, host: Host) -> grpc.aio.Channel:
        channel = self._channels.get(host.address)
        if channel is None:
            channel = self._channels[host.address] = tls.aio_channel(host.address, self._files)
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


async def download_on(
    channels: HostChannels, host: Host, url: str, spec: PreheatSpec, header: dict[str, str], deadline: float, ip: str
) -> str:
    """Make ``host`` download ``url``; return "" on success, else why not."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return f"not started: the preheat's timeout of {spec.timeout:g}s passed"
    stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channels.get(host))  # type: ignore[no-untyped-call]
    request = dfdaemon_pb2.DownloadTaskRequest(download=spec.download(url, header, remaining, ip))
    # The Download message cannot say "do not verify the origin": the daemon's upload API takes it as metadata from
    # the scheduler (docs/security.md#origin-tls).
    metadata = ((INSECURE_ORIGIN_METADATA, "true"),) if spec.insecure_skip_verify else ()
    call = stub.DownloadTask(request, timeout=remaining, metadata=metadata)
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"DEADLINE_EXCEEDED: not finished within the preheat's timeout of {spec.timeout:g}s"
        return redact_text(f"{exc.code().name}: {exc.details() or ''}")[:MAX_DESCRIPTION]
    except asyncio.CancelledError:
        call.cancel()
        raise
    return ""


async def run_preheat(
    assignments: Sequence[Assignment],
    spec: PreheatSpec,
    header: dict[str, str],
    channels: HostChannels,
    *,
    remote_ip: str = "",
    metrics: Metrics | None = None,
) -> PreheatResult:
    """Run every assignment within ``spec.timeout``; pairs still running at the deadline fail with a timeout."""
    deadline = time.monotonic() + spec.timeout
    urls = asyncio.Semaphore(spec.concurrent_task_count)
    outcomes: dict[tuple[str, str], Outcome] = {}
    pending: dict[tuple[str, str], tuple[str, Host]] = {}
    for assignment in assignments:
        if not assignment.hosts:
            outcomes[(assignment.url, "")] = Outcome(assignment.url, "", "", assignment.missing)
        for host in assignment.hosts:
            pending[(assignment.url, host.id)] = (assignment.url, host)

    async def one_host(url: str, host: Host, peers: asyncio.Semaphore) -> None:
        async with peers:
            error = await download_on(channels, host, url, spec, header, deadline, remote_ip)
        pending.pop((url, host.id), None)
        outcomes[(url, host.id)] = Outcome(url, host.hostname, host.ip, error)
        if metrics is not None:
            metrics.preheat_downloads.labels("failed" if error else "succeeded").inc()
        if error:
            log.info("preheat download failed", extra={"url": redact_url(url), "host_id": host.id, "error": error})

    async def one_url(assignment: Assignment) -> None:
        if not assignment.hosts:
            return
        async with urls:
            peers = asyncio.Semaphore(spec.concurrent_peer_count)
            await asyncio.gather(*(one_host(assignment.url, host, peers) for host in assignment.hosts))

    try:
        async with asyncio.timeout(spec.timeout):
            await asyncio.gather(*(one_url(a) for a in assignments))
    except TimeoutError:
        late = f"not finished within the timeout of {spec.timeout:g}s"
        for key, (url, host) in pending.items():
            outcomes[key] = Outcome(url, host.hostname, host.ip, late)
    return PreheatResult(tuple(outcomes.values()))
