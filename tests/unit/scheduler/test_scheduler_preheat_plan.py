"""Preheat requests and host selection (dragonfly/scheduler/preheat/plan.py), without processes."""

from __future__ import annotations

import grpc
import pytest
from dragonfly_api import common_pb2, scheduler_pb2
from google.protobuf import duration_pb2

from dragonfly.common import ids, oci
from dragonfly.scheduler.config import SchedulerConfig
from dragonfly.scheduler.preheat import plan
from dragonfly.scheduler.preheat.run import Outcome, PreheatResult, decode_result
from dragonfly.scheduler.resource.manager import ResourceManager


def resource_with(normal: int, seeds: int) -> ResourceManager:
    resource = ResourceManager(SchedulerConfig())
    for i in range(normal + seeds):
        seed = i >= normal
        name = f"{'seed' if seed else 'peer'}-{i}"
        message = common_pb2.Host(
            id=f"10.0.0.{i}-{name}" + ("-seed" if seed else ""),
            type=1 if seed else 0,
            hostname=name,
            ip=f"10.0.0.{i}",
            port=4000,
            os="linux",
            build=common_pb2.Build(git_version="x", platform="aarch64" if i % 2 else "x86_64"),
        )
        resource.announce_host(message, 0.0, 0.0)
    return resource


def test_defaults_are_dragonflys() -> None:
    spec = plan.spec_from_request(scheduler_pb2.PreheatFileRequest(url="http://o/f"))
    assert spec.selection == plan.Selection(plan.SINGLE_SEED_PEER)
    assert (spec.concurrent_task_count, spec.concurrent_peer_count, spec.timeout) == (8, 500, 3600.0)
    assert spec.filtered_query_params == ids.DEFAULT_FILTERED_QUERY_PARAMS
    assert spec.task_id("http://o/f") == ids.task_id("http://o/f")


def test_request_fields_are_carried() -> None:
    request = scheduler_pb2.PreheatImageRequest(
        url="https://r/v2/a/manifests/1",
        piece_length=8 * 1024 * 1024,
        tag="t",
        application="app",
        filtered_query_params=["x"],
        header={"Authorization": "Bearer t"},
        platform="linux/aarch64",
        scope="all_peers",
        ips=["10.0.0.1", "::1"],
        count=3,
        percentage=50,
        concurrent_task_count=2,
        concurrent_peer_count=9,
        timeout=duration_pb2.Duration(seconds=90),
        priority=common_pb2.LEVEL3,
    )
    spec = plan.spec_from_request(request)
    assert spec.selection == plan.Selection("all_peers", frozenset({"10.0.0.1", "::1"}), 3, 50)
    assert spec.platform == oci.Platform.parse("linux/arm64")
    assert (spec.concurrent_task_count, spec.concurrent_peer_count, spec.timeout) == (2, 9, 90.0)
    download = spec.download("https://r/v2/a/blobs/sha256:" + "a" * 64, {"Authorization": "Bearer t"}, 5.0, "10.9.0.1")
    assert (download.tag, download.application, download.piece_length, download.priority) == (
        "t",
        "app",
        8 * 1024 * 1024,
        common_pb2.LEVEL3,
    )
    assert list(download.filtered_query_params) == ["x"]
    assert download.request_header["Authorization"] == "Bearer t"
    assert download.timeout.seconds == 5
    assert download.remote_ip == "10.9.0.1"
    assert spec.task_id(download.url) == ids.task_id(
        download.url, tag="t", application="app", piece_length=8 * 1024 * 1024, filtered_query_params=["x"]
    )


