"""Jobs over REST: ``/api/v1/jobs`` (console, scripts) and ``/oapi/v1/jobs`` (Dragonfly's Open API, which Harbor's
Dragonfly provider calls with a personal access token holding the ``job`` scope).

Answers follow Dragonfly's job JSON: an integer ``id``, RFC 3339 times with their zone, ``state`` only ever
``PENDING``, ``SUCCESS`` or ``FAILURE`` (Harbor fails a preheat on any other string), the per-scheduler result in
``result.job_states[].results[]``; finer progress in ``progress``. ``args`` never carries the registry
``Authorization`` header or the password a job was given. A job is created with 200, as Dragonfly does (Harbor
takes 208 for "already preheated" and anything else for an error).

Besides Dragonfly's routes (create, list, get, patch ``bio``, delete), ``POST /jobs/{id}/cancel`` cancels a job.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from dragonfly.manager import auth, models, queries
from dragonfly.manager.api import schemas
from dragonfly.manager.api.app import Extension
from dragonfly.manager.api.deps import Ctx, Page, Principal, link_params, require
from dragonfly.manager.api.errors import APIError, not_found
from dragonfly.manager.config import JOB_LEASE_RENEWALS, JobRateLimitConfig
from dragonfly.manager.context import ManagerContext
from dragonfly.manager.jobs.args import ArgsError
from dragonfly.manager.jobs.engine import JobEngine, JobNotFound
from dragonfly.manager.jobs.model import STATES, TYPE_PREHEAT, JobRecord, JobStore
from dragonfly.manager.jobs.preheat import RegistryTLS, SchedulerTarget
from dragonfly.manager.jobs.queue import JobQueue, MemoryQueue, RedisQueue
from dragonfly.manager.jobs.sealing import Sealer
from dragonfly.manager.jobs.store import DatabaseJobStore
from dragonfly.manager.ratelimit import SlidingWindow

log = logging.getLogger(__name__)

OBJ = "jobs"
EXTRA_KEY = "jobs"
LIMIT_KEY = "jobs.creation_limit"
#: Largest ``per_page`` of the job list (other lists take 1,000): every job in it carries its whole result.
MAX_JOBS_PER_PAGE = 100
#: The feature a scheduler announces when it serves preheats (UpdateScheduler.features).
PREHEAT_FEATURE = "preheat"

# ------------------------------------------------------------------------------------------ shapes (OpenAPI)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CreateJobRequest(schemas.Request):
    """Dragonfly's create-job body (``manager/types/job.go``); Harbor sends ``type``, ``args``, cluster ids.

    Unknown fields are ignored (Harbor's and Dragonfly's clients send more); no string may hold a NUL character.
    """

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64, description="job type: preheat")
    bio: str = Field("", max_length=1024)
    user_id: int | None = Field(None, description="ignored: the job belongs to the caller")
    args: dict[str, Any] = Field(default_factory=dict, description="PreheatArgs (docs/preheat.md#on-the-manager)")
    scheduler_cluster_ids: list[int] | None = Field(None, max_length=1000, description="target clusters; none: all")
    seed_peer_cluster_ids: list[int] | None = Field(None, max_length=1000, description="accepted, not used")


class UpdateJobRequest(schemas.Request):
    """What can change on a job: its description."""

    bio: str = Field(max_length=1024)


class SuccessTask(_Open):
    url: str
    hostname: str
    ip: str


class FailureTask(SuccessTask):
    description: str = ""


class PeerHoldings(_Open):
    hostname: str
    ip: str
    cached: list[str] = Field(default_factory=list, description="URLs the host holds finished")
    partial: list[str] = Field(default_factory=list, description="URLs the host holds in part")


class SchedulerResult(_Open):
    success_tasks: list[SuccessTask] = Field(default_factory=list)
    failure_tasks: list[FailureTask] = Field(default_factory=list)
    scheduler_cluster_id: int = 0
    peers: list[PeerHoldings] | None = None


class JobState(_Open):
    task_uuid: str = ""
    task_name: str = ""
    state: Literal["PENDING", "SUCCESS", "FAILURE"] = "PENDING"
    results: list[SchedulerResult] = Field(default_factory=list)
    error: str = ""
    created_at: str | None = None
    ttl: int = 0
    scheduler_cluster_id: int | None = None


class JobResult(_Open):
    group_uuid: str | None = None
    state: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    job_states: list[JobState] = Field(default_factory=list)
    error: str | None = None


class JobProgress(_Open):
    phase: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None
    attempt: int | None = None
    manager: str | None = None
    clusters: int | None = None
    clusters_done: int | None = None
    started_at: str | None = None
    finished_at: str | None = None


class ClusterRef(BaseModel):
    id: int


class JobOut(BaseModel):
    """A job as Dragonfly answers it."""

    id: int
    created_at: str = Field(description="RFC 3339 with zone")
    updated_at: str = Field(description="RFC 3339 with zone")
    is_del: int = 0
    task_id: str = ""
    bio: str = ""
    type: str
    state: Literal["PENDING", "SUCCESS", "FAILURE"]
    args: dict[str, Any]
    result: JobResult
    progress: JobProgress
    user_id: int = 0
    scheduler_clusters: list[ClusterRef] = Field(default_factory=list)
    seed_peer_clusters: list[ClusterRef] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------------- routes

Ident = Annotated[int, Path(ge=1, le=2**63 - 1)]


def engine_of(ctx: ManagerContext) -> JobEngine:
    engine = ctx.extras.get(EXTRA_KEY)
    if engine is None:
        raise APIError(503, "the job engine is not running")
    assert isinstance(engine, JobEngine)
    return engine


async def _check_clusters(ctx: ManagerContext, ids: list[int]) -> None:
    if not ids:
        return
    async with ctx.sessions() as session:
        found = set(
            (await session.scalars(select(models.SchedulerCluster.id).where(models.SchedulerCluster.id.in_(ids)))).all()
        )
    missing = [cid for cid in ids if cid not in found]
    if missing:
        raise APIError(422, f"scheduler cluster {', '.join(map(str, missing))} not found")


class JobCreationLimit:
    """``job.rateLimit``: jobs created per user and in all in a sliding window, on this manager."""

    __slots__ = ("_created", "config")

    def __init__(self, config: JobRateLimitConfig) -> None:
        self.config = config
        self._created = SlidingWindow(config.window)

    def admit(self, principal: Principal) -> None:
        """Count one job of ``principal``, or raise 429 (with ``Retry-After``) when a limit is reached."""
        window = f"{self.config.window:g} s"
        checks = [
            ("u", str(principal.user_id), self.config.per_user, f"user {principal.user_name} may create"),
            ("t", "", self.config.total, "this manager takes"),
        ]
        for kind, key, limit, who in checks:
            if limit and (wait := self._created.wait(f"{kind}\x00{key}", limit)) > 0:
                seconds = int(wait) + 1
                raise APIError(
                    429,
                    f"too many jobs: {who} at most {limit} every {window}; try again in {seconds} s",
                    headers={"Retry-After": str(seconds)},
                )
        for kind, key, limit, _who in checks:
            if limit:
                self._created.add(f"{kind}\x00{key}", limit)


def creation_limit(ctx: ManagerContext) -> JobCreationLimit:
    """Return this manager's job creation limit (made on first use)."""
    limit = ctx.extras.get(LIMIT_KEY)
    if limit is None:
        limit = ctx.extras[LIMIT_KEY] = JobCreationLimit(ctx.config.job.rate_limit)
    assert isinstance(limit, JobCreationLimit)
    return limit


