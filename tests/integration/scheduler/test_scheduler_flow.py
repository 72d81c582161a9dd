"""The scheduler's decisions over a real process: seed trigger, parents, bad parents, back-to-source cap."""

from __future__ import annotations

import asyncio

import grpc
from dragonfly_api import common_pb2, scheduler_pb2

TASK = "b" * 64


async def _seed_fetching(start_scheduler, seed_endpoint, helpers, content_length: int):
    """A scheduler whose seed peer, triggered by child A's register, has been sent to the origin and started."""
    cluster = await start_scheduler()
    seed_host = await cluster.announce(
        helpers.host("seed-1", seed=True, ip="127.0.0.1", port=seed_endpoint.port, max_tx_bandwidth=10**10)
    )
    host_a = await cluster.announce(helpers.host("peer-a", max_tx_bandwidth=10**9))
    a = cluster.peer(host_a, TASK)
    await a.register(helpers.download(content_length=content_length))
    async with asyncio.timeout(5):
        await seed_endpoint.called.wait()
    seed = cluster.peer(seed_host, TASK)
    await seed.register(seed_endpoint.calls[0].download)
    assert (await seed.response()).WhichOneof("response") == "need_back_to_source_response"
    await seed.back_to_source_started()
    return cluster, a, seed


async def test_first_peer_triggers_seed_then_gets_it_as_parent_and_second_peer_gets_the_first(
    start_scheduler, seed_endpoint, helpers
):
    cluster = await start_scheduler()
    seed_host = await cluster.announce(
        helpers.host("seed-1", seed=True, ip="127.0.0.1", port=seed_endpoint.port, max_tx_bandwidth=10**10)
    )
    host_a = await cluster.announce(helpers.host("peer-a", max_tx_bandwidth=10**9))
    host_b = await cluster.announce(helpers.host("peer-b", max_tx_bandwidth=10**9))
    download = helpers.download(
        "http://origin.test/blob?X-Amz-Signature=x", tag="t1", application="app", output_path="/tmp/out-a"
    )

    a = cluster.peer(host_a, TASK)
    await a.register(download)
    async with asyncio.timeout(5):
        await seed_endpoint.called.wait()
    forwarded = seed_endpoint.calls[0].download
    assert forwarded.url == download.url
    assert forwarded.need_back_to_source is True
    assert not forwarded.HasField("output_path")
    assert (forwarded.tag, forwarded.application, forwarded.actual_content_length) == ("t1", "app", 16384)

    # The daemon behind the seed endpoint registers its own peer, which is sent to the origin at once.
    seed = cluster.peer(seed_host, TASK)
    seed_download = common_pb2.Download()
    seed_download.CopyFrom(forwarded)
    await seed.register(seed_download)
    assert (await seed.response()).WhichOneof("response") == "need_back_to_source_response"
    await seed.back_to_source_started()
    # A gets the seed as soon as it fetches from the origin, before its first piece: the child connects to it
    # meanwhile (docs/architecture.md#control-plane).
    response = await a.response()
    parents = response.normal_task_response.candidate_parents
    assert [p.id for p in parents] == [seed.peer_id]
    assert (parents[0].host.ip, parents[0].host.port, parents[0].host.download_port) == (
        "127.0.0.1",
        seed_endpoint.port,
        seed_endpoint.port,
    )
    assert (parents[0].host.id, parents[0].host.type) == (seed_host.id, 1)
    assert (parents[0].task.id, parents[0].task.content_length) == (TASK, 16384)
    assert parents[0].state == "BackToSource"
    assert list(parents[0].task.pieces) == [], "nothing is trusted yet"

    # The seed's digest of piece 0 is what the child checks the piece against: StatTask hands it out.
    await seed.piece(0)
    await cluster.wait_pieces(seed, 1)
    task = await cluster.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=host_a.id, task_id=TASK))
    assert [(p.number, p.digest) for p in task.pieces] == [(0, "crc32:0")]
    # Credentials in the URL are not handed to other peers (docs/security.md).
    assert "X-Amz-Signature=x" not in parents[0].task.url

    await a.started()
    await a.piece(0, parent_id=seed.peer_id)
    await cluster.wait_pieces(a, 1)
    b = cluster.peer(host_b, TASK)
    await b.register(helpers.download("http://origin.test/blob?X-Amz-Signature=y", tag="t1", application="app"))
    response = await b.response()
    assert {p.id for p in response.normal_task_response.candidate_parents} == {seed.peer_id, a.peer_id}
    assert len(seed_endpoint.calls) == 1

    for peer in (b, a):
        await peer.started()
        await peer.finished()
    await seed.piece(1)
    await seed.finished(back_to_source=True)
    task = await cluster.stub.StatTask(scheduler_pb2.StatTaskRequest(host_id=host_a.id, task_id=TASK))
    assert task.state == "Succeeded"
    assert [p.number for p in task.pieces] == [0, 1]
    assert await cluster.metric("dragonfly_scheduler_seed_peer_triggers_total", 'result="triggered"') == 1


