"""Image references, platforms and resolution through a registry (dragonfly/common/oci.py).

Resolution runs against an aiohttp stand-in for a registry on 127.0.0.1 that speaks the distribution API's auth
challenges and error bodies; the real ``docker-registry`` is exercised by tests/integration/preheat.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from dragonfly.common import oci
from dragonfly.common.oci import Platform

# ------------------------------------------------------------------------------------------------ references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", ("https", "registry-1.docker.io", "library/alpine", "latest")),
        ("alpine:3.19", ("https", "registry-1.docker.io", "library/alpine", "3.19")),
        ("docker.io/team/app:1", ("https", "registry-1.docker.io", "team/app", "1")),
        ("127.0.0.1:5000/team/app", ("https", "127.0.0.1:5000", "team/app", "latest")),
        ("localhost/app:dev", ("https", "localhost", "app", "dev")),
        ("r.example/a/b/c:v1@sha256:" + "a" * 64, ("https", "r.example", "a/b/c", "sha256:" + "a" * 64)),
        (
            "https://r.example:8443/v2/team/app/manifests/sha256:" + "b" * 64,
            ("https", "r.example:8443", "team/app", "sha256:" + "b" * 64),
        ),
        ("http://127.0.0.1:5000/v2/app/manifests/latest", ("http", "127.0.0.1:5000", "app", "latest")),
    ],
)
def test_parse_image(text: str, expected: tuple[str, str, str, str]) -> None:
    ref = oci.parse_image(text)
    assert (ref.scheme, ref.registry, ref.repository, ref.reference) == expected


def test_parse_image_plain_http_and_urls() -> None:
    ref = oci.parse_image("127.0.0.1:5000/app:1", plain_http=True)
    assert ref.manifest_url == "http://127.0.0.1:5000/v2/app/manifests/1"
    assert ref.blob_url("sha256:" + "c" * 64) == "http://127.0.0.1:5000/v2/app/blobs/sha256:" + "c" * 64
    assert str(ref) == "127.0.0.1:5000/app:1"
    assert not ref.is_digest


@pytest.mark.parametrize(
    "text",
    [
        "Upper/Case",
        "app:bad tag",
        "r.example/app@md5",
        "ftp://r.example/v2/app/manifests/1",
        "https://r.example/v2/app/blobs/sha256:" + "a" * 64,
        "https://r.example/app/manifests/1",
        "",
    ],
)
def test_parse_image_rejects(text: str) -> None:
    with pytest.raises(oci.InvalidReference):
        oci.parse_image(text)


# ------------------------------------------------------------------------------------------------ platforms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("Linux/AArch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("windows/amd64", "windows/amd64"),
    ],
)
def test_platform_parse_normalises(text: str, expected: str) -> None:
    assert str(Platform.parse(text)) == expected


@pytest.mark.parametrize("text", ["amd64", "linux/amd64/v2/x", "linux/", "linux/a md64"])
def test_platform_parse_rejects(text: str) -> None:
    with pytest.raises(oci.InvalidReference):
        Platform.parse(text)


def test_compatible_platforms_order() -> None:
    assert [str(p) for p in oci.compatible_platforms(Platform.parse("linux/arm64"))] == [
        "linux/arm64",
        "linux/arm/v8",
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/v5",
    ]
    assert [str(p) for p in oci.compatible_platforms(Platform.parse("linux/amd64/v3"))] == [
        "linux/amd64/v3",
        "linux/amd64/v2",
        "linux/amd64",
        "linux/386",
    ]
    assert [str(p) for p in oci.compatible_platforms(Platform.parse("linux/s390x"))] == ["linux/s390x"]


@pytest.mark.parametrize(
    ("os_name", "build", "expected"),
    [
        ("linux", "x86_64", "linux/amd64"),
        ("linux", "aarch64", "linux/arm64"),
        ("linux", "armv7l", "linux/arm/v7"),
        ("linux", "aarch64-unknown-linux-gnu", "linux/arm64"),
        ("linux", "x86_64-unknown-linux-musl", "linux/amd64"),
        ("", "linux/arm64", "linux/arm64"),
        ("linux", "", None),
        ("linux", "linux", "linux/linux"),
    ],
)
def test_host_platform(os_name: str, build: str, expected: str | None) -> None:
    platform = oci.host_platform(os_name, build)
    assert (str(platform) if platform else None) == expected


def test_select_entry_prefers_exact_then_compatible() -> None:
    entries = [
        {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:" + "3" * 64, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:" + "4" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
    ]
    assert oci.select_entry(entries, Platform.parse("linux/arm64")) is entries[2]
    assert oci.select_entry(entries[:2], Platform.parse("linux/arm64")) is entries[0]
    assert oci.select_entry(entries, Platform.parse("linux/s390x")) is None
    assert oci.select_entry(entries, Platform.parse("windows/amd64")) is None


# ------------------------------------------------------------------------------------------------ a registry


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeRegistry:
    """Manifests by reference; ``auth`` is none, bearer (token service at /token) or basic."""

    auth: str = "none"
    user: str = "alice"
    password: str = "s3cret"
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    base: str = ""
    wrong_content: set[str] = field(default_factory=set)
    status: int | None = None

    def add(self, reference: str, doc: dict[str, Any], media_type: str) -> str:
        body = json.dumps(doc).encode()
        digest = _digest(body)
        self.manifests[reference] = (media_type, body)
        self.manifests[digest] = (media_type, body)
        return digest

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.auth == "none":
            return True
        if self.auth == "basic":
            expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return header == f"Basic {expected}"
        return header in ("Bearer good-token", "Bearer harbor-token")

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query) | {"auth": request.headers.get("Authorization", "")})
        if request.query.get("service") != "fake-registry":
            return web.json_response({"errors": [{"code": "DENIED", "message": "wrong service"}]}, status=400)
        return web.json_response({"token": "good-token"})

    async def manifest(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers)))
        if self.status is not None:
            return web.json_response(
                {"errors": [{"code": "UNAVAILABLE", "message": "maintenance"}]}, status=self.status
            )
        if not self._authorized(request):
            if self.auth == "basic":
                challenge = 'Basic realm="fake"'
            else:
                challenge = (
                    f'Bearer realm="{self.base}/token",service="fake-registry",'
                    f'scope="repository:{request.match_info["repo"]}:pull"'
                )
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        reference = request.match_info["reference"]
        if reference not in self.manifests:
            return web.json_response(
                {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": reference}}]},
                status=404,
            )
        media_type, body = self.manifests[reference]
        if reference in self.wrong_content:
            body = body + b" "
        return web.Response(body=body, content_type=media_type.split(";")[0])


@pytest.fixture
async def registry() -> AsyncIterator[FakeRegistry]:
    fake = FakeRegistry()
    app = web.Application()
    app.router.add_get("/token", fake.token)
    app.router.add_get("/v2/{repo:.+}/manifests/{reference}", fake.manifest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def _image(fake: FakeRegistry, arch: str, media_type: str = oci.OCI_MANIFEST) -> tuple[str, list[str]]:
    blobs = [_digest(f"{arch}-{n}".encode()) for n in range(3)]
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0], "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 20} for d in blobs[1:]],
    }
    return fake.add("only-" + arch.replace("/", "-"), doc, media_type), blobs


def _index(fake: FakeRegistry, arches: list[str], media_type: str = oci.OCI_INDEX) -> dict[str, list[str]]:
    entries = []
    blobs = {}
    for arch in arches:
        digest, blobs[arch] = _image(fake, arch)
        os_name, _, rest = arch.partition("/")
        architecture, _, variant = rest.partition("/")
        platform = {"os": os_name, "architecture": architecture} | ({"variant": variant} if variant else {})
        entries.append({"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": 1, "platform": platform})
    fake.add("multi", {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}, media_type)
    return blobs


def _ref(fake: FakeRegistry, reference: str, repository: str = "team/app") -> oci.ImageRef:
    return oci.parse_manifest_url(f"{fake.base}/v2/{repository}/manifests/{reference}")


async def _resolve(fake: FakeRegistry, reference: str, *platforms: str, **kwargs: Any) -> dict[Platform, Any]:
    async with oci.Resolver(_ref(fake, reference), timeout=10, **kwargs) as resolver:
        result = await resolver.resolve([Platform.parse(p) for p in platforms])
        resolver_headers = resolver.headers
    return {"headers": resolver_headers} | result  # type: ignore[operator]


async def test_index_resolves_each_platform_to_its_own_blobs(registry: FakeRegistry) -> None:
    blobs = _index(registry, ["linux/amd64", "linux/arm64"])
    result = await _resolve(registry, "multi", "linux/arm64", "linux/amd64")
    arm = result[Platform.parse("linux/arm64")]
    amd = result[Platform.parse("linux/amd64")]
    assert [b.digest for b in arm.blobs] == blobs["linux/arm64"]
    assert [b.digest for b in amd.blobs] == blobs["linux/amd64"]
    assert arm.blob_urls[0] == f"{registry.base}/v2/team/app/blobs/{blobs['linux/arm64'][0]}"
    assert arm.platform == Platform.parse("linux/arm64")
    # The index once, each platform's manifest once: nothing else fetched.
    assert len(registry.requests) == 3


async def test_docker_manifest_list(registry: FakeRegistry) -> None:
    blobs = _index(registry, ["linux/amd64", "linux/arm/v7"], media_type=oci.DOCKER_MANIFEST_LIST)
    result = await _resolve(registry, "multi", "linux/arm64")
    # No arm64 entry: an arm64 host runs arm/v7, as containerd would pull it.
    assert [b.digest for b in result[Platform.parse("linux/arm64")].blobs] == blobs["linux/arm/v7"]


async def test_missing_platform_names_what_the_index_offers(registry: FakeRegistry) -> None:
    _index(registry, ["linux/amd64", "linux/arm64"])
    with pytest.raises(oci.PlatformNotFound) as info:
        await _resolve(registry, "multi", "linux/s390x")
    assert "no manifest for platform linux/s390x" in str(info.value)
    assert "linux/amd64, linux/arm64" in str(info.value)


async def test_single_manifest_serves_every_platform(registry: FakeRegistry) -> None:
    _, blobs = _image(registry, "linux/amd64", media_type=oci.DOCKER_MANIFEST)
    result = await _resolve(registry, "only-linux-amd64", "linux/arm64")
    image = result[Platform.parse("linux/arm64")]
    assert image.platform is None
    assert [b.digest for b in image.blobs] == blobs


async def test_missing_image_carries_the_registry_reason(registry: FakeRegistry) -> None:
    with pytest.raises(oci.ImageNotFound) as info:
        await _resolve(registry, "nope", "linux/amd64")
    message = str(info.value)
    assert "404" in message
    assert "MANIFEST_UNKNOWN: manifest unknown" in message
    assert info.value.code == "MANIFEST_UNKNOWN"
    assert not info.value.retryable


async def test_server_errors_are_retryable(registry: FakeRegistry) -> None:
    registry.status = 503
    with pytest.raises(oci.RegistryError) as info:
        await _resolve(registry, "any", "linux/amd64")
    assert info.value.retryable
    assert "UNAVAILABLE: maintenance" in str(info.value)


async def test_unreachable_registry_is_retryable() -> None:
    ref = oci.parse_manifest_url("http://127.0.0.1:9/v2/app/manifests/1")
    async with oci.Resolver(ref, timeout=5) as resolver:
        with pytest.raises(oci.RegistryError) as info:
            await resolver.resolve([Platform.parse("linux/amd64")])
    assert info.value.retryable
    assert "cannot reach 127.0.0.1" in str(info.value)


async def test_bearer_challenge_fetches_a_token_anonymously(registry: FakeRegistry) -> None:
    registry.auth = "bearer"
    _index(registry, ["linux/amd64"])
    result = await _resolve(registry, "multi", "linux/amd64")
    assert result["headers"] == {"Authorization": "Bearer good-token"}
    assert registry.token_requests == [
        {"service": "fake-registry", "scope": "repository:team/app:pull", "auth": ""},
    ]


async def test_bearer_token_request_carries_the_credentials(registry: FakeRegistry) -> None:
    registry.auth = "bearer"
    _index(registry, ["linux/amd64"])
    await _resolve(registry, "multi", "linux/amd64", username="alice", password="s3cret")
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert registry.token_requests[0]["auth"] == expected


async def test_callers_authorization_is_used_without_a_challenge(registry: FakeRegistry) -> None:
    registry.auth = "bearer"
    _index(registry, ["linux/amd64"])
    result = await _resolve(
        registry, "multi", "linux/amd64", headers={"Authorization": "Bearer harbor-token", "X-Extra": "1"}
    )
    assert registry.token_requests == []
    assert all(headers.get("Authorization") == "Bearer harbor-token" for _, headers in registry.requests)
    assert result["headers"] == {"Authorization": "Bearer harbor-token", "X-Extra": "1"}


async def test_basic_challenge(registry: FakeRegistry) -> None:
    registry.auth = "basic"
    _index(registry, ["linux/amd64"])
    with pytest.raises(oci.RegistryAuthError) as info:
        await _resolve(registry, "multi", "linux/amd64")
    assert "username and password" in str(info.value)
    result = await _resolve(registry, "multi", "linux/amd64", username="alice", password="s3cret")
    assert result["headers"]["Authorization"].startswith("Basic ")


async def test_wrong_credentials_are_an_auth_error(registry: FakeRegistry) -> None:
    registry.auth = "basic"
    _index(registry, ["linux/amd64"])
    with pytest.raises(oci.RegistryAuthError) as info:
        await _resolve(registry, "multi", "linux/amd64", username="alice", password="wrong")
    assert "401" in str(info.value)
    assert "UNAUTHORIZED: authentication required" in str(info.value)


async def test_manifest_by_digest_must_match_it(registry: FakeRegistry) -> None:
    digest, _ = _image(registry, "linux/amd64")
    registry.wrong_content.add(digest)
    with pytest.raises(oci.RegistryError) as info:
        await _resolve(registry, digest, "linux/amd64")
    assert "not the one asked for" in str(info.value)


def test_parse_challenge() -> None:
    scheme, params = oci.parse_challenge('Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://a/token", "service": "reg", "scope": "repository:x:pull,push"}
    assert oci.parse_challenge("Basic realm=x") == ("basic", {"realm": "x"})
