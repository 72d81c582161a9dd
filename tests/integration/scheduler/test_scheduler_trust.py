"""Which piece digests the scheduler trusts and which piece claims it believes (docs/security.md)."""

from __future__ import annotations

from dragonfly_api import scheduler_pb2

from tests.waiting import eventually

TASK = "c" * 64
GOOD = "blake3:" + "a" * 64
FORGED = "blake3:" + "f" * 64


async def test_only_a_seed_peers_digests_are_trusted_and_false_claims_are_refused(
    start_scheduler, seed_endpoint, helpers
):
    cluster = await start_scheduler()
    seed_host = await cluster.announce(helpers.host("seed-1", seed=True, ip="127.0.0.1", port=seed_endpoint.port))
    liar_host = await cluster.announce(helpers.host("liar", max_tx_bandwidth=10**10))
    child_host = await cluster.announce(helpers.host("child"))
    honest_host = await cluster.announce(helpers.host("honest"))
    stat = scheduler_pb2.StatTaskRequest(host_id=child_host.id, task_id=TASK)

    # The attacker asks for the origin, then reports every piece with digests of its own bytes.
    liar = cluster.peer(liar_host, TASK)
    await liar.register(helpers.download(need_back_to_source=True))
    assert (await liar.response()).WhichOneof("response") == "need_back_to_source_response"
    await liar.back_to_source_started()
    for number in range(4):
        await liar.piece(number, digest=FORGED)
    await cluster.wait_pieces(liar, 4)
    assert list((await cluster.stub.StatTask(stat)).pieces) == []

    # The seed peer's digest becomes the trusted one; the liar's later contradicting report is refused.
    seed = cluster.peer(seed_host, TASK)
    await seed.register(helpers.download(need_back_to_source=True))
    assert (await seed.response()).WhichOneof("response") == "need_back_to_source_response"
    await seed.back_to_source_started()
    await seed.piece(0, digest=GOOD)
    await cluster.wait_pieces(seed, 1)
    assert [(p.number, p.digest) for p in (await cluster.stub.StatTask(stat)).pieces] == [(0, GOOD)]

    child = cluster.peer(child_host, TASK)
    await child.register(helpers.download())
    response = await child.response()
    handed = {p.id for p in response.normal_task_response.candidate_parents}
    assert seed.peer_id in handed
    assert [(p.number, p.digest) for p in response.normal_task_response.candidate_parents[0].task.pieces] == [(0, GOOD)]
    await child.started()
    rejected = "dragonfly_scheduler_rejected_piece_claims_total"
    await child.piece(0, parent_id="127.0.0.9-nobody-never-handed-out", digest=GOOD)
    await child.piece(1, parent_id=seed.peer_id, digest=FORGED)  # the seed never had piece 1
    await child.piece(0, parent_id=seed.peer_id, digest=FORGED)  # contradicts the trusted digest

    async def all_rejected() -> bool:
        return sum([await cluster.metric(rejected, f'reason="{reason}"') for reason in _REASONS]) >= 3

    await eventually(all_rejected, 5, "the three claims to be rejected", interval=0.02)
    peer = await cluster.stub.StatPeer(
        scheduler_pb2.StatPeerRequest(host_id="test-client", task_id=TASK, peer_id=child.peer_id)
    )
    assert list(peer.pieces) == []
    assert await cluster.metric("dragonfly_scheduler_bad_parent_marks_total", 'reason="digest_mismatch"') == 1

    # An honest claim holds.
    honest = cluster.peer(honest_host, TASK)
    await honest.register(helpers.download())
    await honest.response()
    await honest.started()
    await honest.piece(0, parent_id=seed.peer_id, digest=GOOD)
    await cluster.wait_pieces(honest, 1)


_REASONS = (
    "names no parent handed to this peer",
    "the named parent does not hold the piece",
    "digest differs from the trusted one",
)
