"""The daemon's metrics under Dragonfly's client names, so its dashboards work unchanged (issue 10)."""

from __future__ import annotations

import re

from dragonfly_api import common_pb2

from dragonfly.daemon.metrics import DaemonMetrics


def sample(text: str, name: str, labels: str = "") -> float | None:
    selector = re.escape(f"{name}{{{labels}}}" if labels else name)
    found = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_traffic_and_tasks_under_dragonfly_names() -> None:
    metrics = DaemonMetrics()
    metrics.record_piece("origin", 4096, 0.25)
    metrics.record_piece("seed", 1000, 0.001)
    metrics.record_piece("peer", 24, 0.001)
    metrics.record_upload(512)
    download = common_pb2.Download(url="http://o/f", tag="t", application="app", priority=common_pb2.LEVEL3)
    labels = metrics.task_labels(download)
    metrics.task_started(labels)
    metrics.task_started(labels)
    metrics.task_finished(labels, failed=True)
    text = metrics.exposition().decode()
    # Dragonfly's client names its traffic counters without `_total`.
    assert "# TYPE dragonfly_client_download_traffic counter" in text
    assert sample(text, "dragonfly_client_download_traffic", 'type="BACK_TO_SOURCE"') == 4096
    assert sample(text, "dragonfly_client_download_traffic", 'type="REMOTE_PEER"') == 1024
    assert sample(text, "dragonfly_client_upload_traffic") == 512
    assert "dragonfly_client_download_traffic_total" not in text
    assert sample(text, "dragonfly_client_download_piece_duration_milliseconds_sum", 'type="BACK_TO_SOURCE"') == 250
    task = 'app="app",priority="LEVEL3",tag="t",type="0"'
    assert sample(text, "dragonfly_client_download_task_total", task) == 2
    assert sample(text, "dragonfly_client_download_task_failure_total", task) == 1
    assert sample(text, "dragonfly_client_concurrent_download_task_total", task) == 1
    assert re.search(r'^dragonfly_client_version\{.*git_version="[^"]+".*\} 1\.0$', text, re.MULTILINE)
    # Ours remain only where Dragonfly's client measures nothing alike.
    assert not re.search(r"^dragonfly_dfdaemon_(download|upload)_bytes", text, re.MULTILINE)