def test_blob_digest_task_ids() -> None:
    request = scheduler_pb2.PreheatImageRequest(url="https://r/v2/a/manifests/1", enable_task_id_based_blob_digest=True)
    spec = plan.spec_from_request(request)
    assert spec.task_id("https://r/v2/a/blobs/sha256:" + "b" * 64) == "b" * 64
    assert spec.download("https://r/v2/a/blobs/x", {}, 1, "").enable_task_id_based_blob_digest


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (scheduler_pb2.PreheatFileRequest(url="http://o/f", count=0, scope="all_peers"), "count"),
        (scheduler_pb2.PreheatFileRequest(url="http://o/f", percentage=101), "percentage"),
        (scheduler_pb2.PreheatFileRequest(url="http://o/f", ips=["1.2.3.4"] * 101), "at most 100"),
        (scheduler_pb2.PreheatFileRequest(url="http://o/f", concurrent_task_count=101), "concurrent_task_count"),
        (scheduler_pb2.PreheatFileRequest(url="http://o/f", concurrent_peer_count=0), "concurrent_peer_count"),
        (scheduler_pb2.PreheatFileRequest(url="http://o/f", timeout=duration_pb2.Duration(seconds=-1)), "timeout"),
        (scheduler_pb2.PreheatFileRequest(url="http://o/f", hdfs=common_pb2.HDFS()), "hdfs"),
        (scheduler_pb2.PreheatImageRequest(url="https://r/v2/a/manifests/1", platform="arm64"), "os/arch"),
    ],
)
def test_invalid_requests(request_: object, message: str) -> None:
    with pytest.raises(plan.PlanError) as info:
        plan.spec_from_request(request_)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.message


def test_select_hosts_by_scope_ips_count_percentage() -> None:
    resource = resource_with(normal=10, seeds=2)
    peers = plan.select_hosts(resource, plan.Selection(plan.ALL_PEERS))
    assert len(peers) == 10
    assert not any(host.is_seed for host in peers)
    assert len(plan.select_hosts(resource, plan.Selection(plan.ALL_SEED_PEERS))) == 2
    chosen = plan.select_hosts(resource, plan.Selection(plan.ALL_PEERS, frozenset({"10.0.0.3", "10.0.0.11"}), 1))
    assert [host.ip for host in chosen] == ["10.0.0.3"]  # 10.0.0.11 is a seed; ips win over count
    assert len(plan.select_hosts(resource, plan.Selection(plan.ALL_PEERS, count=4))) == 4
    assert len(plan.select_hosts(resource, plan.Selection(plan.ALL_PEERS, count=200))) == 10
    assert len(plan.select_hosts(resource, plan.Selection(plan.ALL_PEERS, percentage=35))) == 3
    assert len(plan.select_hosts(resource, plan.Selection(plan.ALL_SEED_PEERS, percentage=1))) == 1


def test_select_hosts_errors() -> None:
    with pytest.raises(plan.PlanError) as info:
        plan.select_hosts(resource_with(normal=0, seeds=1), plan.Selection(plan.ALL_PEERS))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(plan.PlanError) as info:
        plan.select_hosts(resource_with(normal=2, seeds=0), plan.Selection(plan.ALL_PEERS, frozenset({"10.1.1.1"})))
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_hosts_grouped_by_announced_platform() -> None:
    resource = resource_with(normal=4, seeds=0)
    fallback = oci.Platform.parse("linux/s390x")
    groups = plan.platforms_of(list(resource.hosts.values()), fallback)
    assert {str(p): sorted(h.hostname for h in hosts) for p, hosts in groups.items()} == {
        "linux/amd64": ["peer-0", "peer-2"],
        "linux/arm64": ["peer-1", "peer-3"],
    }
    resource.hosts["10.0.0.0-peer-0"].message.build.platform = ""
    assert plan.host_platform(resource.hosts["10.0.0.0-peer-0"], fallback) == fallback


def test_result_round_trip() -> None:
    result = PreheatResult((Outcome("u1", "h1", "1.1.1.1"), Outcome("u2", "h2", "2.2.2.2", "NOT_FOUND: x")))
    doc = decode_result(result.encode())
    assert doc == {
        "success_tasks": [{"url": "u1", "hostname": "h1", "ip": "1.1.1.1"}],
        "failure_tasks": [{"url": "u2", "hostname": "h2", "ip": "2.2.2.2", "description": "NOT_FOUND: x"}],
    }
    with pytest.raises(ValueError, match="larger than"):
        decode_result(result.encode(), limit=10)
