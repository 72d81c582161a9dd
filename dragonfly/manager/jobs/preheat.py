"""A preheat job's fan-out: each target cluster's scheduler runs it (scheduler.v2 ``PreheatImage`` /
``PreheatFile``), then says who holds what (``StatImage`` / ``StatFile``).

One scheduler per cluster runs the preheat, as in Dragonfly; when the first cannot be reached the next active
scheduler of the cluster is tried. Calls use the wait form (``docs/preheat.md#on-the-scheduler``): the scheduler
answers when the downloads end, with the per-host outcome in its trailing metadata, and cancelling the call
(the job was cancelled or timed out) cancels the preheat.

A cluster's part succeeds when every URL reached at least one host (Dragonfly's rule for ``all_peers``: a host that
failed is listed in ``failure_tasks`` with the daemon's reason, the job still succeeds); the job succeeds when
every cluster's part did.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from dragonfly_api import scheduler_pb2_grpc

from dragonfly.common.redact import redact_text, redact_url
from dragonfly.manager.jobs.args import PreheatArgs
from dragonfly.manager.jobs.model import FAILURE, SUCCESS, rfc3339, utcnow

log = logging.getLogger(__name__)

# The scheduler's wait-form keys (dragonfly/scheduler/preheat/service.py; the wire contract between the two).
WAIT_KEY = "dragonfly-preheat-wait"
PLAN_KEY = "dragonfly-preheat-plan"
RESULT_KEY = "dragonfly-preheat-result-bin"
#: A big cluster's result comes in trailing metadata; the scheduler allows as much.
CHANNEL_OPTIONS = [("grpc.max_metadata_size", 64 << 20), ("grpc.absolute_max_metadata_size", 64 << 20)]
#: Resolving an image may take a minute before the downloads start (the scheduler's bound).
RESOLVE_MARGIN = 90.0
#: Who-holds-what is a lookup on every daemon; it must not hold a finished preheat for long.
STAT_TIMEOUT = 30.0
MAX_RESULT = 64 << 20
#: Entries kept per list of a cluster's stored result (tasks by host, hosts); ``truncated`` then has the counts.
MAX_LISTED = 10_000
MAX_ERROR = 2048


@dataclass(frozen=True, slots=True)
class RegistryTLS:
    """How schedulers verify registries for this manager's jobs (``job.preheat.tls``): extra CAs (DER), or not."""

    certificate_chain: tuple[bytes, ...] = ()
    insecure_skip_verify: bool = False

    def apply(self, request: Any) -> Any:
        request.certificate_chain.extend(self.certificate_chain)
        if self.insecure_skip_verify:
            request.insecure_skip_verify = True
        return request


#: The system's roots only, verified.
DEFAULT_REGISTRY_TLS = RegistryTLS()


@dataclass(frozen=True, slots=True)
class SchedulerTarget:
    """One scheduler of a cluster, as the manager records it."""

    cluster_id: int
    address: str
    hostname: str = ""


#: Given target cluster ids (empty: every cluster), return each cluster's active schedulers, preferred first.
SchedulerDirectory = Callable[[Sequence[int]], Awaitable[Mapping[int, Sequence[SchedulerTarget]]]]
#: Return a channel to a scheduler address; the factory owns (caches and closes) its channels.
ChannelFactory = Callable[[str], grpc.aio.Channel]
ProgressCallback = Callable[[Mapping[str, Any]], Awaitable[None]]


def decode_result(data: bytes) -> dict[str, Any]:
    """Decode the scheduler's result trailer (bounded: a hostile scheduler cannot blow memory)."""
    inflater = zlib.decompressobj()
    raw = inflater.decompress(data, MAX_RESULT)
    if inflater.unconsumed_tail:
        raise ValueError("preheat result is larger than 64 MiB")
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("preheat result is not an object")
    return doc


