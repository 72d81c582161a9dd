"""Sealing of jobs' credentials: the key file, the envelope, and the errors a manager with the wrong key gives."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from dragonfly.manager.jobs.sealing import (
    KeyFileError,
    Sealer,
    SecretsUnavailable,
    ensure_key_file,
    is_sealed,
    key_id,
    read_key_file,
)

SECRET = {"password": "hunter2-registry-pw", "username": "robot", "headers": {"Authorization": "Bearer tok-9"}}


def test_a_missing_key_file_is_generated_with_mode_0600_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "job-secret.key"
    key = ensure_key_file(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert base64.b64decode(path.read_text().strip()) == key
    assert ensure_key_file(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["job-secret.key"]  # no temporary file left


def test_concurrent_generation_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "job-secret.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(ensure_key_file(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(keys) == 8
    assert len(set(keys)) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [("not base64!!", "not a base64 key"), (base64.b64encode(b"short").decode(), "the key is 5 bytes, expected 32")],
)
def test_a_bad_key_file_names_the_file_and_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "k"
    path.write_text(content)
    with pytest.raises(KeyFileError, match=message) as caught:
        read_key_file(path)
    assert str(path) in str(caught.value)
    with pytest.raises(KeyFileError, match="cannot read the job secret key"):
        Sealer.from_files(tmp_path / "absent")


def test_an_envelope_holds_no_credential_and_opens_only_for_its_job(tmp_path: Path) -> None:
    sealer = Sealer.from_files(tmp_path / "k", generate=True)
    envelope = sealer.seal(7, SECRET)
    assert is_sealed(envelope)
    raw = json.dumps(envelope)
    for needle in ("hunter2", "robot", "tok-9", "Bearer"):
        assert needle not in raw
    assert envelope["key_id"] == sealer.key_id
    assert sealer.open(7, envelope) == SECRET
    # Moved onto another job's row: refused (the job id is the associated data).
    with pytest.raises(SecretsUnavailable, match="do not verify with key"):
        sealer.open(8, envelope)
    flipped = bytearray(base64.b64decode(envelope["data"]))
    flipped[0] ^= 1
    with pytest.raises(SecretsUnavailable, match="altered in the database"):
        sealer.open(7, {**envelope, "data": base64.b64encode(bytes(flipped)).decode()})
    assert sealer.seal(7, {}) == {}
    assert sealer.open(7, {}) == {}
    assert sealer.seal(7, SECRET)["nonce"] != envelope["nonce"]


def test_a_manager_with_another_key_says_which_key_it_needs() -> None:
    first, second = os.urandom(32), os.urandom(32)
    envelope = Sealer(first).seal(3, SECRET)
    with pytest.raises(SecretsUnavailable) as caught:
        Sealer(second, source="/etc/dragonfly/job.key").open(3, envelope)
    message = str(caught.value)
    assert key_id(first) in message
    assert key_id(second) in message
    assert "/etc/dragonfly/job.key" in message
    assert "same job.secretKeyFile" in message
    assert base64.b64encode(first).decode() not in message


def test_previous_keys_open_old_jobs_and_the_current_key_seals_new_ones() -> None:
    old, new = os.urandom(32), os.urandom(32)
    sealed_before = Sealer(old).seal(1, SECRET)
    rotated = Sealer(new, [old])
    assert rotated.open(1, sealed_before) == SECRET
    assert rotated.seal(2, SECRET)["key_id"] == key_id(new)


def test_clear_json_is_not_taken_for_an_envelope() -> None:
    assert not is_sealed(SECRET)
    with pytest.raises(SecretsUnavailable, match="not in a format"):
        Sealer(os.urandom(32)).open(1, SECRET)


def test_a_key_file_every_user_can_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "k"
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    path.chmod(0o440)
    read_key_file(path)
    assert not [r for r in caplog.records if r.levelno >= 30]
    path.chmod(0o644)
    read_key_file(path)
    assert "readable by every user (mode 644)" in caplog.text


def test_a_named_key_file_must_exist_and_a_shared_queue_without_one_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from dragonfly.common.config import ConfigError
    from dragonfly.manager import config
    from dragonfly.manager.jobs.api import job_sealer

    with pytest.raises((ConfigError, ValueError), match=r"secretKeyFile: .*absent.key is not a file"):
        config.load(None, overrides={"job": {"secretKeyFile": str(tmp_path / "absent.key")}})
    ha = config.load(
        None, overrides={"server": {"dataDir": str(tmp_path / "data")}, "database": {"redis": {"addrs": ["r:6379"]}}}
    )
    sealer = job_sealer(SimpleNamespace(config=ha))  # type: ignore[arg-type]
    assert (tmp_path / "data" / "job-secret.key").is_file()
    assert "database.redis is set (several managers) but job.secretKeyFile is not" in caplog.text
    assert sealer.key_id in caplog.text
    caplog.clear()
    shared = config.load(
        None,
        overrides={
            "database": {"redis": {"addrs": ["r:6379"]}},
            "job": {"secretKeyFile": str(tmp_path / "data" / "job-secret.key")},
        },
    )
    assert job_sealer(SimpleNamespace(config=shared)).key_id == sealer.key_id  # type: ignore[arg-type]
    assert "several managers" not in caplog.text
