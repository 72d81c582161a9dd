"""Property-based run of the manager's OpenAPI spec against a live manager process (schemathesis): whatever the
generated requests, no 5xx, and every answer matches the spec (status codes, content types, bodies)."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dragonfly.cli.cluster import ManagedProcess, free_ports

schemathesis = pytest.importorskip("schemathesis")

ROOT_PASSWORD = "openapi-root-password"
#: What the issue asks of the spec: no 5xx, and every answer as documented. (Not "every schema-valid request is
#: accepted": a valid body may name a role or cluster that does not exist, which is a 404/422 by design.)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def live_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A manager process; yields its REST base URL and a root session token."""
    tmp = tmp_path_factory.mktemp("openapi")
    rest, grpc_port = free_ports(2)
    config = {
        "server": {
            "dataDir": str(tmp / "data"),
            "rest": {"addr": f"127.0.0.1:{rest}"},
            "grpc": {"listenIP": "127.0.0.1", "port": {"start": grpc_port, "end": grpc_port}},
        },
        "auth": {"rootPassword": ROOT_PASSWORD, "signinMaxFailures": 1000, "signinMaxFailuresPerAddress": 1000},
        "security": {"enable": False},
    }
    (tmp / "manager.yaml").write_text(yaml.safe_dump(config))
    argv = [
        sys.executable,
        "-m",
        "dragonfly.cli.manager",
        "--config",
        str(tmp / "manager.yaml"),
        "--log-level",
        "warning",
    ]
    with ManagedProcess("manager", argv, tmp / "manager.log") as process:
        base = f"http://127.0.0.1:{rest}"
        request = urllib.request.Request(
            base + "/api/v1/users/signin",
            data=json.dumps({"name": "root", "password": ROOT_PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.loads(response.read())["token"]
        yield base, token
        log = Path(process.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_openapi_spec_holds_for_generated_requests(live_manager: tuple[str, str]) -> None:
    base, token = live_manager
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json")
    # Sign-out and password changes would end the session the rest of the run uses.
    schema = schema.exclude(path_regex=r"/users/(signout|\{ident\}/reset_password)$")
    failures: list[str] = []
    for operation in schema.get_all_operations():
        api_operation = operation.ok()
        strategy = api_operation.as_strategy()
        from hypothesis import HealthCheck, given, settings

        @settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case: object) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})  # type: ignore[attr-defined]
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")  # type: ignore[attr-defined]
                return
            try:
                case.validate_response(response, checks=CHECKS)  # type: ignore[attr-defined]
            except Exception as exc:  # schemathesis reports a FailureGroup per finding
                failures.append(f"{case.method} {case.formatted_path}: {str(exc)[:600]}")  # type: ignore[attr-defined]

        run()
    assert not failures, "\n".join(failures[:20])