async def test_a_one_piece_task_offers_the_seed_once_it_holds_the_piece_with_its_digest(
    start_scheduler, seed_endpoint, helpers
):
    # The child needs neither a SyncPieces stream to learn that the seed has the piece nor a StatTask for its
    # digest: both come with its parents (bench/RESULTS.md, "Files of one piece through the swarm").
    cluster, a, seed = await _seed_fetching(start_scheduler, seed_endpoint, helpers, content_length=3000)
    await seed.piece(0, digest="blake3:" + "0" * 64)

    response = await a.response()
    parents = response.normal_task_response.candidate_parents
    assert [(p.id, p.state) for p in parents] == [(seed.peer_id, "BackToSource")]
    assert [(p.number, p.offset, p.length) for p in parents[0].pieces] == [(0, 0, 3000)]
    assert [(p.number, p.digest) for p in parents[0].task.pieces] == [(0, "blake3:" + "0" * 64)]

    # Once it has finished, its state says so: no list.
    await seed.finished(back_to_source=True)
    host_b = await cluster.announce(helpers.host("peer-b", max_tx_bandwidth=10**9))
    b = cluster.peer(host_b, TASK)
    await b.register(helpers.download(content_length=3000))
    parents = (await b.response()).normal_task_response.candidate_parents
    assert seed.peer_id in {p.id for p in parents}
    assert all(not p.pieces for p in parents)


async def test_a_parent_holding_every_piece_of_a_larger_task_is_listed_without_them(
    start_scheduler, seed_endpoint, helpers
):
    # Listing is for one-piece tasks only: a parent that never finishes would put its whole list in every answer.
    cluster, _, seed = await _seed_fetching(start_scheduler, seed_endpoint, helpers, content_length=8192)
    await seed.piece(0)
    await seed.piece(1)
    await cluster.wait_pieces(seed, 2)
    host_b = await cluster.announce(helpers.host("peer-b", max_tx_bandwidth=10**9))
    b = cluster.peer(host_b, TASK)
    await b.register(helpers.download(content_length=8192))
    parents = (await b.response()).normal_task_response.candidate_parents
    assert seed.peer_id in {p.id for p in parents}
    assert all(not p.pieces for p in parents)


async def test_seed_failure_sends_the_waiting_child_to_the_origin(start_scheduler, seed_endpoint, helpers):
    seed_endpoint.fail_with = grpc.StatusCode.NOT_FOUND
    cluster = await start_scheduler(seedPeerWaitTimeout="30s")
    await cluster.announce(helpers.host("seed-1", seed=True, ip="127.0.0.1", port=seed_endpoint.port))
    a = cluster.peer(await cluster.announce(helpers.host("peer-a")), TASK)
    await a.register(helpers.download())
    # Well before seedPeerWaitTimeout (30 s): the failure itself sends the child away, not the wait running out.
    response = await a.response(within=20)
    assert response.WhichOneof("response") == "need_back_to_source_response"
    assert len(seed_endpoint.calls) == 1
    assert await cluster.metric("dragonfly_scheduler_seed_peer_triggers_total", 'result="failed"') == 1


