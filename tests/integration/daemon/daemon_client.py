"""A client of a daemon's local gRPC API that records where each piece came from (dfget prints only totals)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc


@dataclass
class DownloadResult:
    """What one download did: its ids, length, piece bytes by traffic type, parent ids and wall seconds."""

    task_id: str
    peer_id: str
    content_length: int
    bytes_by_traffic: dict[str, int]
    parents: set[str]
    seconds: float


def download(
    socket_path: str, url: str, output: Path | None, *, timeout: float = 60.0, **fields: Any
) -> DownloadResult:
    """Download through a daemon's local API; raise grpc.RpcError on failure."""
    request = common_pb2.Download(url=url, **fields)
    if output is not None:
        request.output_path = str(output)
    began = time.monotonic()
    traffic: dict[str, int] = {}
    parents: set[str] = set()
    task_id = peer_id = ""
    content_length = -1
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
        for response in stub.DownloadTask(dfdaemon_pb2.DownloadTaskRequest(download=request), timeout=timeout):
            if response.HasField("download_task_started_response"):
                task_id, peer_id = response.task_id, response.peer_id
                content_length = response.download_task_started_response.content_length
                continue
            piece = response.download_piece_finished_response.piece
            name = common_pb2.TrafficType.Name(piece.traffic_type)
            traffic[name] = traffic.get(name, 0) + piece.length
            if piece.parent_id:
                parents.add(piece.parent_id)
    return DownloadResult(task_id, peer_id, content_length, traffic, parents, time.monotonic() - began)
