"""The Helm chart deploys the release it is shipped with; its rendering is checked by scripts/check-helm.sh in CI."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "helm" / "dragonfly"


def test_chart_app_version_is_the_release_version() -> None:
    with (REPO / "Cargo.toml").open("rb") as cargo:
        version = tomllib.load(cargo)["workspace"]["package"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version  # also the default image tag


def test_values_mirror_dragonflys_chart_layout() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component in ("manager", "scheduler", "seedClient", "client"):
        assert {"enable", "image", "resources", "config", "nodeSelector", "tolerations"} <= set(values[component])
    assert values["security"]["enable"] is True  # mutual TLS is the default, as everywhere else
    assert values["client"]["dfinit"]["containerRuntime"] == "containerd"