def _error(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        text = f"{exc.code().name}: {exc.details() or ''}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact_text(text)[:MAX_ERROR]


def _redacted(task: Any) -> Any:
    if isinstance(task, dict) and isinstance(task.get("url"), str):
        return {**task, "url": redact_url(task["url"])}
    return task


class PreheatRun:
    """One attempt at a preheat job over its target clusters."""

    def __init__(
        self,
        args: PreheatArgs,
        schedulers: Mapping[int, Sequence[SchedulerTarget]],
        channels: ChannelFactory,
        *,
        progress: ProgressCallback | None = None,
        stat: bool = True,
        registry_tls: RegistryTLS = DEFAULT_REGISTRY_TLS,
    ) -> None:
        self.registry_tls = registry_tls
        self.args = args
        self.schedulers = schedulers
        self.channels = channels
        self.progress = progress
        self.stat = stat
        self.group_uuid = f"group_{uuid.uuid4()}"
        self._done = 0

    async def run(self) -> tuple[str, dict[str, Any]]:
        """Run on every cluster; return the job's state and Dragonfly-shaped result."""
        created = utcnow()
        if not self.schedulers:
            state, job_states = FAILURE, [self._job_state(0, [], "no scheduler cluster to preheat in", created)]
        else:
            job_states = list(
                await asyncio.gather(*(self._cluster(cid, targets) for cid, targets in self.schedulers.items()))
            )
            state = SUCCESS if all(s["state"] == SUCCESS for s in job_states) else FAILURE
        return state, {
            "group_uuid": self.group_uuid,
            "state": state,
            "created_at": rfc3339(created),
            "updated_at": rfc3339(utcnow()),
            "job_states": job_states,
        }

    def _job_state(
        self, cluster_id: int, results: list[dict[str, Any]], error: str, created: Any, extra: Mapping[str, Any] = {}
    ) -> dict[str, Any]:
        return {
            "task_uuid": f"task_{uuid.uuid4()}",
            "task_name": "preheat",
            "state": FAILURE if error else SUCCESS,
            "results": results,
            "error": error,
            "created_at": rfc3339(created),
            "ttl": 0,
            "scheduler_cluster_id": cluster_id,
            **extra,
        }

    async def _cluster(self, cluster_id: int, targets: Sequence[SchedulerTarget]) -> dict[str, Any]:
        created = utcnow()
        started = time.monotonic()
        if not targets:
            error = f"scheduler cluster {cluster_id} has no active scheduler"
            return self._job_state(cluster_id, [], error, created)
        error = ""
        result: dict[str, Any] = {}
        used: SchedulerTarget | None = None
        for index, target in enumerate(targets):
            used = target
            try:
                result = await self._preheat_on(target)
                error = ""
                break
            except grpc.aio.AioRpcError as exc:
                error = _error(exc)
                if exc.code() != grpc.StatusCode.UNAVAILABLE or index == len(targets) - 1:
                    break
                log.info("scheduler unavailable, trying the next", extra={"scheduler": target.address})
            except ValueError as exc:
                error = f"scheduler {target.address} answered a bad preheat result: {exc}"[:MAX_ERROR]
                break
        # A file URL may carry credentials (userinfo, a signed query): the job answer shows the redacted form.
        success = [_redacted(task) for task in result.get("success_tasks", [])]
        failure = [_redacted(task) for task in result.get("failure_tasks", [])]
        if not error:
            reached = {task.get("url") for task in success}
            missed = sorted({task.get("url") for task in failure if task.get("url") not in reached})
            if missed:
                reasons = sorted({str(task.get("description", "")) for task in failure if task.get("url") in missed})
                error = f"{len(missed)} URL(s) reached no host: {'; '.join(reasons)}"[:MAX_ERROR]
            elif not success:
                error = "the preheat reached no host"
        entry: dict[str, Any] = {
            "success_tasks": success[:MAX_LISTED],
            "failure_tasks": failure[:MAX_LISTED],
            "scheduler_cluster_id": cluster_id,
        }
        extra: dict[str, Any] = {"scheduler": used.address if used else "", "seconds": time.monotonic() - started}
        if self.stat and used is not None and (success or failure):
            try:
                peers = await self._stat_on(used)
                entry["peers"] = peers[:MAX_LISTED]
            except (grpc.aio.AioRpcError, ValueError) as exc:
                peers = []
                extra["stat_error"] = _error(exc)
        else:
            peers = []
        if max(len(success), len(failure), len(peers)) > MAX_LISTED:
            # Every job answer carries its result (a list of 1,000 jobs too): the counts stay whole, the lists not.
            extra["truncated"] = {"success_tasks": len(success), "failure_tasks": len(failure), "peers": len(peers)}
        self._done += 1
        if self.progress is not None:
            await self.progress({"clusters": len(self.schedulers), "clusters_done": self._done})
        return self._job_state(cluster_id, [entry], error, created, extra)

    async def _preheat_on(self, target: SchedulerTarget) -> dict[str, Any]:
        stub = scheduler_pb2_grpc.SchedulerStub(self.channels(target.address))  # type: ignore[no-untyped-call]
        merged: dict[str, Any] = {"success_tasks": [], "failure_tasks": []}
        for request in map(self.registry_tls.apply, self.args.preheat_requests()):
            method = stub.PreheatImage if self.args.type == "image" else stub.PreheatFile
            call = method(request, metadata=((WAIT_KEY, "true"),), timeout=self.args.timeout + RESOLVE_MARGIN)
            await call
            trailing = dict(await call.trailing_metadata() or ())
            if RESULT_KEY not in trailing:
                raise ValueError("no result in the trailing metadata (is it one of our schedulers?)")
            doc = decode_result(trailing[RESULT_KEY])
            merged["success_tasks"].extend(doc.get("success_tasks") or [])
            merged["failure_tasks"].extend(doc.get("failure_tasks") or [])
        return merged

    async def _stat_on(self, target: SchedulerTarget) -> list[dict[str, Any]]:
        """Return, per host holding any of the job's URLs, which it holds finished and which partly."""
        peers: dict[tuple[str, str], dict[str, Any]] = {}
        stub = scheduler_pb2_grpc.SchedulerStub(self.channels(target.address))  # type: ignore[no-untyped-call]
        for request in map(self.registry_tls.apply, self.args.stat_requests(STAT_TIMEOUT)):
            if self.args.type == "image":
                image = await stub.StatImage(request, timeout=STAT_TIMEOUT + RESOLVE_MARGIN)
                holdings = [(p.hostname, p.ip, [(x.url, x.is_finished) for x in p.cached_layers]) for p in image.peers]
            else:
                files = await stub.StatFile(request, timeout=STAT_TIMEOUT + 5)
                holdings = [(p.hostname, p.ip, [(x.url, x.is_finished) for x in p.cached_files]) for p in files.peers]
            for hostname, ip, held in holdings:
                peer = peers.setdefault((hostname, ip), {"hostname": hostname, "ip": ip, "cached": [], "partial": []})
                for url, finished in held:
                    peer["cached" if finished else "partial"].append(redact_url(url))
        return list(peers.values())
