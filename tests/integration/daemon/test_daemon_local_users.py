"""Another local user can make the daemon write only where that user could write (docs/security.md).

The test creates a Unix user and group (CI runs as root). The "user's process" is a Python child that imports
what it needs and then drops to that user (setgroups, setgid, setuid) before it connects: to the kernel, and so
to SO_PEERCRED, it is that user's process. It calls DownloadTask directly, as an attacker would, not through
dfget (whose own checks would hide the daemon's).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dragonfly.cli.cluster import LocalCluster, OriginProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a Unix user: needs root (CI runs as root)")

MiB = 1024 * 1024

_AS_USER = r"""
import json, os, sys
import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
socket_path, url, output, overwrite, uid, gid, groups = sys.argv[1:8]
os.setgroups([int(g) for g in groups.split(",") if g])
os.setgid(int(gid))
os.setuid(int(uid))
download = common_pb2.Download(url=url, type=common_pb2.STANDARD, output_path=output, overwrite=overwrite == "1")
result = {"ok": True}
try:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        for _ in dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel).DownloadTask(
            dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=60
        ):
            pass
except grpc.RpcError as exc:
    result = {"ok": False, "code": exc.code().name, "details": exc.details()}
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def user() -> Iterator[tuple[int, int, int]]:
    """A fresh user and a group for the socket; yields (uid, the user's gid, socket group gid)."""
    name = f"dft{secrets.token_hex(3)}"
    group = f"{name}g"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", group, name], check=True)
    try:
        import grp
        import pwd

        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid, grp.getgrnam(group).gr_gid
    finally:
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", group], check=False)


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's own temporary directories are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="df-users-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(module_dir: Path, user: tuple[int, int, int], shared_dir: Path) -> Iterator[LocalCluster]:
    _, _, socket_gid = user
    daemon_config = {"download": {"server": {"socketGroup": str(socket_gid)}}}
    run = shared_dir / "cluster"
    run.mkdir()
    run.chmod(0o755)
    with LocalCluster(run, peers=1, daemon_config=daemon_config, start_timeout=30, stop_timeout=20) as started:
        Path(started.socket_path("peer-1")).parent.chmod(0o755)
        yield started


def _call_as(
    cluster: LocalCluster, url: str, output: Path, *, uid: int, gid: int, groups: list[int], overwrite: bool = False
) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-c",
        _AS_USER,
        cluster.socket_path("peer-1"),
        url,
        str(output),
        "1" if overwrite else "0",
        str(uid),
        str(gid),
        ",".join(map(str, groups)),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_socket_is_0660_with_its_group(cluster: LocalCluster, user: tuple[int, int, int]) -> None:
    info = os.stat(cluster.socket_path("peer-1"))
    assert (info.st_mode & 0o777, info.st_gid) == (0o660, user[2])


def test_a_user_outside_the_socket_group_cannot_connect(
    cluster: LocalCluster, origin: OriginProcess, user: tuple[int, int, int], shared_dir: Path
) -> None:
    (origin.directory / "outside.bin").write_bytes(os.urandom(MiB))
    uid, gid, _ = user
    result = _call_as(cluster, origin.url("outside.bin"), shared_dir / "x", uid=uid, gid=gid, groups=[gid])
    assert result["ok"] is False
    assert result["code"] == "UNAVAILABLE"


def test_the_daemon_writes_only_where_the_caller_could(
    cluster: LocalCluster, origin: OriginProcess, user: tuple[int, int, int], shared_dir: Path
) -> None:
    data = os.urandom(6 * MiB)
    (origin.directory / "users.bin").write_bytes(data)
    url = origin.url("users.bin")
    uid, gid, socket_gid = user
    groups = [gid, socket_gid]

    private = shared_dir / "root-private"
    private.mkdir(mode=0o700)
    result = _call_as(cluster, url, private / "planted", uid=uid, gid=gid, groups=groups)
    assert result["ok"] is False
    assert "Permission denied" in result["details"]
    assert not (private / "planted").exists()

    sticky = shared_dir / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    victim = sticky / "root-file"
    victim.write_bytes(b"root's")
    result = _call_as(cluster, url, victim, uid=uid, gid=gid, groups=groups, overwrite=True)
    assert result["ok"] is False
    assert victim.read_bytes() == b"root's"
    assert os.stat(victim).st_uid == 0
    assert [p.name for p in sticky.iterdir()] == ["root-file"]  # no temporary file left

    own = shared_dir / "own"
    own.mkdir(mode=0o700)
    os.chown(own, uid, gid)
    result = _call_as(cluster, url, own / "mine", uid=uid, gid=gid, groups=groups)
    assert result == {"ok": True}
    assert (own / "mine").read_bytes() == data
    assert (os.stat(own / "mine").st_uid, os.stat(own / "mine").st_gid) == (uid, gid)


def test_the_internal_socket_refuses_direct_callers(cluster: LocalCluster, origin: OriginProcess) -> None:
    import grpc
    from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

    pid = cluster.process("peer-1").pid
    names = [
        line.split()[-1][1:]
        for line in Path("/proc/net/unix").read_text().splitlines()
        if line.split()[-1].startswith(f"@dfdaemon-{pid}-")
    ]
    assert names, "the daemon's internal gRPC socket was not found"
    download = common_pb2.Download(url=origin.url("users.bin"), type=common_pb2.STANDARD)
    with grpc.insecure_channel(f"unix-abstract:{names[0]}") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            for _ in dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel).DownloadTask(
                dfdaemon_pb2.DownloadTaskRequest(download=download), timeout=30
            ):
                pass
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


_IMPORT_AS_USER = r"""
import json, os, sys
import grpc
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc
from google.protobuf import duration_pb2
socket_path, path, uid, gid, groups = sys.argv[1:6]
os.setgroups([int(g) for g in groups.split(",") if g])
os.setgid(int(gid))
os.setuid(int(uid))
request = dfdaemon_pb2.UploadPersistentCacheTaskRequest(
    path=path, persistent_replica_count=1, ttl=duration_pb2.Duration(seconds=600)
)
try:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        task = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel).UploadPersistentCacheTask(request, timeout=60)
    result = {"ok": True, "id": task.id}
except grpc.RpcError as exc:
    result = {"ok": False, "code": exc.code().name, "details": exc.details()}
print(json.dumps(result))
"""


def test_dfcache_import_reads_only_what_the_caller_could(
    cluster: LocalCluster, user: tuple[int, int, int], shared_dir: Path
) -> None:
    uid, gid, socket_gid = user

    def import_as(path: Path) -> dict[str, Any]:
        argv = [sys.executable, "-c", _IMPORT_AS_USER, cluster.socket_path("peer-1"), str(path), str(uid), str(gid)]
        proc = subprocess.run([*argv, f"{gid},{socket_gid}"], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    secret = shared_dir / "root-only.bin"
    secret.write_bytes(os.urandom(MiB))
    secret.chmod(0o600)
    refused = import_as(secret)
    assert refused["ok"] is False
    assert "Permission denied" in refused["details"]

    public = shared_dir / "public.bin"
    public.write_bytes(os.urandom(MiB))
    public.chmod(0o644)
    imported = import_as(public)
    assert imported["ok"] is True, imported
    assert len(imported["id"]) == 64
