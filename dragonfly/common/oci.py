"""OCI images through the registry API: references, platforms, auth, manifests → blob URLs (``docs/preheat.md#images``).

Used by the scheduler (PreheatImage, StatImage) and by the manager and the CLI (checking and normalising what a
user asked for); the two never import each other, so it lives here.

- A **reference** is either the manifest URL Dragonfly's Open API takes (``<scheme>://<registry>/v2/<repository>/
  manifests/<tag|digest>``, what Harbor sends) or an image name as ``docker pull`` takes it (``alpine:3.19``,
  ``127.0.0.1:5000/team/app@sha256:…``), normalised the way Docker does.
- **Auth**: a caller's ``Authorization`` header (Harbor passes a registry token) is used as it is; on 401 the
  registry's challenge is followed: a ``Bearer`` challenge fetches a pull token from its realm (anonymously, or with
  the username and password given), a ``Basic`` challenge takes the username and password. The header that worked
  is what the blob downloads must send too (``Resolver.authorization``).
- **Manifests**: Docker schema 2 and OCI manifests; Docker manifest lists and OCI indexes, from which one entry per
  requested platform is chosen, the one a runtime of that platform would pull (containerd's preference order:
  ``linux/arm64`` also accepts ``linux/arm/v8``… when no arm64 entry exists). Dragonfly preheats every compatible
  entry instead; a pull never needs more than one. Schema 1 manifests are read for their layers.
- **Errors** keep the registry's own reason (``MANIFEST_UNKNOWN: manifest unknown``) so a failed preheat says why.

Responses are bounded (manifests 4 MiB as in the distribution spec, tokens and error bodies less); a manifest
fetched by digest must hash to that digest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform as _platform
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from dragonfly.common.errors import DragonflyError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
INDEX_MEDIA_TYPES = frozenset((OCI_INDEX, DOCKER_MANIFEST_LIST))
MANIFEST_MEDIA_TYPES = frozenset((OCI_MANIFEST, DOCKER_MANIFEST))
SCHEMA1_MEDIA_TYPES = frozenset((DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED))
ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED))

#: The distribution spec lets registries refuse manifests over 4 MiB; nothing legitimate is bigger.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
_MAX_TOKEN_SIZE = 1024 * 1024
_MAX_ERROR_SIZE = 64 * 1024
#: Indexes of indexes exist (rarely); deeper nesting is a loop or an attack.
_MAX_INDEX_DEPTH = 4
DEFAULT_TIMEOUT = 60.0

DOCKER_HUB = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset(("docker.io", "index.docker.io", "registry-1.docker.io"))

# The distribution reference grammar (github.com/distribution/reference), written out.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_MANIFEST_URL = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<registry>[^/?#]+)/v2/(?P<path>[^?#]+)$")
_REGISTRY = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9.-]+)(?::\d{1,5})?$")
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class RegistryError(DragonflyError):
    """A registry refused, failed or answered nonsense; the message carries its own reason.

    ``retryable`` is true for what may pass on a later try (connection errors, timeouts, 429 and 5xx answers).
    """

    def __init__(self, message: str, *, status: int | None = None, code: str = "", retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable


class ImageNotFound(RegistryError, LookupError):
    """The repository, tag or digest does not exist (the registry answered 404)."""


class PlatformNotFound(ImageNotFound):
    """The image index has no entry a host of the requested platform could run."""


class RegistryAuthError(RegistryError, PermissionError):
    """The registry refused the credentials (or wants some and none were given)."""


class InvalidReference(DragonflyError, ValueError):
    """An image reference, manifest URL or platform string is malformed."""


# ---------------------------------------------------------------------------------------------------- references


@dataclass(frozen=True, slots=True)
class ImageRef:
    """``<scheme>://<registry>/v2/<repository>/manifests/<reference>`` in parts."""

    scheme: str
    registry: str
    repository: str
    reference: str

    @property
    def is_digest(self) -> bool:
        return ":" in self.reference

    @property
    def manifest_url(self) -> str:
        return self.manifest_url_of(self.reference)

    def manifest_url_of(self, reference: str) -> str:
        return f"{self.scheme}://{self.registry}/v2/{self.repository}/manifests/{reference}"

    def blob_url(self, digest: str) -> str:
        """Return the URL peers download a blob from (its task id is the digest, ``docs/preheat.md#task-ids``)."""
        return f"{self.scheme}://{self.registry}/v2/{self.repository}/blobs/{digest}"

    def __str__(self) -> str:
        separator = "@" if self.is_digest else ":"
        return f"{self.registry}/{self.repository}{separator}{self.reference}"


