"""``dragonfly init``: what it writes for each runtime, that it keeps other settings, idempotence, --dry-run."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from dragonfly.cli.init import main

PROXY = "http://127.0.0.1:4001"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_containerd_hosts_files_keep_other_settings_and_a_second_run_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs.d"
    (certs / "ghcr.io").mkdir(parents=True)
    (certs / "ghcr.io" / "hosts.toml").write_text(
        'server = "https://ghcr.io"\n\n[host."https://mirror.corp:5000"]\n  capabilities = ["pull"]\n  ca = "/x.pem"\n'
    )
    config = tmp_path / "config.toml"
    config.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "overlayfs"\n')
    args = ["containerd", "--config-dir", str(certs), "--containerd-config", str(config)]
    args += ["--registry", "ghcr.io", "--registry", "http://127.0.0.1:5000"]
    status, _out, err = run(capsys, *args)
    assert status == 0
    assert "restart containerd" in err

    ghcr = tomllib.loads((certs / "ghcr.io" / "hosts.toml").read_text())
    assert ghcr["server"] == "https://ghcr.io"
    assert list(ghcr["host"]) == [PROXY, "https://mirror.corp:5000"]  # ours first, theirs kept
    assert ghcr["host"][PROXY] == {
        "capabilities": ["pull", "resolve"],
        "header": {"X-Dragonfly-Registry": ["https://ghcr.io"]},
    }
    assert ghcr["host"]["https://mirror.corp:5000"] == {"capabilities": ["pull"], "ca": "/x.pem"}
    local = tomllib.loads((certs / "127.0.0.1:5000" / "hosts.toml").read_text())
    assert local["server"] == "http://127.0.0.1:5000"
    assert local["host"][PROXY]["header"] == {"X-Dragonfly-Registry": ["http://127.0.0.1:5000"]}
    catch_all = tomllib.loads((certs / "_default" / "hosts.toml").read_text())
    assert catch_all == {"host": {PROXY: {"capabilities": ["pull", "resolve"]}}}
    containerd = tomllib.loads(config.read_text())
    cri = containerd["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["containerd"] == {"snapshotter": "overlayfs"}
    assert cri["registry"] == {"config_path": str(certs.resolve())}

    before = snapshot(tmp_path)
    status, _out, err = run(capsys, *args)
    assert status == 0
    assert "nothing changed" in err
    assert snapshot(tmp_path) == before


def test_containerd_version_3_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("version = 3\n")
    run(capsys, "containerd", "--config-dir", str(tmp_path / "d"), "--containerd-config", str(config))
    parsed = tomllib.loads(config.read_text())
    assert parsed["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == str(tmp_path / "d")
    # docker.io by default, served from its real registry host.
    hub = tomllib.loads((tmp_path / "d" / "docker.io" / "hosts.toml").read_text())
    assert hub["server"] == "https://registry-1.docker.io"


def test_dry_run_prints_the_diff_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text('{"log-driver": "journald"}\n')
    status, out, _err = run(capsys, "docker", "--config-dir", str(tmp_path), "--dry-run")
    assert status == 0
    assert f"+++ {daemon_json}" in out
    assert '+  "registry-mirrors": [' in out
    assert daemon_json.read_text() == '{"log-driver": "journald"}\n'


def test_docker_daemon_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text(json.dumps({"log-driver": "journald", "registry-mirrors": ["https://m.example"]}))
    run(capsys, "docker", "--config-dir", str(tmp_path))
    data = json.loads(daemon_json.read_text())
    assert data == {
        "log-driver": "journald",
        "registry-mirrors": [PROXY, "https://m.example"],
        "proxies": {"http-proxy": PROXY, "https-proxy": PROXY},
    }
    before = daemon_json.read_text()
    run(capsys, "docker", "--config-dir", str(tmp_path))
    assert daemon_json.read_text() == before


@pytest.mark.parametrize("runtime", ["crio", "podman"])
def test_registries_conf(tmp_path: Path, capsys: pytest.CaptureFixture[str], runtime: str) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(
        'unqualified-search-registries = ["docker.io"]\n\n[[registry]]\nprefix = "quay.io"\nlocation = "quay.io"\n'
        '[[registry.mirror]]\nlocation = "mirror.corp"\n'
    )
    run(capsys, runtime, "--config-dir", str(tmp_path), "--registry", "quay.io", "--registry", "docker.io")
    parsed = tomllib.loads(conf.read_text())
    assert parsed["unqualified-search-registries"] == ["docker.io"]
    quay, hub = parsed["registry"]
    assert quay["mirror"] == [{"location": "127.0.0.1:4001", "insecure": True}, {"location": "mirror.corp"}]
    assert hub == {
        "prefix": "docker.io",
        "location": "docker.io",
        "mirror": [{"location": "127.0.0.1:4001", "insecure": True}],
    }
    before = conf.read_text()
    run(capsys, runtime, "--config-dir", str(tmp_path), "--registry", "quay.io", "--registry", "docker.io")
    assert conf.read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["containerd", "--proxy", "https://x:1"], "--proxy must be http://host:port"),
        (["containerd", "--registry", "ftp://r"], "must be host[:port] or http(s)://host[:port]"),
        (["kubelet"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_unparsable_daemon_json_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "daemon.json").write_text("{not json")
    with pytest.raises(SystemExit) as info:
        main(["docker", "--config-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert (tmp_path / "daemon.json").read_text() == "{not json"