def _links(request: Request, response: Response, page: int, per_page: int, total: int) -> None:
    last = max(1, math.ceil(total / per_page))
    params = link_params(request)
    links = []
    for rel, number in (
        ("first", 1),
        ("prev", page - 1 if page > 1 else None),
        ("next", page + 1 if page < last else None),
        ("last", last),
    ):
        if number is not None:
            params.update(page=str(number), per_page=str(per_page))
            links.append(f'<{request.url.path}?{urlencode(params)}>; rel="{rel}"')
    response.headers["X-Total-Count"] = str(total)
    response.headers["Link"] = ", ".join(links)


def jobs_router() -> APIRouter:
    """Return the job routes (mounted under /api/v1 and /oapi/v1)."""
    router = APIRouter(prefix=f"/{OBJ}", tags=[OBJ])
    read = Depends(require(OBJ, auth.ACTION_READ))
    write = Depends(require(OBJ, auth.ACTION_WRITE))

    async def load(engine: JobEngine, ident: int) -> JobRecord:
        job = await engine.store.get(ident)
        if job is None:
            raise not_found("job", ident)
        return job

    @router.post("", response_model=JobOut, status_code=200, summary="Create a job (preheat)")
    async def create_job(body: CreateJobRequest, ctx: Ctx, principal: Principal = write) -> Any:
        engine = engine_of(ctx)
        if body.type != TYPE_PREHEAT:
            raise APIError(422, f"job type {body.type[:64]!r} is not supported (preheat)")
        # Checked and counted in one step, with no await in between, so concurrent requests cannot overshoot.
        creation_limit(ctx).admit(principal)
        ids = list(dict.fromkeys(body.scheduler_cluster_ids or ()))
        await _check_clusters(ctx, ids)
        try:
            job = await engine.submit_preheat(
                body.args, scheduler_cluster_ids=ids, bio=body.bio, user_id=principal.user_id
            )
        except ArgsError as exc:
            raise APIError(422, str(exc)) from None
        return job.to_json()

    @router.get("", response_model=list[JobOut], summary="List jobs, newest first")
    async def list_jobs(
        request: Request,
        response: Response,
        ctx: Ctx,
        type: Annotated[str | None, Query(max_length=64)] = None,
        state: Annotated[str | None, Query(max_length=16)] = None,
        user_id: Annotated[int | None, Query(ge=1)] = None,
        page: Annotated[int, Query(ge=1, le=1_000_000, description="1-based page number")] = 1,
        # Each job carries its result (up to MAX_LISTED entries per list and cluster): 100 bounds an answer.
        per_page: Annotated[int, Query(ge=1, le=MAX_JOBS_PER_PAGE, description="jobs per page")] = 10,
        _principal: Principal = read,
    ) -> Any:
        paging = Page(page, per_page)
        if state is not None and state not in STATES:
            raise APIError(422, f"state must be one of {', '.join(STATES)}")
        store: JobStore = engine_of(ctx).store
        jobs, total = await store.query(
            type=type,
            state=state,
            user_id=user_id,
            offset=(paging.page - 1) * paging.per_page,
            limit=paging.per_page,
        )
        _links(request, response, paging.page, paging.per_page, total)
        return [job.to_json() for job in jobs]

    @router.get("/{ident}", response_model=JobOut, summary="Get a job")
    async def get_job(ident: Ident, ctx: Ctx, _principal: Principal = read) -> Any:
        return (await load(engine_of(ctx), ident)).to_json()

    @router.patch("/{ident}", response_model=JobOut, summary="Change a job's description")
    async def update_job(ident: Ident, body: UpdateJobRequest, ctx: Ctx, _principal: Principal = write) -> Any:
        engine = engine_of(ctx)
        await load(engine, ident)
        job = await engine.store.update_bio(ident, body.bio)
        if job is None:
            raise not_found("job", ident)
        return job.to_json()

    @router.post("/{ident}/cancel", response_model=JobOut, summary="Cancel a job (it ends FAILURE, phase cancelled)")
    async def cancel_job(ident: Ident, ctx: Ctx, _principal: Principal = write) -> Any:
        try:
            return (await engine_of(ctx).cancel(ident)).to_json()
        except JobNotFound:
            raise not_found("job", ident) from None

    @router.delete("/{ident}", status_code=204, summary="Delete a job (a running one is cancelled first)")
    async def delete_job(ident: Ident, ctx: Ctx, _principal: Principal = write) -> Response:
        engine = engine_of(ctx)
        try:
            await engine.cancel(ident)
        except JobNotFound:
            raise not_found("job", ident) from None
        await engine.store.delete(ident)
        return Response(status_code=204)

    return router


