"""What a job stores from a scheduler's preheat answer (a gRPC scheduler in this process on 127.0.0.1): URLs with
credentials redacted, and lists cut at MAX_LISTED with the whole counts kept, so no job answer grows without bound."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from dragonfly_api import scheduler_pb2_grpc
from google.protobuf import empty_pb2

from dragonfly.manager.jobs.args import parse_args
from dragonfly.manager.jobs.preheat import CHANNEL_OPTIONS, MAX_LISTED, RESULT_KEY, PreheatRun, SchedulerTarget

HOSTS = MAX_LISTED + 50


class Scheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Answers every PreheatFile with HOSTS successes and one failure for the URL it was asked for."""

    async def PreheatFile(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> empty_pb2.Empty:
        doc = {
            "success_tasks": [{"url": request.url, "hostname": f"host-{i}", "ip": "10.0.0.1"} for i in range(HOSTS)],
            "failure_tasks": [{"url": request.url, "hostname": "bad", "ip": "10.0.0.2", "description": "refused"}],
        }
        context.set_trailing_metadata(((RESULT_KEY, zlib.compress(json.dumps(doc).encode())),))
        return empty_pb2.Empty()


@pytest.fixture
async def scheduler() -> AsyncIterator[str]:
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(Scheduler(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_results_are_redacted_and_bounded(scheduler: str) -> None:
    signed = "https://user:pw-in-url-7@origin.example.com/f.bin?X-Amz-Signature=sig-in-url-7"
    channel = grpc.aio.insecure_channel(scheduler, options=CHANNEL_OPTIONS)
    try:
        run = PreheatRun(
            parse_args({"type": "file", "url": signed}),
            {1: [SchedulerTarget(1, scheduler, "scheduler")]},
            lambda _address: channel,
            stat=False,
        )
        state, result = await run.run()
    finally:
        await channel.close()
    assert state == "SUCCESS", result
    [cluster] = result["job_states"]
    [entry] = cluster["results"]
    assert len(entry["success_tasks"]) == MAX_LISTED
    assert cluster["truncated"] == {"success_tasks": HOSTS, "failure_tasks": 1, "peers": 0}
    assert entry["failure_tasks"][0]["description"] == "refused"
    shown = json.dumps(result)
    assert "pw-in-url-7" not in shown
    assert "sig-in-url-7" not in shown
    assert entry["success_tasks"][0]["url"] == "https://***@origin.example.com/f.bin?X-Amz-Signature=***"
