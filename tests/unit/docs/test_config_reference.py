"""docs/configuration.md is generated from the config dataclasses and must match them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "config_reference.py"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_up_to_date() -> None:
    generator = load_generator()
    current = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == generator.render(), (
        f"docs/configuration.md is stale (a config key, default or comment changed); regenerate it with: "
        f"{generator.COMMAND}"
    )


def test_every_key_of_every_config_file_is_listed() -> None:
    """Spot-check keys from each file, nested sections and aliases included, with their rendered defaults."""
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for row in (
        "| `download.pieceTimeout` | duration | `6m` | same |",
        "| `gc.policy.diskThreshold` (alias `distThreshold`) | size | `0` | same |",
        "| `metrics.server.port` | integer | `4002` | same |",
        "| `download.server.socketMode` | integer | `0o660` | ours |",
        "| `scheduler.retryInterval` | duration | `500ms` | same |",
        "| `scheduler.candidateParentLimit` | integer | `4` | scheduler cluster config candidate_parent_limit",
    ):
        assert row in text, row


def test_check_mode_names_the_command_that_fixes_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# outdated\n", encoding="utf-8")
    command = [sys.executable, str(SCRIPT), "--check", "--output", str(stale)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert f"regenerate it with: {load_generator().COMMAND}" in result.stderr
    assert stale.read_text(encoding="utf-8") == "# outdated\n"  # --check never writes

    fresh = tmp_path / "fresh.md"
    assert subprocess.run([sys.executable, str(SCRIPT), "--output", str(fresh)], check=False).returncode == 0
    assert subprocess.run([*command[:3], "--output", str(fresh)], check=False).returncode == 0