# ---------------------------------------------------------------------------------------------- lifecycle


def redis_url(ctx: ManagerContext) -> str | None:
    """Return the Redis URL of the job queue (``database.redis``; the broker DB), or None when not configured."""
    redis = ctx.config.database.redis
    if not redis.addrs:
        return None
    if redis.master_name:
        raise ValueError("database.redis.masterName (Sentinel) is not supported by the job queue; give one address")
    from urllib.parse import quote

    credentials = ""
    if redis.username or redis.password:
        credentials = f"{quote(redis.username, safe='')}:{quote(redis.password, safe='')}@"
    return f"redis://{credentials}{redis.addrs[0]}/{redis.broker_db}"


def make_directory(ctx: ManagerContext) -> Any:
    """Return the engine's scheduler directory over the database: each cluster's active preheat schedulers."""

    async def directory(cluster_ids: Any) -> dict[int, list[SchedulerTarget]]:
        async with ctx.sessions() as session:
            rows = await queries.active_schedulers(session, list(cluster_ids) or None, feature=PREHEAT_FEATURE)
        found: dict[int, list[SchedulerTarget]] = {cid: [] for cid in cluster_ids}
        for row in rows:
            found.setdefault(row.scheduler_cluster_id, []).append(
                SchedulerTarget(row.scheduler_cluster_id, f"{row.ip}:{row.port}", row.hostname)
            )
        return found

    return directory


