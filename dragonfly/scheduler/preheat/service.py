"""The four preheat RPCs of ``scheduler.v2.Scheduler`` (``docs/preheat.md#on-the-scheduler``).

PreheatFile / PreheatImage answer once the request is checked and (for an image) the manifests are resolved; the
downloads then run in the background, as in Dragonfly. A caller that wants the outcome sends the request metadata
``dragonfly-preheat-wait: true``: the call then lasts until the preheat ends, announces its plan in the initial
metadata ``dragonfly-preheat-plan`` (JSON: URLs, hosts, platforms) and carries the per-host result in the trailing
metadata ``dragonfly-preheat-result-bin`` (zlib-compressed JSON, Dragonfly's ``success_tasks`` /
``failure_tasks``). Cancelling such a call cancels the preheat. Our manager's jobs use this form; Dragonfly's
clients never send the key and see Dragonfly's behaviour.

Only the ``manager`` role may call them when mutual TLS is on: a preheat makes hosts fetch URLs, and a stat asks
every daemon of the cluster a question (``docs/security.md#who-may-call-what``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from dragonfly_api import scheduler_pb2
from google.protobuf import empty_pb2

from dragonfly.common import oci
from dragonfly.common.identity import ROLE_MANAGER
from dragonfly.common.redact import redact_url
from dragonfly.scheduler.preheat import plan
from dragonfly.scheduler.preheat.plan import Assignment, PlanError, PreheatSpec
from dragonfly.scheduler.preheat.run import HostChannels, PreheatResult, run_preheat
from dragonfly.scheduler.preheat.stat import stat_hosts

if TYPE_CHECKING:
    from dragonfly.scheduler.resource.host import Host
    from dragonfly.scheduler.server import SchedulerContext

log = logging.getLogger(__name__)

WAIT_KEY = "dragonfly-preheat-wait"
PLAN_KEY = "dragonfly-preheat-plan"
RESULT_KEY = "dragonfly-preheat-result-bin"
#: Registries answer manifest requests in well under this; the rest of the timeout is for the downloads.
RESOLVE_TIMEOUT = 60.0
_ROLES = (ROLE_MANAGER,)


def _wants_wait(context: grpc.aio.ServicerContext) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == WAIT_KEY and str(value).lower() in ("1", "true", "yes"):
            return True
    return False


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message.replace("\n", " ")[:4096])
    raise AssertionError("abort returned")


def _resolve_status(exc: oci.RegistryError) -> grpc.StatusCode:
    if isinstance(exc, oci.ImageNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, oci.RegistryAuthError):
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.UNAVAILABLE if exc.retryable else grpc.StatusCode.FAILED_PRECONDITION


def _ssl_context(spec: PreheatSpec) -> ssl.SSLContext | bool:
    """Verify registries against the system roots plus the request's certificate chain, unless told not to."""
    if spec.insecure_skip_verify:
        return False
    if not spec.certificate_chain:
        return True
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cadata=b"".join(spec.certificate_chain))
    except (ssl.SSLError, ValueError) as exc:
        raise PlanError(grpc.StatusCode.INVALID_ARGUMENT, f"certificate_chain is not DER certificates: {exc}") from None
    return context


