"""The console's swarm call on a real scheduler: who got which bytes from whom, and who may ask."""

from __future__ import annotations

import grpc
import pytest

from dragonfly.common import swarm

TASK = "c" * 64
URL = "http://user:secret@origin.test/file?X-Amz-Signature=secret"
PIECE = 4096


async def test_swarm_answer_names_peers_bytes_by_source_and_edges(start_scheduler, helpers):
    cluster = await start_scheduler()
    host_a = await cluster.announce(helpers.host("peer-a"))
    host_b = await cluster.announce(helpers.host("peer-b"))
    a = cluster.peer(host_a, TASK)
    await a.register(helpers.download(URL))
    # No seed peer: the first peer goes to the origin.
    assert (await a.response()).WhichOneof("response") == "need_back_to_source_response"
    await a.back_to_source_started()
    for number in range(3):
        await a.piece(number)
    await cluster.wait_pieces(a, 3)
    b = cluster.peer(host_b, TASK)
    await b.register(helpers.download(URL))
    assert [p.id for p in (await b.response()).normal_task_response.candidate_parents] == [a.peer_id]
    await b.started()
    await b.piece(0, parent_id=a.peer_id)
    await b.piece(1, parent_id=a.peer_id)
    await cluster.wait_pieces(b, 2)

    answer = await swarm.fetch(cluster.channel, TASK)
    assert (answer["found"], answer["task_id"], answer["total_pieces"], answer["content_length"]) == (
        True,
        TASK,
        4,
        4 * PIECE,
    )
    peers = {p["id"]: p for p in answer["peers"]}
    assert peers[a.peer_id]["bytes_from_source"] == 3 * PIECE
    assert peers[a.peer_id]["bytes_from_parents"] == 0
    assert (peers[a.peer_id]["hostname"], peers[a.peer_id]["is_seed"], peers[a.peer_id]["state"]) == (
        "peer-a",
        False,
        "BackToSource",
    )
    assert (peers[b.peer_id]["finished_pieces"], peers[b.peer_id]["bytes_from_parents"]) == (2, 2 * PIECE)
    assert answer["edges"] == [
        {"parent": a.peer_id, "child": b.peer_id, "bytes": 2 * PIECE, "pieces": 2, "active": True}
    ]

    stats = await swarm.fetch_stats(cluster.channel)
    assert stats == {
        "hosts": 2,
        "seed_hosts": 0,
        "tasks": 1,
        "tasks_in_flight": 1,
        "peers_in_flight": 2,
        "traffic": {
            "hour": {"source": 3 * PIECE, "peers": 2 * PIECE},
            "day": {"source": 3 * PIECE, "peers": 2 * PIECE},
        },
    }

    recent = await swarm.fetch_tasks(cluster.channel)
    assert recent["total"] == 1
    assert [(t["task_id"], t["peers"], t["peers_in_flight"], t["state"]) for t in recent["tasks"]] == [
        (TASK, 2, 2, "Running")
    ]
    # Credentials in a URL never reach the console.
    assert recent["tasks"][0]["url"] == answer["url"]
    assert "secret" not in answer["url"]
    assert answer["url"].startswith("http://")

    listed = {h["hostname"]: h for h in (await swarm.fetch_hosts(cluster.channel))["hosts"]}
    assert set(listed) == {"peer-a", "peer-b"}
    assert (listed["peer-a"]["type"], listed["peer-a"]["ip"], listed["peer-a"]["peer_count"]) == (
        "normal",
        host_a.ip,
        1,
    )
    # peer-b is scheduled on peer-a: one upload in flight on peer-a's host.
    assert listed["peer-a"]["concurrent_upload_count"] == 1
    assert listed["peer-a"]["concurrent_upload_limit"] > 0

    # The edge keeps its bytes after the download ends and the scheduler drops the DAG edge.
    await b.finished()
    answer = await swarm.fetch(cluster.channel, TASK)
    assert answer["edges"] == [
        {"parent": a.peer_id, "child": b.peer_id, "bytes": 2 * PIECE, "pieces": 2, "active": False}
    ]


async def test_swarm_call_refuses_peers_bad_requests_and_knows_no_unknown_task(start_scheduler, helpers):
    cluster = await start_scheduler()
    assert await swarm.fetch(cluster.channel, "d" * 64) == {
        "task_id": "d" * 64,
        "found": False,
        "peers": [],
        "edges": [],
    }
    host = await cluster.announce(helpers.host("peer-a"))
    # A peer's certificate may not list other hosts' downloads.
    peer_channel = cluster._host_channels[(host.hostname, host.ip, False)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await swarm.fetch(peer_channel, TASK)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for call_of in (swarm.fetch_stats, swarm.fetch_hosts, swarm.fetch_tasks):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call_of(peer_channel)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await swarm.fetch(cluster.channel, "../etc/passwd")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    call = cluster.channel.unary_unary(swarm.METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as undecodable:
        await call(b"not json", timeout=5)
    assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT
