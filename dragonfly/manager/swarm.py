"""``GET /api/v1/swarm``: one task's swarm as the schedulers see it, for the console's swarm view
(``docs/console.md#swarm-view``).

The manager asks every active scheduler (of one cluster, if asked) for the task over the console's swarm call
(``dragonfly.common.swarm``), concurrently and each within a deadline, and merges the answers: a task lives on one
scheduler per cluster (peers hash it to the same one), so answers from several clusters add up. A scheduler that
cannot answer (down, or a Dragonfly scheduler without the call) is named in ``errors``; the others still count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Query, Response

from dragonfly.common import ids
from dragonfly.common import swarm as swarm_call
from dragonfly.manager import models, queries
from dragonfly.manager.api.app import Extension
from dragonfly.manager.api.deps import DB, Ctx, require
from dragonfly.manager.api.errors import APIError

OBJECT = "swarm"
# Per scheduler; the console asks every second, so a slow scheduler must not hold the page.
DEADLINE = 3.0

router = APIRouter(tags=["swarm"])


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _error(scheduler: models.Scheduler, exc: BaseException) -> str:
    where = f"scheduler {scheduler.hostname} ({_address(scheduler.ip, scheduler.port)})"
    if isinstance(exc, grpc.aio.AioRpcError):
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return f"{where} does not report swarms (not this project's scheduler)"
        return f"{where}: {exc.code().name}: {(exc.details() or '')[:200]}"
    return f"{where}: {type(exc).__name__}: {str(exc)[:200]}"


Answers = list[tuple[models.Scheduler, dict[str, Any]]]


async def ask_all(
    session: DB,
    ctx: Ctx,
    call: Callable[[grpc.aio.Channel], Awaitable[dict[str, Any]]],
    cluster_id: int | None = None,
) -> tuple[Answers, list[str]]:
    """Make ``call`` on every active scheduler (of one cluster if given) at once; return answers and errors."""
    schedulers = await queries.active_schedulers(session, None if cluster_id is None else [cluster_id])
    results = await asyncio.gather(
        *(call(ctx.scheduler_channel(_address(s.ip, s.port))) for s in schedulers), return_exceptions=True
    )
    answers: Answers = []
    errors: list[str] = [] if schedulers else ["no active scheduler"]
    for scheduler, result in zip(schedulers, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, BaseException):
            errors.append(_error(scheduler, result))
        elif isinstance(result, dict):
            answers.append((scheduler, result))
    return answers, errors


def merge(task_id: str, answers: list[tuple[models.Scheduler, dict[str, Any]]], errors: list[str]) -> dict[str, Any]:
    """Merge the schedulers' answers into one swarm (peers tagged with the scheduler that knows them)."""
    merged: dict[str, Any] = {
        "task_id": task_id,
        "found": False,
        "url": "",
        "state": "Unknown",
        "content_length": -1,
        "piece_length": 0,
        "total_pieces": 0,
        "peers": [],
        "edges": [],
        "schedulers": [],
        "errors": errors,
    }
    for scheduler, answer in answers:
        if not answer.get("found"):
            continue
        merged["schedulers"].append(scheduler.hostname)
        if not merged["found"]:
            merged["found"] = True
            for key in ("url", "state", "content_length", "piece_length", "total_pieces"):
                if key in answer:
                    merged[key] = answer[key]
        # Schedulers are authenticated, but a malformed answer must not break the page: only objects pass.
        peers, edges = answer.get("peers"), answer.get("edges")
        for peer in peers if isinstance(peers, list) else []:
            if isinstance(peer, dict):
                merged["peers"].append({**peer, "scheduler": scheduler.hostname})
        merged["edges"].extend(e for e in (edges if isinstance(edges, list) else []) if isinstance(e, dict))
    return merged


