"""Sub-scores of the evaluator and the order it gives candidates."""

from __future__ import annotations

import pytest

from dragonfly.scheduler.resource import dag
from dragonfly.scheduler.resource import peer as p
from dragonfly.scheduler.scheduling import evaluator as ev
from dragonfly.scheduler.scheduling.scheduling import Scheduling

GBIT = 1_000_000_000


def test_load_quality_uses_the_announced_bandwidth(world):
    host = world.host("h", max_tx_bandwidth=10 * GBIT)
    assert ev.load_quality(host) == pytest.approx(1.0)
    host.tx_bandwidth = 5 * GBIT
    host.upload_content_length = 10 * GBIT // 8 * 30  # 30 s worth of the link
    need = 10 * GBIT / ev.PIECE_BITS
    host.concurrent_upload_piece_count = int(need * 2)
    expected = 0.5 * 0.5 + 0.3 * 0.5 + 0.2 * (need / int(need * 2))
    assert ev.load_quality(host) == pytest.approx(expected)
    host.tx_bandwidth = 20 * GBIT
    host.upload_content_length = 10 * GBIT // 8 * 60
    assert ev.load_quality(host) == pytest.approx(0.2 * (need / int(need * 2)))


def test_load_quality_without_announced_bandwidth_counts_free_upload_slots(world):
    host = world.host("h")
    assert ev.load_quality(host) == 1.0
    host.concurrent_upload_count = host.concurrent_upload_limit // 4
    assert ev.load_quality(host) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("a", "b", "idc", "location"),
    [
        ("", "", 0.0, 0.0),
        ("IDC-1", "idc-1", 1.0, 1.0),
        ("x|y|z", "x|y|w", 0.0, 0.4),
        ("x|y", "q|y", 0.0, 0.0),
    ],
)
def test_idc_and_location_affinity(a, b, idc, location):
    assert ev.idc_affinity(a, b) == idc
    assert ev.location_affinity(a, b) == pytest.approx(location)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("", ""),
        ("IDC-1", "idc-1"),
        ("x|y|z", "x|y|w"),
        ("x|y", "q|y"),
        ("R|Z|A|B|C|D", "r|z|a|b|c|e"),  # equal in the counted elements only
        ("ΑΣ|b", "ας|B"),
    ],
)
def test_a_score_compares_the_hosts_lower_cased_idc_and_location_as_the_string_functions(world, a, b):
    # Announced with other values first: a new announcement replaces what the score compares.
    parent_host = world.host("parent", idc="other", location="other")
    child_host = world.host("child", idc="x", location="x")
    parent_host.update(world.message_of(parent_host, idc=a, location=a), 0.0, 10, world.now)
    child_host.update(world.message_of(child_host, idc=b, location=b), 0.0, 10, world.now)
    assert parent_host.idc_key == a.lower()
    idc = 1.0 if parent_host.idc_key and parent_host.idc_key == child_host.idc_key else 0.0
    assert idc == ev.idc_affinity(a, b)
    assert ev.location_key_affinity(parent_host.location_key, child_host.location_key) == ev.location_affinity(a, b)


def test_host_type_prefers_fetching_seeds_then_normal_hosts(world):
    seed = world.host("seed", seed=True)
    assert ev.host_type_score(world.peer("s1", seed, state=p.BACK_TO_SOURCE)) == 1.0
    assert ev.host_type_score(world.peer("s2", seed, state=p.SUCCEEDED)) == 0.0
    assert ev.host_type_score(world.peer("n", state=p.RUNNING)) == 0.5


def test_piece_score_counts_what_the_child_still_needs(world):
    child = world.peer("child", pieces=[0, 1])
    parent = world.peer("parent", state=p.RUNNING, pieces=[0, 1, 2, 3])
    assert ev.piece_score(parent, child, 8) == pytest.approx(2 / 6)
    done = world.peer("done", state=p.SUCCEEDED)
    assert ev.piece_score(done, child, 8) == 1.0


def test_score_order_weighs_idc_against_pieces(make_world):
    world = make_world()
    child = world.peer("child", world.host("c", idc="east"))
    # Default weights: idc 0.15 + pieces 0.2 x 4/8 beats pieces 0.2 x 8/8 beats 0.2 x 1/8.
    near = world.peer("near", world.host("n", idc="east"), state=p.RUNNING, pieces=range(4))
    rich = world.peer("rich", world.host("r", idc="west"), state=p.RUNNING, pieces=range(8))
    poor = world.peer("poor", world.host("q", idc="west"), state=p.RUNNING, pieces=[0])
    evaluator = ev.Evaluator(world.config.evaluator)
    assert evaluator.sort([poor, rich, near], child) == [near, rich, poor]


def test_children_spread_across_equal_parents_as_load_builds(make_world):
    world = make_world(candidateParentLimit=1)
    scheduling = Scheduling(world.config, world.resource.config and _no_block(), world.metrics)
    parents = [world.peer(f"parent-{i}", state=p.RUNNING, pieces=[0]) for i in range(3)]
    chosen = []
    for index in range(6):
        child = world.peer(f"child-{index}")
        best = scheduling.find_candidate_parents(child, world.now)
        dag.add_edges(best, child)
        chosen.append(best[0].id)
    assert sorted(chosen) == sorted(parent.id for parent in parents for _ in range(2))


def _no_block():
    from dragonfly.scheduler.config import UploadBlockRule

    return UploadBlockRule()