def registry_tls(ctx: ManagerContext) -> RegistryTLS:
    """Return ``job.preheat.tls`` as the schedulers get it: the CA file's certificates in DER."""
    tls = ctx.config.job.preheat.tls
    chain: tuple[bytes, ...] = ()
    if tls.ca_cert:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        with open(tls.ca_cert, "rb") as pem:
            certificates = x509.load_pem_x509_certificates(pem.read())
        chain = tuple(cert.public_bytes(Encoding.DER) for cert in certificates)
    return RegistryTLS(chain, tls.insecure_skip_verify)


def job_sealer(ctx: ManagerContext) -> Sealer:
    """Return the sealer of jobs' credentials over ``job.secretKeyFile`` (the default one generated when absent)."""
    config = ctx.config
    path = config.job_secret_key_file()
    previous = [pathlib.Path(old) for old in config.job.previous_secret_key_files]
    sealer = Sealer.from_files(path, previous, generate=not config.job.secret_key_file)
    if config.database.redis.addrs and not config.job.secret_key_file:
        log.warning(
            "database.redis is set (several managers) but job.secretKeyFile is not: this manager seals job "
            "credentials with its own key %s (id %s); the others cannot open them unless they use the same file",
            path,
            sealer.key_id,
        )
    return sealer


def job_queue(ctx: ManagerContext) -> JobQueue:
    """Return the Redis queue (``database.redis``) with the configured lease, else the in-process one."""
    url = redis_url(ctx)
    if url is None:
        return MemoryQueue()
    lease = float(ctx.config.job.lease)
    return RedisQueue.from_url(url, lease=lease, renew_interval=lease / JOB_LEASE_RENEWALS)


async def start_jobs(ctx: ManagerContext) -> None:
    """Start the job engine: the database store, the Redis queue when configured (else in process), workers."""
    store = DatabaseJobStore(ctx.sessions, job_sealer(ctx))
    await store.reseal()
    queue = job_queue(ctx)
    engine = JobEngine(
        store,
        queue,
        make_directory(ctx),
        ctx.scheduler_channel,
        workers=ctx.config.job.workers,
        registry_tls=registry_tls(ctx),
    )
    await engine.start()
    ctx.extras[EXTRA_KEY] = engine
    log.info(
        "job engine started",
        extra={
            "queue": "redis" if isinstance(queue, RedisQueue) else "memory",
            "workers": engine.workers,
            "secret_key_id": store.key_id,
        },
    )


async def stop_jobs(ctx: ManagerContext) -> None:
    """Stop the workers (running jobs go back to the queue) and close the queue."""
    engine = ctx.extras.pop(EXTRA_KEY, None)
    if isinstance(engine, JobEngine):
        started = time.monotonic()
        await engine.stop()
        await engine.queue.close()
        # It runs inside the REST server's shutdown: a slow one makes the manager's stop slow (server.py).
        if (took := time.monotonic() - started) >= 1.0:
            log.warning("job engine stop was slow", extra={"seconds": round(took, 3)})


def extension() -> Extension:
    """The jobs extension of the manager (``dragonfly.manager.api.app.EXTENSION_MODULES``)."""
    return Extension(
        name="jobs",
        routers=[jobs_router()],
        open_routers=[jobs_router()],
        objects={OBJ: "job"},
        startup=start_jobs,
        shutdown=stop_jobs,
    )
