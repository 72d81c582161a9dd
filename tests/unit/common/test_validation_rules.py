"""The committed validation table is what scripts/gen_validation_rules.py makes from dragonflyoss/api (issue 10).

The proto sources are not part of this repository: the check runs when a checkout of dragonflyoss/api is found
(``DRAGONFLY_API_SRC``, or where scripts/interop-deps.sh puts it) and is skipped with the reason otherwise. The
parser itself is tested on a small proto text either way.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dragonfly.common import validation_rules

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "gen_validation_rules.py"


def api_source() -> Path | None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dragonfly-p2p" / "interop"
    for candidate in (os.environ.get("DRAGONFLY_API_SRC"), os.environ.get("INTEROP_CACHE"), str(cache)):
        if not candidate:
            continue
        path = Path(candidate)
        for place in (path, path / "src" / "api"):
            if (place / ".git").exists() or ((place / "HEAD").is_file() and (place / "objects").is_dir()):
                return place
    return None


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_validation_rules", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_table_is_current() -> None:
    source = api_source()
    if source is None:
        pytest.skip("no dragonflyoss/api checkout (set DRAGONFLY_API_SRC or run scripts/interop-deps.sh)")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--api", str(source), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_table_names_its_source() -> None:
    assert validation_rules.SOURCE.startswith("github.com/dragonflyoss/api@")
    assert len(validation_rules.SOURCE.rsplit("@", 1)[1]) == 40


PROTO = """
syntax = "proto3";
package demo.v2;
import "validate/validate.proto";
/* a block comment with message Fake { } inside */
message Request {
  // A comment with [(validate.rules).string.min_len = 9].
  string id = 1 [(validate.rules).string.min_len = 1];
  optional uint64 size = 2 [(validate.rules).uint64 = {gte: 4194304, lte: 67108864, ignore_empty: true}];
  repeated uint32 numbers = 3 [(validate.rules).repeated = {min_items: 1}];
  map<string, string> header = 4;
  string kind = 5 [(validate.rules).string = {in: ["a", "b"]}, deprecated = true];
  google.protobuf.Duration ttl = 6 [(validate.rules).duration = {
    gte: {seconds: 60}
    lte: {seconds: 3600}
  }];
  reserved 7; reserved "old";
  oneof body {
    option (validate.required) = true;
    Empty empty = 8;
    string text = 9 [(validate.rules).string.pattern = "^x+$"];
  }
  enum Inner { A = 0; }
}
message Empty {}
service S { rpc Call(Request) returns (Empty); }
"""


def test_parser_reads_rules_oneofs_and_skips_the_rest() -> None:
    fields, oneofs = generator().extract({"demo.proto": PROTO})
    assert fields == {
        "demo.v2.Request": {
            "id": ("string", {"min_len": 1}),
            "size": ("uint64", {"gte": 4194304, "lte": 67108864, "ignore_empty": True}),
            "numbers": ("repeated", {"min_items": 1}),
            "kind": ("string", {"in": ["a", "b"]}),
            "ttl": ("duration", {"gte": {"seconds": 60}, "lte": {"seconds": 3600}}),
            "text": ("string", {"pattern": "^x+$"}),
        }
    }
    assert oneofs == {"demo.v2.Request": ["body"]}
