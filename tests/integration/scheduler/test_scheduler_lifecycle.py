"""Host, peer and task RPCs, DeleteHost and garbage collection against a real scheduler process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from dragonfly_api import scheduler_pb2

from tests.waiting import eventually

TASK = "d" * 64


async def _not_found(coro) -> bool:
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND
    return False


async def test_list_hosts_by_type(start_scheduler, helpers):
    cluster = await start_scheduler()
    normal = await cluster.announce(helpers.host("peer-a", idc="idc-1"))
    seed = await cluster.announce(helpers.host("seed-a", seed=True, ip="127.0.0.1"))
    hosts = await cluster.stub.ListHosts(scheduler_pb2.ListHostsRequest())
    assert sorted(h.id for h in hosts.hosts) == sorted([normal.id, seed.id])
    seeds = await cluster.stub.ListHosts(scheduler_pb2.ListHostsRequest(type=1))
    assert [h.id for h in seeds.hosts] == [seed.id]
    assert seeds.hosts[0] == seed
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cluster.stub.AnnounceHost(scheduler_pb2.AnnounceHostRequest(host=helpers.host("bad", port=0)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "invalid AnnounceHostRequest.host.port: value must be inside range [1024, 65535)"


async def test_delete_host_removes_its_peers_and_the_child_is_rescheduled_elsewhere(start_scheduler, helpers):
    cluster = await start_scheduler(backToSourceCount=2)
    parents = []
    for name in ("parent-1", "parent-2"):
        peer = cluster.peer(await cluster.announce(helpers.host(name)), TASK)
        await peer.register(helpers.download(need_back_to_source=True))
        await peer.response()
        await peer.back_to_source_started()
        await peer.piece(0)
        await cluster.wait_pieces(peer, 1)
        parents.append(peer)
    child = cluster.peer(await cluster.announce(helpers.host("child")), TASK)
    await child.register(helpers.download())
    assert len((await child.response()).normal_task_response.candidate_parents) == 2
    await child.started()

    gone = parents[0]
    await cluster.stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=gone.host.id))
    assert await _not_found(
        cluster.stub.StatPeer(scheduler_pb2.StatPeerRequest(host_id="test-client", task_id=TASK, peer_id=gone.peer_id))
    )
    hosts = await cluster.stub.ListHosts(scheduler_pb2.ListHostsRequest())
    assert gone.host.id not in {h.id for h in hosts.hosts}
    # The client reschedules without naming parents to avoid: only the remaining one is offered.
    await child.send(reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest())
    assert [p.id for p in (await child.response()).normal_task_response.candidate_parents] == [parents[1].peer_id]
    assert await _not_found(cluster.stub.DeleteHost(scheduler_pb2.DeleteHostRequest(host_id=gone.host.id)))


async def test_stat_and_delete_task_and_peer(start_scheduler, helpers):
    # A normal peer the scheduler sends to the origin vouches for its digests only in this mode (docs/security.md).
    cluster = await start_scheduler(pieceDigestSources="backToSourcePeers")
    host = await cluster.announce(helpers.host("peer-a"))
    a = cluster.peer(host, TASK)
    await a.register(helpers.download(tag="x"))
    await a.response()
    await a.back_to_source_started()
    await a.piece(0)
    await a.piece(2)
    peer = await cluster.wait_pieces(a, 2)
    assert peer.state == "BackToSource"
    assert peer.need_back_to_source is True
    assert [(p.number, p.offset, p.length) for p in peer.pieces] == [(0, 0, 4096), (2, 8192, 4096)]
    assert peer.host.id == host.id
    task = await cluster.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id="test-client", task_id=TASK))
    assert (task.state, task.peer_count, task.piece_count, task.tag) == ("Running", 1, 4, "x")
    assert [p.digest for p in task.pieces] == ["crc32:0", "crc32:2"]

    await cluster.stub.DeleteTask(scheduler_pb2.DeleteTaskRequest(host_id=host.id, task_id=TASK))
    assert await _not_found(
        cluster.stub.StatPeer(scheduler_pb2.StatPeerRequest(host_id="test-client", task_id=TASK, peer_id=a.peer_id))
    )
    assert await _not_found(
        cluster.stub.DeletePeer(scheduler_pb2.DeletePeerRequest(host_id="test-client", task_id=TASK, peer_id="nope"))
    )
    assert await _not_found(
        cluster.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id="test-client", task_id="e" * 64))
    )


async def test_gc_removes_silent_hosts_failed_peers_and_empty_tasks(start_scheduler, helpers):
    cluster = await start_scheduler(
        gc={"peerGCInterval": "100ms", "taskGCInterval": "100ms", "hostGCInterval": "100ms"}
    )
    quiet = await cluster.announce(helpers.host("quiet"), interval=0.3)
    steady = await cluster.announce(helpers.host("steady"))
    a = cluster.peer(quiet, TASK)
    await a.register(helpers.download())
    await a.response()
    b = cluster.peer(steady, "f" * 64)
    await b.register(helpers.download())
    await b.response()
    await b.send(download_peer_failed_request=scheduler_pb2.DownloadPeerFailedRequest(description="disk full"))
    await b.closed()

    async def quiet_host_gone() -> bool:
        hosts = await cluster.stub.ListHosts(scheduler_pb2.ListHostsRequest())
        return quiet.id not in {h.id for h in hosts.hosts}

    await eventually(quiet_host_gone, 5, "the quiet host to be gone")
    assert await _not_found(
        cluster.stub.StatPeer(scheduler_pb2.StatPeerRequest(host_id="test-client", task_id=TASK, peer_id=a.peer_id))
    )

    async def tasks_gone() -> bool:
        return await _not_found(
            cluster.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id="test-client", task_id=TASK))
        ) and await _not_found(
            cluster.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id="test-client", task_id="f" * 64))
        )

    await eventually(tasks_gone, 5, "the tasks to be gone")
    hosts = await cluster.stub.ListHosts(scheduler_pb2.ListHostsRequest())
    assert [h.id for h in hosts.hosts] == [steady.id]
    assert await cluster.metric("dragonfly_scheduler_peers", 'state="Failed"') == 0


def test_cli_rejects_a_bad_config_with_exit_status_2(tmp_path):
    path = tmp_path / "scheduler.yaml"
    path.write_text("scheduler: {retryLimit: many}\n")
    result = subprocess.run(
        [sys.executable, "-m", "dragonfly.cli.scheduler", "--config", str(path)],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"{path}: scheduler.retryLimit: expected an integer, got 'many'")
    assert result.stdout == ""