class PreheatService:
    """Preheat and stat handlers over one scheduler's resource model; background runs end with ``close``."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self._ctx = ctx
        self._runs: set[asyncio.Task[PreheatResult]] = set()
        self._platform = oci.local_platform()

    @property
    def _remote_ip(self) -> str:
        return self._ctx.config.server.advertise_ip or ""

    def _channels(self) -> HostChannels:
        return HostChannels(self._ctx.config.tls().seed_peer)

    # preheat

    async def preheat_file(self, request: scheduler_pb2.PreheatFileRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._ctx.authz.require_role(context, _ROLES, "PreheatFile")
        try:
            spec = plan.spec_from_request(request)
            assignments = self._assign(spec, [spec.url])
        except PlanError as exc:
            await _abort(context, exc.code, exc.message)
        return await self._start(context, "file", spec, assignments, spec.header, platforms=())

    async def preheat_image(self, request: scheduler_pb2.PreheatImageRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._ctx.authz.require_role(context, _ROLES, "PreheatImage")
        try:
            spec = plan.spec_from_request(request)
            targets = self._image_targets(spec)
            images, header = await self._resolve(spec, list(targets))
        except PlanError as exc:
            await _abort(context, exc.code, exc.message)
        urls_by_platform = {p: image.blob_urls for p, image in images.items()}
        if spec.selection.scope == plan.SINGLE_SEED_PEER:
            assignments = self._assign(spec, [url for urls in urls_by_platform.values() for url in urls])
        else:
            hosts_by_url: dict[str, list[Host]] = {}
            for platform, hosts in targets.items():
                for url in urls_by_platform[platform]:
                    hosts_by_url.setdefault(url, []).extend(h for h in hosts if h not in hosts_by_url.get(url, ()))
            assignments = [Assignment(url, hosts) for url, hosts in hosts_by_url.items()]
        return await self._start(context, "image", spec, assignments, header, platforms=list(images))

    def _image_targets(self, spec: PreheatSpec) -> dict[oci.Platform, list[Host]]:
        """Return the platforms to resolve with the hosts that get each (single seed peer: hosts by the ring)."""
        resource = self._ctx.resource
        if spec.selection.scope == plan.SINGLE_SEED_PEER:
            if spec.platform is not None:
                return {spec.platform: []}
            # The seed holds the layers for the peers that will pull: the platforms the cluster's hosts announce.
            groups = plan.platforms_of(list(resource.hosts.values()), self._platform)
            return {platform: [] for platform in groups} or {self._platform: []}
        hosts = plan.select_hosts(resource, spec.selection)
        if spec.platform is not None:
            return {spec.platform: hosts}
        return plan.platforms_of(hosts, self._platform)

    def _assign(self, spec: PreheatSpec, urls: list[str]) -> list[Assignment]:
        """Assign file URLs (or a single seed peer's image URLs) to hosts by scope."""
        wanted = list(dict.fromkeys(urls))
        if spec.selection.scope == plan.SINGLE_SEED_PEER:
            return plan.seed_assignments(spec, self._ctx.seeds, wanted)
        hosts = plan.select_hosts(self._ctx.resource, spec.selection)
        return [Assignment(url, list(hosts)) for url in wanted]

    async def _resolve(
        self, spec: PreheatSpec, platforms: Sequence[oci.Platform]
    ) -> tuple[dict[oci.Platform, oci.ResolvedImage], dict[str, str]]:
        """Resolve the image for each platform; PlanError with the registry's reason when it cannot be."""
        try:
            ref = oci.parse_manifest_url(spec.url)
        except oci.InvalidReference as exc:
            raise PlanError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        resolver = oci.Resolver(
            ref,
            headers=spec.header,
            username=spec.username,
            password=spec.password,
            timeout=min(RESOLVE_TIMEOUT, spec.timeout),
            ssl_context=_ssl_context(spec),
        )
        try:
            async with resolver:
                images = await resolver.resolve(platforms)
        except oci.RegistryError as exc:
            raise PlanError(_resolve_status(exc), f"failed to resolve image {ref}: {exc}") from None
        return images, resolver.headers

    async def _start(
        self,
        context: grpc.aio.ServicerContext,
        kind: str,
        spec: PreheatSpec,
        assignments: list[Assignment],
        header: dict[str, str],
        *,
        platforms: Sequence[oci.Platform],
    ) -> empty_pb2.Empty:
        hosts = {host.id for assignment in assignments for host in assignment.hosts}
        summary = {"urls": len(assignments), "hosts": len(hosts), "platforms": [str(p) for p in platforms]}
        log.info(
            "preheat started",
            extra={"type": kind, "url": redact_url(spec.url), "scope": spec.selection.scope, **summary},
        )
        self._ctx.metrics.preheats.labels(kind).inc()
        job = asyncio.ensure_future(self._run(kind, spec, assignments, header))
        if not _wants_wait(context):
            self._runs.add(job)
            job.add_done_callback(self._runs.discard)
            return empty_pb2.Empty()
        await context.send_initial_metadata(((PLAN_KEY, json.dumps(summary)),))
        try:
            result = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            raise
        context.set_trailing_metadata(((RESULT_KEY, result.encode()),))
        return empty_pb2.Empty()

    async def _run(
        self, kind: str, spec: PreheatSpec, assignments: list[Assignment], header: dict[str, str]
    ) -> PreheatResult:
        channels = self._channels()
        try:
            result = await run_preheat(
                assignments, spec, header, channels, remote_ip=self._remote_ip, metrics=self._ctx.metrics
            )
        finally:
            await channels.close()
        log.info(
            "preheat finished",
            extra={
                "type": kind,
                "url": redact_url(spec.url),
                "succeeded": len(result.succeeded),
                "failed": len(result.failed),
            },
        )
        return result

    # stat

    async def stat_file(self, request: scheduler_pb2.StatFileRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._ctx.authz.require_role(context, _ROLES, "StatFile")
        try:
            spec = plan.spec_from_request(request, with_selection=False)
        except PlanError as exc:
            await _abort(context, exc.code, exc.message)
        holdings = await self._stat(spec, [spec.url])
        return scheduler_pb2.StatFileResponse(
            peers=[
                scheduler_pb2.PeerFile(
                    ip=held.host.ip,
                    hostname=held.host.hostname,
                    cached_files=[scheduler_pb2.File(url=url, is_finished=done) for url, done in held.files],
                )
                for held in holdings
            ]
        )

    async def stat_image(self, request: scheduler_pb2.StatImageRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._ctx.authz.require_role(context, _ROLES, "StatImage")
        try:
            spec = plan.spec_from_request(request, with_selection=False)
            platforms = [spec.platform] if spec.platform else self._announced_platforms()
            images, _header = await self._resolve(spec, platforms)
        except PlanError as exc:
            await _abort(context, exc.code, exc.message)
        urls = list(dict.fromkeys(url for image in images.values() for url in image.blob_urls))
        holdings = await self._stat(spec, urls)
        return scheduler_pb2.StatImageResponse(
            image=scheduler_pb2.Image(layers=[scheduler_pb2.Layer(url=url) for url in urls]),
            peers=[
                scheduler_pb2.PeerImage(
                    ip=held.host.ip,
                    hostname=held.host.hostname,
                    cached_layers=[scheduler_pb2.Layer(url=url, is_finished=done) for url, done in held.files],
                )
                for held in holdings
            ],
        )

    def _announced_platforms(self) -> list[oci.Platform]:
        groups = plan.platforms_of(list(self._ctx.resource.hosts.values()), self._platform)
        return list(groups) or [self._platform]

    async def _stat(self, spec: PreheatSpec, urls: list[str]) -> list[Any]:
        channels = self._channels()
        try:
            return await stat_hosts(
                list(self._ctx.resource.hosts.values()),
                [(url, spec.task_id(url)) for url in urls],
                channels,
                concurrent_task_count=spec.concurrent_task_count,
                concurrent_peer_count=spec.concurrent_peer_count,
                timeout=spec.timeout,
                remote_ip=self._remote_ip,
            )
        finally:
            await channels.close()

    async def close(self) -> None:
        """Cancel the background preheats (the scheduler is stopping)."""
        runs = list(self._runs)
        for run in runs:
            run.cancel()
        for run in runs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