async def test_zero_length_task_gets_empty_task_response(start_scheduler, helpers):
    cluster = await start_scheduler()
    a = cluster.peer(await cluster.announce(helpers.host("peer-a")), TASK)
    await a.register(helpers.download(content_length=0))
    assert (await a.response()).WhichOneof("response") == "empty_task_response"
    await a.started()
    await a.finished()
    peer = await cluster.stub.StatPeer(
        scheduler_pb2.StatPeerRequest(host_id="test-client", task_id=TASK, peer_id=a.peer_id)
    )
    assert peer.state == "Succeeded"
    assert peer.task.size_scope == common_pb2.EMPTY


async def test_metadata_only_register_gets_metadata_only_response(start_scheduler, helpers):
    cluster = await start_scheduler()
    a = cluster.peer(await cluster.announce(helpers.host("peer-a")), TASK)
    await a.register(helpers.download(metadata_only=True))
    assert (await a.response()).WhichOneof("response") == "metadata_only_response"
    await a.started()
    await a.finished()


async def _source_peer(cluster, name, helpers, pieces=(0,)):
    """Register a peer on a new host that is sent to the origin, and report pieces from there."""
    peer = cluster.peer(await cluster.announce(helpers.host(name)), TASK)
    await peer.register(helpers.download(need_back_to_source=True))
    assert (await peer.response()).WhichOneof("response") == "need_back_to_source_response"
    await peer.back_to_source_started()
    for number in pieces:
        await peer.piece(number)
    await cluster.wait_pieces(peer, len(pieces))
    return peer


async def test_piece_failures_against_a_parent_stop_the_child_getting_it(start_scheduler, helpers):
    cluster = await start_scheduler(backToSourceCount=1)
    source = await _source_peer(cluster, "source", helpers, pieces=(0, 1, 2))
    child = cluster.peer(await cluster.announce(helpers.host("child")), TASK)
    await child.register(helpers.download())
    assert [p.id for p in (await child.response()).normal_task_response.candidate_parents] == [source.peer_id]
    await child.started()
    await child.piece(0, parent_id=source.peer_id)
    await cluster.wait_pieces(child, 1)
    other = cluster.peer(await cluster.announce(helpers.host("other")), TASK)
    await other.register(helpers.download())
    assert {p.id for p in (await other.response()).normal_task_response.candidate_parents} == {
        source.peer_id,
        child.peer_id,
    }

    await other.started()
    await other.send(
        download_piece_failed_request=scheduler_pb2.DownloadPieceFailedRequest(
            piece_number=1, parent_id=child.peer_id, temporary=True
        )
    )
    await other.send(reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest(description="piece failed"))
    parents = (await other.response()).normal_task_response.candidate_parents
    assert [p.id for p in parents] == [source.peer_id]


async def test_slow_parent_is_marked_bad_and_no_longer_handed_out(start_scheduler, helpers):
    cluster = await start_scheduler(backToSourceCount=2, badParent={"minSwarmSamples": 4})
    fast = await _source_peer(cluster, "fast", helpers, pieces=(0, 1, 2, 3))
    slow = await _source_peer(cluster, "slow", helpers, pieces=(0, 1, 2, 3))
    children = []
    for index in range(2):
        child = cluster.peer(await cluster.announce(helpers.host(f"child-{index}")), TASK)
        await child.register(helpers.download())
        parents = {p.id for p in (await child.response()).normal_task_response.candidate_parents}
        # Child 1 may also get child 0: a peer with parents relays what they send it.
        assert parents - {fast.peer_id, slow.peer_id} <= {c.peer_id for c in children}
        assert {fast.peer_id, slow.peer_id} <= parents
        await child.started()
        children.append(child)
    for number in range(3):
        await children[1].piece(number, parent_id=fast.peer_id, seconds=0.012)
    await children[0].piece(0, parent_id=fast.peer_id, seconds=0.010)
    # Streams are read concurrently: the swarm's four samples must be in before the slow piece is judged.
    await cluster.wait_pieces(children[1], 3)
    await cluster.wait_pieces(children[0], 1)
    await children[0].piece(3, parent_id=slow.peer_id, seconds=2.0)
    # Later fast pieces keep child 0 itself from looking slow (Dragonfly judges a peer by its own last cost).
    for number in (1, 2):
        await children[0].piece(number, parent_id=fast.peer_id, seconds=0.010)
    await cluster.wait_pieces(children[0], 4)
    await cluster.wait_pieces(children[1], 3)

    call = cluster.stub.StatPeer(
        scheduler_pb2.StatPeerRequest(host_id="test-client", task_id=TASK, peer_id=slow.peer_id)
    )
    await call
    metadata = dict(await call.trailing_metadata())
    assert metadata["dragonfly-bad-parent"] == "true"
    assert metadata["dragonfly-bad-parent-reason"].startswith("slow: served a piece in 2.000s")
    late = cluster.peer(await cluster.announce(helpers.host("late")), TASK)
    await late.register(helpers.download())
    assert {p.id for p in (await late.response()).normal_task_response.candidate_parents} == {
        fast.peer_id,
        children[0].peer_id,
        children[1].peer_id,
    }
    assert await cluster.metric("dragonfly_scheduler_bad_parent_marks_total", 'reason="slow"') == 1


