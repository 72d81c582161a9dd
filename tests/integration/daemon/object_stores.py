"""Real object storage servers for the backend tests, each a process started by the test: moto's standalone S3
server (with signature checks on), Azurite (Azure Blob) and fake-gcs-server (GCS) when they are installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from dragonfly.cli.cluster import free_ports
from tests.waiting import listening, wait_for

REGION = "us-east-1"
# moto accepts requests without credentials for this many actions, then checks every signature and policy: the
# test's setup (an IAM user, its key, its policy) uses them up.
_SETUP_ACTIONS = 3


def wait_for_port(port: int, process: subprocess.Popen[Any], log: Path, timeout: float = 60.0) -> None:

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
        return listening(port)

    try:
        wait_for(up, timeout, f"the server to listen on {port}", interval=0.1)
    except AssertionError as exc:
        raise RuntimeError(f"{exc}: {log.read_text()[-2000:]}") from None


def stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class MotoS3:
    """moto's S3 server with authentication on, an IAM user allowed everything, and a boto3 client as that user."""

    def __init__(self, directory: Path) -> None:
        self.port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = directory / "moto.log"
        server = Path(sys.executable).with_name("moto_server")
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_ACTIONS)}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(server), "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            wait_for_port(self.port, self.process, self.log)
            self.access_key_id, self.secret = self._make_user()
        except BaseException:
            stop(self.process)
            raise
        self.client = self._client(self.access_key_id, self.secret, "s3")

    def _client(self, key_id: str, secret: str, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name=REGION,
        )

    def _make_user(self) -> tuple[str, str]:
        iam = self._client("setup", "setup", "iam")
        iam.create_user(UserName="dragonfly")
        key = iam.create_access_key(UserName="dragonfly")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="dragonfly", PolicyName="all", PolicyDocument=json.dumps(policy))
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def object_gets(self, bucket: str, key: str) -> int:
        """Return how many GETs of the object the server logged (one per piece fetched from it)."""
        needle = f'"GET /{bucket}/{key} '
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if needle in line)

    def close(self) -> None:
        stop(self.process)


def azurite_command() -> str | None:
    """Return the azurite-blob executable if installed (npm), else None."""
    return shutil.which("azurite-blob")


def fake_gcs_command() -> str | None:
    """Return the fake-gcs-server executable if installed (go install), else None."""
    found = shutil.which("fake-gcs-server")
    if found:
        return found
    candidate = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin" / "fake-gcs-server"
    return str(candidate) if candidate.exists() else None


# Azurite's one account and its published key (the emulator's documented default, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """Azurite's Blob service on a free port, data in ``directory``."""

    def __init__(self, command: str, directory: Path) -> None:
        self.port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        self.log = directory / "azurite.log"
        data = directory / "azurite"
        data.mkdir(exist_ok=True)
        argv = [command, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(data)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*argv, "--skipApiVersionCheck", "--loose"], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(self.port, self.process, self.log)
        except BaseException:
            stop(self.process)
            raise

    def put(self, container: str, name: str, data: bytes) -> None:
        """Create the container if needed and store one blob (with obstore, the client the daemon uses)."""
        import urllib.error
        import urllib.request

        import obstore
        from obstore.store import AzureStore

        request = urllib.request.Request(f"{self.endpoint}/{container}?restype=container", method="PUT")
        self._sign(request, container)
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # exists already
                raise
        store = AzureStore(
            config={
                "container_name": container,
                "account_name": AZURITE_ACCOUNT,
                "account_key": AZURITE_KEY,
                "endpoint": self.endpoint,
            },
            client_options={"allow_http": True},
        )
        obstore.put(store, name, data)

    @staticmethod
    def _sign(request: Any, container: str) -> None:
        """Sign a Create Container request with Shared Key (Azure's documented scheme)."""
        import base64
        import hashlib
        import hmac
        from email.utils import formatdate

        date = formatdate(usegmt=True)
        request.add_header("x-ms-date", date)
        request.add_header("x-ms-version", "2021-08-06")
        request.add_header("Content-Length", "0")
        canonical_headers = f"x-ms-date:{date}\nx-ms-version:2021-08-06\n"
        resource = f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
        string_to_sign = "PUT\n\n\n\n\n\n\n\n\n\n\n\n" + canonical_headers + resource
        digest = hmac.new(base64.b64decode(AZURITE_KEY), string_to_sign.encode(), hashlib.sha256).digest()
        request.add_header("Authorization", f"SharedKey {AZURITE_ACCOUNT}:{base64.b64encode(digest).decode()}")

    def close(self) -> None:
        stop(self.process)


class FakeGCS:
    """fake-gcs-server over plain HTTP on a free port, its buckets preloaded from ``directory/gcs/<bucket>/...``."""

    def __init__(self, command: str, directory: Path, objects: dict[str, bytes]) -> None:
        self.port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = directory / "fake-gcs.log"
        data = directory / "gcs"
        for name, content in objects.items():
            path = data / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        argv = [command, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend", "memory"]
        argv += ["-data", str(data), "-public-host", f"127.0.0.1:{self.port}"]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, self.process, self.log)
        except BaseException:
            stop(self.process)
            raise

    def close(self) -> None:
        stop(self.process)