@router.get("/swarm", summary="One task's swarm: peers, their bytes by source, parent → child edges")
async def get_swarm(
    session: DB,
    ctx: Ctx,
    _principal: Annotated[Any, Depends(require(OBJECT, "read"))],
    task_id: Annotated[str | None, Query(max_length=64, description="the task id (64 hex)")] = None,
    url: Annotated[str | None, Query(max_length=4096, description="or the URL the task was downloaded from")] = None,
    tag: Annotated[str, Query(max_length=1024)] = "",
    application: Annotated[str, Query(max_length=1024)] = "",
    scheduler_cluster_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> dict[str, Any]:
    """Ask the active schedulers for the task and merge their answers."""
    if (task_id is None) == (url is None):
        raise APIError(400, "give either task_id or url")
    if url is not None:
        if "://" not in url:
            raise APIError(400, "url: not a URL")
        task_id = ids.task_id(url, tag=tag, application=application)
    assert task_id is not None
    if not ids.is_task_id(task_id):
        raise APIError(400, "task_id: 64 lower-case hex digits")
    wanted = task_id
    answers, errors = await ask_all(
        session, ctx, lambda channel: swarm_call.fetch(channel, wanted, deadline=DEADLINE), scheduler_cluster_id
    )
    return merge(task_id, answers, errors)


@router.get("/swarm/stats", summary="The schedulers' figures: hosts, downloads in flight, bytes by source lately")
async def get_swarm_stats(
    session: DB,
    ctx: Ctx,
    _principal: Annotated[Any, Depends(require(OBJECT, "read"))],
) -> dict[str, Any]:
    """Ask every active scheduler for its overview figures and add them up."""
    answers, errors = await ask_all(session, ctx, lambda channel: swarm_call.fetch_stats(channel, deadline=DEADLINE))
    total: dict[str, Any] = {
        "schedulers": len(answers),
        "hosts": 0,
        "seed_hosts": 0,
        "tasks_in_flight": 0,
        "peers_in_flight": 0,
        "traffic": {"hour": {"source": 0, "peers": 0}, "day": {"source": 0, "peers": 0}},
        "errors": errors,
    }
    for _scheduler, result in answers:
        for key in ("hosts", "seed_hosts", "tasks_in_flight", "peers_in_flight"):
            total[key] += _count(result.get(key))
        traffic = result.get("traffic")
        for span in ("hour", "day"):
            figures = traffic.get(span) if isinstance(traffic, dict) else None
            for source in ("source", "peers"):
                total["traffic"][span][source] += _count(figures.get(source) if isinstance(figures, dict) else 0)
    return total


@router.get("/swarm/hosts", summary="The hosts the active schedulers know, with their upload load (paged)")
async def get_swarm_hosts(
    session: DB,
    ctx: Ctx,
    response: Response,
    _principal: Annotated[Any, Depends(require(OBJECT, "read"))],
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=1000)] = 10,
    host_type: Annotated[str | None, Query(alias="type", pattern=r"^(normal|super)$")] = None,
) -> dict[str, Any]:
    """Ask every active scheduler for its hosts; one page of them, by host name, with the total."""
    answers, errors = await ask_all(session, ctx, lambda channel: swarm_call.fetch_hosts(channel, deadline=DEADLINE))
    found: list[dict[str, Any]] = []
    for scheduler, result in answers:
        listed = result.get("hosts")
        for host in listed if isinstance(listed, list) else []:
            if isinstance(host, dict) and (host_type is None or host.get("type") == host_type):
                found.append({**host, "scheduler": scheduler.hostname})
    found.sort(key=lambda h: (str(h.get("hostname", "")), str(h.get("ip", "")), str(h.get("scheduler", ""))))
    response.headers["X-Total-Count"] = str(len(found))
    start = (page - 1) * per_page
    return {"items": found[start : start + per_page], "total": len(found), "errors": errors}


@router.get("/swarm/tasks", summary="The most recently active tasks the schedulers know (for the swarm view)")
async def get_swarm_tasks(
    session: DB,
    ctx: Ctx,
    _principal: Annotated[Any, Depends(require(OBJECT, "read"))],
) -> dict[str, Any]:
    """Ask every active scheduler for its recent tasks; the 100 most recently active, newest first."""
    answers, errors = await ask_all(session, ctx, lambda channel: swarm_call.fetch_tasks(channel, deadline=DEADLINE))
    found: list[dict[str, Any]] = []
    for scheduler, result in answers:
        listed = result.get("tasks")
        for task in listed if isinstance(listed, list) else []:
            if isinstance(task, dict):
                found.append({**task, "scheduler": scheduler.hostname})
    found.sort(key=_updated_at, reverse=True)
    return {"items": found[:100], "errors": errors}


def _updated_at(task: dict[str, Any]) -> float:
    value = task.get("updated_at")
    return float(value) if isinstance(value, (int, float)) else 0.0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def extension() -> Extension:
    """The swarm view's part of the manager (``EXTENSION_MODULES``)."""
    return Extension(name="swarm", routers=[router], objects={OBJECT: "cluster"})