async def test_back_to_source_cap_holds_under_twenty_concurrent_registrations(start_scheduler, helpers):
    cluster = await start_scheduler(backToSourceCount=3, retryInterval="100ms", retryLimit=50)
    hosts = [await cluster.announce(helpers.host(f"herd-{i}")) for i in range(20)]
    peers = [cluster.peer(host, TASK) for host in hosts]
    await asyncio.gather(*(peer.register(helpers.download()) for peer in peers))
    reads = {peer.peer_id: asyncio.ensure_future(peer.response()) for peer in peers}
    done, pending = await asyncio.wait(reads.values(), timeout=2)
    sources = [peer for peer in peers if reads[peer.peer_id] in done]
    assert [reads[p.peer_id].result().WhichOneof("response") for p in sources] == ["need_back_to_source_response"] * 3
    assert len(pending) == 17

    for source in sources:
        await source.back_to_source_started()
        await source.piece(0)
    source_ids = {p.peer_id for p in sources}
    herd_ids = {p.peer_id for p in peers}
    offered = set()
    for peer in peers:
        if peer in sources:
            continue
        parents = (await reads[peer.peer_id]).normal_task_response.candidate_parents
        assert parents
        offered |= {p.id for p in parents}
    # Waiters released together relay for each other, so parents come from the whole herd, sources included.
    assert offered <= herd_ids
    assert offered & source_ids
    assert await cluster.metric("dragonfly_scheduler_back_to_source_total") == 3


async def test_peers_registered_together_get_each_other_as_parents(start_scheduler, seed_endpoint, helpers):
    cluster = await start_scheduler(candidateParentLimit=4)
    seed_host = await cluster.announce(helpers.host("seed-1", seed=True, ip="127.0.0.1", port=seed_endpoint.port))
    hosts = [await cluster.announce(helpers.host(f"peer-{i}")) for i in range(5)]
    peers = [cluster.peer(host, "c" * 64) for host in hosts]
    for peer in peers:
        await peer.register(helpers.download("http://origin.test/together"))
    async with asyncio.timeout(5):
        await seed_endpoint.called.wait()
    seed = cluster.peer(seed_host, "c" * 64)
    forwarded = common_pb2.Download()
    forwarded.CopyFrom(seed_endpoint.calls[0].download)
    await seed.register(forwarded)
    assert (await seed.response()).WhichOneof("response") == "need_back_to_source_response"
    await seed.back_to_source_started()
    await seed.piece(0)

    given = {}
    for peer in peers:
        response = await peer.response()
        given[peer.peer_id] = {p.id for p in response.normal_task_response.candidate_parents}
    normal = {peer.peer_id for peer in peers}
    # Released at the same moment, each was linked before the next was decided: the first gets the seed, the
    # second the seed and the first, every later one only other peers (as many as the candidate limit allows).
    with_seed = sorted((parents for parents in given.values() if seed.peer_id in parents), key=len)
    assert [len(parents & normal) for parents in with_seed] == [0, 1]
    without_seed = sorted((parents for parents in given.values() if seed.peer_id not in parents), key=len)
    assert [len(parents) for parents in without_seed] == [2, 3, 4]
    assert all(parents <= normal for parents in without_seed)