def _check_parts(registry: str, repository: str, reference: str, what: str) -> None:
    if not _REGISTRY.match(registry):
        raise InvalidReference(f"{what}: {registry!r} is not a registry host[:port]")
    if not _REPOSITORY.match(repository):
        raise InvalidReference(
            f"{what}: repository {repository!r} is not valid (lower-case path components of letters, digits, . _ -)"
        )
    if not (_TAG.match(reference) or _DIGEST.match(reference)):
        raise InvalidReference(f"{what}: {reference!r} is neither a tag nor a digest such as sha256:<hex>")


def parse_manifest_url(url: str) -> ImageRef:
    """Split a manifest URL (``https://r.example/v2/team/app/manifests/1.0``) into its parts."""
    match = _MANIFEST_URL.match(url.strip())
    path = match["path"] if match else ""
    repository, sep, reference = path.rpartition("/manifests/")
    if not match or not sep:
        raise InvalidReference(
            f"{url!r} is not a manifest URL: expected <scheme>://<registry>/v2/<repository>/manifests/<tag or digest>"
        )
    scheme = match["scheme"].lower()
    if scheme not in ("http", "https"):
        raise InvalidReference(f"{url!r}: registries speak http or https, not {scheme}")
    _check_parts(match["registry"], repository, reference, url)
    return ImageRef(scheme, match["registry"], repository, reference)


def parse_image(text: str, *, plain_http: bool = False) -> ImageRef:
    """Parse ``[registry/]repository[:tag][@digest]`` as Docker does, or a manifest URL.

    A first component with a dot or a port, or ``localhost``, names the registry; otherwise the image is on
    Docker Hub (``library/`` for one-component names). ``plain_http`` chooses ``http://`` for the registry.
    """
    text = text.strip()
    if "://" in text:
        return parse_manifest_url(text)
    name, at, digest = text.partition("@")
    if at and not _DIGEST.match(digest):
        raise InvalidReference(f"{text!r}: {digest!r} after @ is not a digest such as sha256:<hex>")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, remainder = first, rest
    else:
        registry, remainder = "docker.io", name
    tag = ""
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in remainder:
            remainder = f"library/{remainder}"
    reference = digest or tag or "latest"
    _check_parts(registry, remainder, reference, text)
    return ImageRef("http" if plain_http else "https", registry, remainder, reference)


# ---------------------------------------------------------------------------------------------------- platforms

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "x64": "amd64",
    "i386": "386",
    "i686": "386",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "ppc64el": "ppc64le",
}


