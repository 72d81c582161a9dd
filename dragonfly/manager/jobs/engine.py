"""The job engine: jobs submitted, queued, run by one manager each, watched, cancelled, timed out.

``submit_preheat`` checks the arguments, stores the job (``PENDING``) and queues its id. Each manager runs a few
workers that claim ids from the queue; the worker that claims a job loads it from the store (a job that already
ended is dropped: a duplicate or a re-queue after its runner died just after finishing), runs it, and ends it
with the store's conditional ``finish``. While it runs, a watcher renews the claim and looks for a cancellation;
a lost claim (another manager took the job over) stops the run without a word, a cancellation stops it and the
job ends ``FAILURE`` with the reason. A job that outlives its own timeout (plus the scheduler's resolution margin)
ends ``FAILURE`` too. ``stop`` gives running jobs back to the queue, for another manager or the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dragonfly.common.redact import redact_text, redact_url
from dragonfly.manager.jobs.args import ArgsError, PreheatArgs, parse_args
from dragonfly.manager.jobs.model import (
    FAILURE,
    PHASE_CANCELLED,
    PHASE_FAILED,
    PHASE_QUEUED,
    PHASE_RUNNING,
    PHASE_SUCCEEDED,
    SUCCESS,
    TYPE_PREHEAT,
    JobRecord,
    JobStore,
    NewJob,
    rfc3339,
    utcnow,
)
from dragonfly.manager.jobs.preheat import (
    DEFAULT_REGISTRY_TLS,
    RESOLVE_MARGIN,
    STAT_TIMEOUT,
    ChannelFactory,
    PreheatRun,
    RegistryTLS,
    SchedulerDirectory,
)
from dragonfly.manager.jobs.queue import Claim, JobQueue
from dragonfly.manager.jobs.sealing import SecretsUnavailable

log = logging.getLogger(__name__)

#: How often a running job looks for a cancellation (seconds).
CANCEL_POLL = 0.5
CANCELLED_MESSAGE = "the job was cancelled"


class JobNotFound(LookupError):
    """No job has this id."""


class JobEngine:
    """Submits and runs jobs over a store and a queue; ``start`` / ``stop`` bracket its workers."""

    def __init__(
        self,
        store: JobStore,
        queue: JobQueue,
        directory: SchedulerDirectory,
        channels: ChannelFactory,
        *,
        workers: int = 4,
        name: str | None = None,
        stat: bool = True,
        reap_interval: float = 5.0,
        requeue_interval: float = 60.0,
        registry_tls: RegistryTLS = DEFAULT_REGISTRY_TLS,
    ) -> None:
        self.registry_tls = registry_tls
        self.store = store
        self.queue = queue
        self.directory = directory
        self.channels = channels
        self.workers = workers
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.stat = stat
        self.reap_interval = reap_interval
        self.requeue_interval = requeue_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._release_on_stop = True
        self._stopping = False

    # lifecycle

    async def start(self) -> None:
        """Queue the jobs the store still has unfinished (idempotent), then start the workers and the reaper.

        A queue that cannot be reached now (Redis down) does not stop the manager: the reaper queues the
        unfinished jobs again every ``requeue_interval`` seconds.
        """
        self._stopping = False
        await self._requeue()
        self._tasks = [asyncio.create_task(self._worker(), name=f"job-worker-{i}") for i in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._reaper(), name="job-reaper"))

    async def stop(self, *, release: bool = True) -> None:
        """Stop the workers; jobs still running go back to the queue unfinished.

        ``release=False`` leaves them to lapse as a killed manager's would (tests of the take-over).
        """
        self._release_on_stop = release
        self._stopping = True
        # Cancelled again until done: a library that swallows one cancellation must not hang the manager's stop.
        tasks = set(self._tasks)
        deadline = time.monotonic() + 15.0
        while tasks:
            for task in tasks:
                task.cancel()
            _done, tasks = await asyncio.wait(tasks, timeout=0.5)
            if tasks and time.monotonic() > deadline:
                log.warning("%d job tasks did not stop within 15 s", len(tasks))
                break
        self._tasks = []

    # API

    async def submit_preheat(
        self,
        args: Any,
        *,
        scheduler_cluster_ids: Sequence[int] = (),
        bio: str = "",
        user_id: int | None = None,
    ) -> JobRecord:
        """Check and store a preheat job and queue it; ArgsError when the arguments are invalid."""
        parsed = parse_args(args)
        ids = list(dict.fromkeys(scheduler_cluster_ids or ()))
        for cluster_id in ids:
            if isinstance(cluster_id, bool) or not isinstance(cluster_id, int) or cluster_id <= 0:
                raise ArgsError("scheduler_cluster_ids must be positive integers")
        record = await self.store.create(
            NewJob(
                type=TYPE_PREHEAT,
                args=parsed.public(),
                secret=parsed.secret(),
                bio=bio,
                user_id=user_id,
                scheduler_cluster_ids=ids,
            )
        )
        progress = {"phase": PHASE_QUEUED, "attempt": 0}
        await self.store.set_progress(record.id, progress)
        record.progress = progress
        try:
            await self.queue.put(record.id)
        except Exception as exc:
            # Stored PENDING all the same: a reaper queues it once the queue answers again.
            log.warning("job %d stored but not queued yet: %s", record.id, exc)
        log.info("job submitted", extra={"job_id": record.id, "type": TYPE_PREHEAT, "url": redact_url(parsed.url)})
        return record

    async def cancel(self, job_id: int) -> JobRecord:
        """Cancel a job: a queued one never runs, a running one is stopped; an ended one is left as it is."""
        job = await self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job.done:
            return job
        await self.queue.cancel(job_id)
        progress = {**job.progress, "phase": PHASE_CANCELLED, "finished_at": rfc3339(utcnow())}
        result = {"state": FAILURE, "job_states": [], "error": CANCELLED_MESSAGE}
        await self.store.finish(job_id, FAILURE, result, progress)
        log.info("job cancelled", extra={"job_id": job_id})
        return await self.store.get(job_id) or job

    async def wait(self, job_id: int, timeout: float, interval: float = 0.2) -> JobRecord:  # noqa: ASYNC109
        """Poll the store until the job ends; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.store.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.done:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {job_id} did not end within {timeout:.0f} s (state {job.state}, progress {job.progress})"
                )
            await asyncio.sleep(interval)

    # workers

    async def _requeue(self) -> None:
        """Queue every unfinished job of the store (a no-op for those queued or held)."""
        try:
            for job_id in await self.store.unfinished():
                await self.queue.put(job_id)
        except Exception as exc:
            log.warning("cannot queue the unfinished jobs now (retried later): %s", exc)

    async def _reaper(self) -> None:
        last_requeue = time.monotonic()
        while not self._stopping:
            try:
                count = await self.queue.reap()
                if count:
                    log.info("re-queued jobs whose manager stopped renewing", extra={"count": count})
            except Exception as exc:
                log.warning("job reaper: %s", exc)
            # Jobs stored while the queue was unreachable (or whose submitter died before queueing them).
            if time.monotonic() - last_requeue >= self.requeue_interval:
                await self._requeue()
                last_requeue = time.monotonic()
            await asyncio.sleep(self.reap_interval)

    async def _worker(self) -> None:
        while not self._stopping:
            try:
                claim = await self.queue.claim(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job queue unavailable: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if claim is None:
                continue
            try:
                await self._handle(claim)
            except asyncio.CancelledError:
                if self._release_on_stop:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.queue.release(claim))
                raise
            except Exception:
                log.exception("job %d: the worker failed; the job goes back to the queue", claim.job_id)
                with contextlib.suppress(Exception):
                    await self.queue.release(claim)
                await asyncio.sleep(1.0)

    async def _handle(self, claim: Claim) -> None:
        job = await self.store.get(claim.job_id)
        if job is None or job.done:
            await self.queue.complete(claim)
            return
        progress: dict[str, Any] = {
            "phase": PHASE_RUNNING,
            "attempt": claim.attempt,
            "manager": self.name,
            "started_at": rfc3339(utcnow()),
        }
        if await self.queue.cancelled(job.id):
            await self._finish(
                claim, job, FAILURE, {"state": FAILURE, "error": CANCELLED_MESSAGE}, progress, PHASE_CANCELLED
            )
            return
        await self.store.set_progress(job.id, progress)
        log.info("job started", extra={"job_id": job.id, "attempt": claim.attempt, "manager": self.name})
        run = asyncio.create_task(self._execute(job, progress))
        outcome = await self._watch(claim, run)
        if outcome == "lost":
            log.warning("job %d: another manager took it over; this run stops", job.id)
            return
        if outcome == "cancelled":
            await self._finish(
                claim, job, FAILURE, {"state": FAILURE, "error": CANCELLED_MESSAGE}, progress, PHASE_CANCELLED
            )
            return
        try:
            state, result = run.result()
        except TimeoutError:
            timeout = _timeout_of(job)
            state, result = (
                FAILURE,
                {"state": FAILURE, "error": f"the job did not finish within its timeout ({timeout:.0f} s)"},
            )
        except Exception as exc:
            log.exception("job %d failed", job.id)
            state, result = FAILURE, {"state": FAILURE, "error": redact_text(f"{type(exc).__name__}: {exc}")[:2048]}
        phase = PHASE_SUCCEEDED if state == SUCCESS else PHASE_FAILED
        await self._finish(claim, job, state, result, progress, phase)

    async def _watch(self, claim: Claim, run: asyncio.Task[Any]) -> str:
        """Renew the claim and look for a cancellation until ``run`` ends; return done, cancelled or lost."""
        last_renew = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({run}, timeout=CANCEL_POLL)
                if done:
                    return "done"
                if await self.queue.cancelled(claim.job_id):
                    outcome = "cancelled"
                    break
                if time.monotonic() - last_renew >= self.queue.renew_interval:
                    if not await self.queue.renew(claim):
                        outcome = "lost"
                        break
                    last_renew = time.monotonic()
        except BaseException:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
            raise
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await run
        return outcome

    async def _finish(
        self,
        claim: Claim,
        job: JobRecord,
        state: str,
        result: Mapping[str, Any],
        progress: Mapping[str, Any],
        phase: str,
    ) -> None:
        final = {**progress, "phase": phase, "finished_at": rfc3339(utcnow())}
        ended = await self.store.finish(job.id, state, result, final)
        await self.queue.complete(claim)
        log.info("job finished", extra={"job_id": job.id, "state": state, "phase": phase, "recorded": ended})

    async def _execute(self, job: JobRecord, progress: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if job.type != TYPE_PREHEAT:
            return FAILURE, {"state": FAILURE, "error": f"job type {job.type!r} is not supported"}
        try:
            args = parse_args(job.args, await self.store.secrets(job.id))
        except SecretsUnavailable as exc:
            # Retrying on another manager would not help if the keys differ: the operator must act; say how.
            log.error("%s", exc)
            return FAILURE, {"state": FAILURE, "error": str(exc)}
        async with asyncio.timeout(_budget(args)):
            schedulers = await self.directory(job.scheduler_cluster_ids)

            async def report(update: Mapping[str, Any]) -> None:
                progress.update(update)
                await self.store.set_progress(job.id, progress)

            run = PreheatRun(
                args, schedulers, self.channels, progress=report, stat=self.stat, registry_tls=self.registry_tls
            )
            return await run.run()


def _budget(args: PreheatArgs) -> float:
    return args.timeout + RESOLVE_MARGIN + STAT_TIMEOUT + 30.0


def _timeout_of(job: JobRecord) -> float:
    try:
        return _budget(parse_args(job.args))
    except ArgsError:
        return 0.0