@dataclass(frozen=True, slots=True, order=True)
class Platform:
    """``os/architecture[/variant]`` in OCI's names, normalised (``linux/aarch64`` is ``linux/arm64``)."""

    os: str
    architecture: str
    variant: str = ""

    def __post_init__(self) -> None:
        arch, variant = _normalize_arch(self.architecture.lower(), self.variant.lower())
        object.__setattr__(self, "os", self.os.lower())
        object.__setattr__(self, "architecture", arch)
        object.__setattr__(self, "variant", variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``linux/arm64``, ``linux/arm/v7`` (an OS is required, as Dragonfly's ``os/arch``)."""
        parts = text.strip().split("/")
        if not 2 <= len(parts) <= 3 or not all(re.fullmatch(r"[A-Za-z0-9_.-]+", part) for part in parts):
            raise InvalidReference(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/amd64")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    arch = _ARCH_ALIASES.get(arch, arch)
    if arch.startswith("armv") and arch[4:5].isdigit():  # uname's armv7l, armv6l
        return "arm", f"v{arch[4]}"
    if arch == "arm64":
        # arm64 without a variant is v8, the only one runtimes publish; "8" and "v8" name it too.
        return arch, "" if variant in ("", "8", "v8", "v8.0") else variant
    if arch == "arm":
        if variant in ("", "7"):
            return arch, "v7"
        return arch, f"v{variant}" if variant.isdigit() else variant
    if arch == "amd64" and variant in ("v1", "1"):
        return arch, ""
    return arch, variant


def compatible_platforms(wanted: Platform) -> list[Platform]:
    """Return what a host of ``wanted`` can run, best first (containerd's order for amd64 and arm)."""
    result = [wanted]
    if wanted.architecture == "amd64":
        level = int(wanted.variant[1:]) if re.fullmatch(r"v[2-4]", wanted.variant) else 1
        result += [Platform(wanted.os, "amd64", f"v{v}") for v in range(level - 1, 1, -1)]
        if level > 1:
            result.append(Platform(wanted.os, "amd64"))
        result.append(Platform(wanted.os, "386"))
    elif wanted.architecture == "arm64" and not wanted.variant:
        result += [Platform(wanted.os, "arm", f"v{v}") for v in range(8, 4, -1)]
    elif wanted.architecture == "arm" and re.fullmatch(r"v[5-8]", wanted.variant):
        result += [Platform(wanted.os, "arm", f"v{v}") for v in range(int(wanted.variant[1:]) - 1, 4, -1)]
    return result


def local_platform() -> Platform:
    """Return this machine's platform."""
    system = _platform.system().lower() or "linux"
    return Platform(system, _platform.machine() or "amd64")


def host_platform(os_name: str, build_platform: str) -> Platform | None:
    """Return the platform a host announces, or None when it does not say (``docs/preheat.md#platforms``).

    ``build_platform`` (``common.v2.Build.platform``) is read as ``os/arch[/variant]``, a machine name
    (``x86_64``, what our dfdaemon sends) or a Rust target triple (``aarch64-unknown-linux-gnu``).
    """
    text = build_platform.strip().lower()
    if not text:
        return None
    if "/" in text:
        try:
            return Platform.parse(text)
        except InvalidReference:
            return None
    machine = text.split("-", 1)[0] if "-" in text and "x86-64" not in text else text
    arch, _variant = _normalize_arch(machine, "")
    if not re.fullmatch(r"[a-z0-9_]+", arch) or arch in ("unknown", "none"):
        return None
    return Platform(os_name.strip().lower() or "linux", machine)


def _entry_platform(entry: Mapping[str, Any]) -> Platform | None:
    spec = entry.get("platform")
    if not isinstance(spec, Mapping):
        return None
    os_name, arch = spec.get("os"), spec.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    variant = spec.get("variant")
    return Platform(os_name, arch, variant if isinstance(variant, str) else "")


def select_entry(entries: Sequence[Mapping[str, Any]], wanted: Platform) -> Mapping[str, Any] | None:
    """Return the index entry a host of ``wanted`` would pull: its best compatible platform, first in index order."""
    for candidate in compatible_platforms(wanted):
        for entry in entries:
            if _entry_platform(entry) == candidate:
                return entry
    return None


def index_platforms(entries: Iterable[Mapping[str, Any]]) -> list[Platform]:
    """Return the platforms an index offers (attestation entries such as unknown/unknown included)."""
    return sorted({p for p in map(_entry_platform, entries) if p is not None})


# ---------------------------------------------------------------------------------------------------- resolution


@dataclass(frozen=True, slots=True)
class Blob:
    """One blob a manifest references."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """One platform's manifest and the blobs a pull of it downloads (config first, then layers)."""

    ref: ImageRef
    platform: Platform | None  # None: the reference is a single-platform manifest, not an index
    manifest_digest: str
    media_type: str
    blobs: tuple[Blob, ...]

    @property
    def blob_urls(self) -> list[str]:
        return [self.ref.blob_url(blob.digest) for blob in self.blobs]


@dataclass(frozen=True, slots=True)
class _Manifest:
    media_type: str
    digest: str
    doc: Mapping[str, Any]


class Resolver:
    """Resolve one image reference through its registry; ``async with Resolver(...) as r: await r.resolve(...)``.

    ``headers`` go with every registry request (a caller's ``Authorization`` is used as is until the registry
    refuses it); ``username``/``password`` answer Basic challenges and authenticate token requests. ``ssl`` is an
    ``ssl.SSLContext``, True (system roots) or False (no verification).
    """

    def __init__(
        self,
        ref: ImageRef,
        *,
        headers: Mapping[str, str] | None = None,
        username: str = "",
        password: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | bool = True,
    ) -> None:
        self.ref = ref
        self._headers = {k: v for k, v in (headers or {}).items() if k.lower() not in ("accept", "host")}
        self._authorization: str | None = next(
            (v for k, v in self._headers.items() if k.lower() == "authorization"), None
        )
        self._headers = {k: v for k, v in self._headers.items() if k.lower() != "authorization"}
        self._username = username
        self._password = password
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._manifests: dict[str, _Manifest] = {}

    @property
    def authorization(self) -> str | None:
        """Return the ``Authorization`` value that worked (blob downloads need it), or None (anonymous)."""
        return self._authorization

    @property
    def headers(self) -> dict[str, str]:
        """Return the headers blob downloads send: the caller's, with the working ``Authorization``."""
        headers = dict(self._headers)
        if self._authorization:
            headers["Authorization"] = self._authorization
        return headers

    async def __aenter__(self) -> Resolver:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8),
            headers={"User-Agent": _user_agent()},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def resolve(self, platforms: Sequence[Platform]) -> dict[Platform, ResolvedImage]:
        """Return, per requested platform, the manifest and blobs a host of that platform pulls.

        A single-platform manifest serves every platform (registries do not say which it is for, and a runtime
        pulls it whatever its own platform). Raises ImageNotFound / PlatformNotFound / RegistryAuthError /
        RegistryError with the registry's reason.
        """
        if not platforms:
            raise ValueError("resolve needs at least one platform")
        top = await self._manifest(self.ref.reference)
        result: dict[Platform, ResolvedImage] = {}
        for wanted in dict.fromkeys(platforms):
            result[wanted] = await self._resolve_for(top, wanted, depth=0)
        return result

    async def _resolve_for(self, manifest: _Manifest, wanted: Platform, depth: int) -> ResolvedImage:
        if manifest.media_type in INDEX_MEDIA_TYPES:
            if depth >= _MAX_INDEX_DEPTH:
                raise RegistryError(f"{self.ref}: image indexes nested deeper than {_MAX_INDEX_DEPTH} levels")
            entries = _entries(manifest.doc, self.ref)
            entry = select_entry(entries, wanted)
            if entry is None:
                offered = ", ".join(str(p) for p in index_platforms(entries)) or "none"
                raise PlatformNotFound(
                    f"{self.ref}: no manifest for platform {wanted} in the image index (it offers: {offered})",
                    status=404,
                    code="PLATFORM_UNKNOWN",
                )
            child = await self._manifest(_digest_of(entry, self.ref))
            resolved = await self._resolve_for(child, wanted, depth + 1)
            return ResolvedImage(self.ref, wanted, resolved.manifest_digest, resolved.media_type, resolved.blobs)
        return ResolvedImage(self.ref, None, manifest.digest, manifest.media_type, _blobs(manifest, self.ref))

    async def _manifest(self, reference: str) -> _Manifest:
        cached = self._manifests.get(reference)
        if cached is not None:
            return cached
        url = self.ref.manifest_url_of(reference)
        what = f"manifest {self.ref.registry}/{self.ref.repository}{'@' if ':' in reference else ':'}{reference}"
        body, headers = await self._get(url, what, accept=ACCEPT, limit=MAX_MANIFEST_SIZE)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ":" in reference and _SHA256.match(reference) and reference != digest:
            raise RegistryError(f"{what}: the registry sent content with digest {digest}, not the one asked for")
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise RegistryError(f"{what}: the registry sent a manifest that is not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise RegistryError(f"{what}: the registry sent a manifest that is not a JSON object")
        media_type = _media_type(headers.get("Content-Type", ""), doc)
        if media_type is None:
            raise RegistryError(
                f"{what}: unsupported manifest (Content-Type {headers.get('Content-Type', '-')!r}, "
                f"mediaType {doc.get('mediaType', '-')!r})"
            )
        manifest = _Manifest(media_type, digest, doc)
        self._manifests[reference] = manifest
        return manifest

    async def _get(self, url: str, what: str, *, accept: str, limit: int) -> tuple[bytes, Mapping[str, str]]:
        """GET with the current credentials; on 401 follow the challenge once and try again."""
        for attempt in range(2):
            headers = {**self._headers, "Accept": accept}
            if self._authorization:
                headers["Authorization"] = self._authorization
            status, reason, response_headers, body = await self._send(url, headers, what, limit)
            if status == 401 and attempt == 0:
                await self._authenticate(response_headers.get("WWW-Authenticate", ""), what)
                continue
            if status == 200:
                return body, response_headers
            raise _error_for(status, reason, body, what, self.ref)
        raise AssertionError("unreachable")

    async def _send(
        self, url: str, headers: Mapping[str, str], what: str, limit: int
    ) -> tuple[int, str, Mapping[str, str], bytes]:
        assert self._session is not None, "use Resolver as an async context manager"
        try:
            async with self._session.get(url, headers=headers, max_redirects=5) as response:
                declared = response.content_length
                if response.status == 200 and declared is not None and declared > limit:
                    raise RegistryError(f"{what}: {declared} bytes, more than the {limit} this client reads")
                body = await response.content.read(limit + 1)
                if response.status == 200 and len(body) > limit:
                    raise RegistryError(f"{what}: more than the {limit} bytes this client reads")
                return response.status, response.reason or "", response.headers, body
        except RegistryError:
            raise
        except TimeoutError:
            raise RegistryError(f"{what}: the registry did not answer in time", retryable=True) from None
        except aiohttp.TooManyRedirects:
            raise RegistryError(f"{what}: too many redirects") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RegistryError(f"{what}: cannot reach {URL(url).host}: {exc}", retryable=True) from None

    async def _authenticate(self, challenge: str, what: str) -> None:
        """Answer a 401 challenge: fetch a bearer token, or use Basic credentials."""
        scheme, params = parse_challenge(challenge)
        has_credentials = bool(self._username or self._password)
        if scheme == "basic":
            if not has_credentials:
                raise RegistryAuthError(f"{what}: the registry wants a username and password (Basic)", status=401)
            self._authorization = "Basic " + _basic(self._username, self._password)
            return
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthError(
                f"{what}: the registry answered 401 without a usable challenge ({challenge or 'none'!r})", status=401
            )
        realm = URL(params["realm"])
        if realm.scheme not in ("http", "https"):
            raise RegistryAuthError(f"{what}: token realm {params['realm']!r} is not an http(s) URL", status=401)
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Accept": "application/json"}
        if has_credentials:
            headers["Authorization"] = "Basic " + _basic(self._username, self._password)
        status, reason, _headers, body = await self._send(
            str(realm.update_query(query)), headers, f"{what} (token)", _MAX_TOKEN_SIZE
        )
        if status != 200:
            error = _error_for(status, reason, body, f"{what}: token from {realm.host}", self.ref)
            raise RegistryAuthError(str(error), status=status, code=error.code, retryable=error.retryable)
        token: object = None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            pass
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"{what}: the token service at {realm.host} sent no token", status=status)
        self._authorization = f"Bearer {token}"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``Bearer realm="…",service="…",scope="…"`` into a lower-case scheme and its parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM.finditer(rest):
        quoted, bare = match[2], match[3]
        params[match[1].lower()] = bare if bare is not None else re.sub(r"\\(.)", r"\1", quoted)
    return scheme.lower(), params


def _media_type(content_type: str, doc: Mapping[str, Any]) -> str | None:
    declared = content_type.split(";", 1)[0].strip().lower()
    known = INDEX_MEDIA_TYPES | MANIFEST_MEDIA_TYPES | SCHEMA1_MEDIA_TYPES
    if declared in known:
        return declared
    in_doc = doc.get("mediaType")
    if isinstance(in_doc, str) and in_doc in known:
        return in_doc
    # Registries that answer application/json: tell by shape (the OCI spec allows mediaType to be absent).
    if isinstance(doc.get("manifests"), list):
        return OCI_INDEX
    if isinstance(doc.get("layers"), list):
        return OCI_MANIFEST
    if isinstance(doc.get("fsLayers"), list):
        return DOCKER_SCHEMA1
    return None


def _entries(doc: Mapping[str, Any], ref: ImageRef) -> list[Mapping[str, Any]]:
    entries = doc.get("manifests")
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise RegistryError(f"{ref}: the image index has no valid 'manifests' list")
    return entries


def _digest_of(descriptor: Mapping[str, Any], ref: ImageRef) -> str:
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise RegistryError(f"{ref}: a descriptor has an invalid digest {digest!r}")
    return digest


def _blob(descriptor: Any, ref: ImageRef) -> Blob:
    if not isinstance(descriptor, Mapping):
        raise RegistryError(f"{ref}: a manifest descriptor is not an object")
    size = descriptor.get("size", -1)
    media_type = descriptor.get("mediaType", "")
    return Blob(
        _digest_of(descriptor, ref),
        size if isinstance(size, int) else -1,
        media_type if isinstance(media_type, str) else "",
    )


def _blobs(manifest: _Manifest, ref: ImageRef) -> tuple[Blob, ...]:
    doc = manifest.doc
    blobs: list[Blob] = []
    if manifest.media_type in SCHEMA1_MEDIA_TYPES:
        layers = doc.get("fsLayers")
        if not isinstance(layers, list):
            raise RegistryError(f"{ref}: schema 1 manifest without fsLayers")
        # Schema 1 lists layers top first and repeats empty ones; a pull fetches each once.
        for layer in reversed(layers):
            digest = layer.get("blobSum") if isinstance(layer, Mapping) else None
            blobs.append(_blob({"digest": digest, "size": -1}, ref))
    else:
        if "config" in doc:
            blobs.append(_blob(doc["config"], ref))
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise RegistryError(f"{ref}: manifest without a layers list")
        blobs.extend(_blob(layer, ref) for layer in layers)
    return tuple({blob.digest: blob for blob in blobs}.values())


def _error_for(status: int, reason: str, body: bytes, what: str, ref: ImageRef) -> RegistryError:
    """Build the error for a non-200 answer, with the registry's own codes and messages."""
    details = _registry_errors(body[:_MAX_ERROR_SIZE])
    text = f"{what}: the registry answered {status} {reason}".rstrip() + (f": {details[1]}" if details[1] else "")
    code = details[0]
    if status == 404:
        return ImageNotFound(text, status=status, code=code)
    if status in (401, 403):
        return RegistryAuthError(text, status=status, code=code)
    return RegistryError(text, status=status, code=code, retryable=status == 429 or status >= 500)


def _registry_errors(body: bytes) -> tuple[str, str]:
    """Return the first error code and every ``CODE: message`` of a distribution error body."""
    try:
        doc = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return "", " ".join(text.split())[:300]
    errors = doc.get("errors") if isinstance(doc, Mapping) else None
    if not isinstance(errors, list):
        return "", ""
    parts = []
    first = ""
    for item in errors[:5]:
        if not isinstance(item, Mapping):
            continue
        code = str(item.get("code", ""))[:64]
        first = first or code
        message = str(item.get("message", ""))[:300]
        parts.append(f"{code}: {message}" if code and message else code or message)
    return first, "; ".join(parts)


def _basic(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def _user_agent() -> str:
    import dragonfly

    return f"dragonfly/{dragonfly.__version__}"
