"""Request and response bodies. Requests refuse unknown fields and bound every string and list."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from dragonfly.common.patterns import compile_pattern

#: Names of clusters, applications, users, roles, tokens: letters, digits and ``._-``, starting alphanumeric.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=255)]
Bio = Annotated[str, StringConstraints(max_length=1024)]
Hostname = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$", max_length=253)]
ShortText = Annotated[str, StringConstraints(max_length=1024, pattern=r"^[^\x00-\x1f\x7f]*$")]
URLText = Annotated[str, StringConstraints(max_length=1024, pattern=r"^(|https?://[^\s\x00-\x1f\x7f]+)$")]
Port = Annotated[int, Field(ge=1, le=65535)]
#: A row id: bounded so it fits every database's 64-bit integer.
RowID = Annotated[int, Field(ge=1, le=2**63 - 1)]


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not an IP address: {value[:64]!r}") from None


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"not a CIDR: {value[:64]!r}") from None


def _regex(value: str) -> str:
    # RE2, as the scheduler and the searcher compile it: these patterns meet host names and URLs peers send.
    compile_pattern(value)
    return value


IP = Annotated[str, StringConstraints(max_length=64), AfterValidator(_ip)]
CIDR = Annotated[str, StringConstraints(max_length=64), AfterValidator(_cidr)]
Regex = Annotated[str, StringConstraints(max_length=1024), AfterValidator(_regex)]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


class Request(BaseModel):
    """A request body: unknown fields are an error, not silently dropped; no string may hold a NUL character
    (PostgreSQL cannot store one, and no name, URL or text here needs it)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


class Filter(BaseModel):
    """Query filters of a list; other query parameters (page, per_page, access_token) pass by."""

    model_config = ConfigDict(extra="ignore")


class Response(BaseModel):
    """A response body read from ORM rows."""

    model_config = ConfigDict(from_attributes=True)


class Row(Response):
    """Fields every stored resource has."""

    id: int
    created_at: dt.datetime
    updated_at: dt.datetime


class ErrorDetail(BaseModel):
    """Where a request was invalid and why (the rejected value is never echoed)."""

    loc: list[str]
    msg: str
    type: str | None = None


class ErrorOut(BaseModel):
    """Every error answer of the REST API."""

    message: str
    errors: list[ErrorDetail] | None = None


#: Documented on every /api/v1 route, so the spec lists what a client may get besides success.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "a request that cannot be served as asked"),
        (401, "no token, or an invalid, expired or revoked one"),
        (403, "the role or the token's scopes do not allow it"),
        (404, "no such record"),
        (409, "a unique field is taken, or a built-in record would break"),
        (413, "request body too large"),
        (422, "invalid request (body, path or query)"),
        (429, "too many failed sign-ins"),
    )
}


# --- cluster configuration (JSON columns; the ranges are Dragonfly's) ---


class BlockRules(Request):
    """Which tasks a block list matches."""

    applications: list[Name] = Field(default_factory=list, max_length=1000)
    urls: list[Regex] = Field(default_factory=list, max_length=1000)
    tags: list[ShortText] = Field(default_factory=list, max_length=1000)
    priorities: list[Annotated[int, Field(ge=0, le=6)]] = Field(default_factory=list, max_length=7)


class BlockList(Request):
    """Download and upload block lists."""

    download: BlockRules | None = None
    upload: BlockRules | None = None


class SchedulerClusterConfig(Request):
    """``scheduler_cluster.config``: what the schedulers of the cluster apply."""

    candidate_parent_limit: int | None = Field(default=None, ge=1, le=20)
    filter_parent_limit: int | None = Field(default=None, ge=10, le=1000)
    job_rate_limit: int | None = Field(default=None, ge=1, le=1_000_000)


class ClientConfig(Request):
    """``scheduler_cluster.client_config``: what the cluster's peers apply."""

    load_limit: int | None = Field(default=None, ge=1, le=2000)
    block_list: BlockList | None = None


class SeedClientConfig(Request):
    """``scheduler_cluster.seed_client_config``."""

    block_list: BlockList | None = None


class Scopes(Request):
    """Which hosts a scheduler cluster serves (matched by ListSchedulers)."""

    idc: ShortText = ""
    location: ShortText = ""
    cidrs: list[CIDR] = Field(default_factory=list, max_length=1000)
    hostnames: list[Regex] = Field(default_factory=list, max_length=1000)


class SeedPeerClusterConfig(Request):
    """``seed_peer_cluster.config``."""

    load_limit: int | None = Field(default=None, ge=1, le=50_000)
    block_list: BlockList | None = None


def dump(model: BaseModel | None) -> dict[str, Any]:
    """Return a JSON column's value (unset fields left out)."""
    return {} if model is None else model.model_dump(exclude_none=True)


# --- scheduler clusters ---


class SchedulerClusterCreate(Request):
    name: Name
    bio: Bio = ""
    config: SchedulerClusterConfig = Field(default_factory=SchedulerClusterConfig)
    client_config: ClientConfig = Field(default_factory=ClientConfig)
    seed_client_config: SeedClientConfig = Field(default_factory=SeedClientConfig)
    scopes: Scopes = Field(default_factory=Scopes)
    is_default: bool = False
    seed_peer_cluster_ids: list[RowID] = Field(default_factory=list, max_length=100)


class SchedulerClusterUpdate(Request):
    name: Name | None = None
    bio: Bio | None = None
    config: SchedulerClusterConfig | None = None
    client_config: ClientConfig | None = None
    seed_client_config: SeedClientConfig | None = None
    scopes: Scopes | None = None
    is_default: bool | None = None
    seed_peer_cluster_ids: list[RowID] | None = Field(default=None, max_length=100)


class SchedulerClusterOut(Row):
    name: str
    bio: str
    config: dict[str, Any]
    client_config: dict[str, Any]
    seed_client_config: dict[str, Any]
    scopes: dict[str, Any]
    is_default: bool
    seed_peer_cluster_ids: list[int] = []


class NameFilter(Filter):
    name: Name | None = None


# --- seed peer clusters ---


class SeedPeerClusterCreate(Request):
    name: Name
    bio: Bio = ""
    config: SeedPeerClusterConfig = Field(default_factory=SeedPeerClusterConfig)
    scheduler_cluster_ids: list[RowID] = Field(default_factory=list, max_length=100)


class SeedPeerClusterUpdate(Request):
    name: Name | None = None
    bio: Bio | None = None
    config: SeedPeerClusterConfig | None = None
    scheduler_cluster_ids: list[RowID] | None = Field(default=None, max_length=100)


class SeedPeerClusterOut(Row):
    name: str
    bio: str
    config: dict[str, Any]
    scheduler_cluster_ids: list[int] = []


# --- schedulers and seed peers (normally registered over gRPC; REST for operators) ---

STATES = r"^(active|inactive)$"
Feature = Annotated[str, StringConstraints(pattern=r"^(schedule|preheat)$")]


class SchedulerCreate(Request):
    hostname: Hostname
    idc: ShortText = ""
    location: ShortText = ""
    ip: IP
    port: Port
    features: list[Feature] = Field(default_factory=lambda: ["schedule"], max_length=2)
    scheduler_cluster_id: RowID


class SchedulerUpdate(Request):
    idc: ShortText | None = None
    location: ShortText | None = None
    ip: IP | None = None
    port: Port | None = None
    state: Annotated[str, StringConstraints(pattern=STATES)] | None = None
    features: list[Feature] | None = Field(default=None, max_length=2)
    scheduler_cluster_id: RowID | None = None


class SchedulerOut(Row):
    hostname: str
    idc: str
    location: str
    ip: str
    port: int
    state: str
    features: list[Any]
    last_keep_alive_at: dt.datetime | None
    scheduler_cluster_id: int


class SchedulerFilter(Filter):
    hostname: Hostname | None = None
    idc: ShortText | None = None
    location: ShortText | None = None
    ip: IP | None = None
    state: Annotated[str, StringConstraints(pattern=STATES)] | None = None
    scheduler_cluster_id: RowID | None = None


class SeedPeerCreate(Request):
    hostname: Hostname
    type: Annotated[str, StringConstraints(pattern=r"^super$")] = "super"
    idc: ShortText = ""
    location: ShortText = ""
    ip: IP
    port: Port
    download_port: Port
    object_storage_port: Annotated[int, Field(ge=0, le=65535)] = 0
    seed_peer_cluster_id: RowID


class SeedPeerUpdate(Request):
    idc: ShortText | None = None
    location: ShortText | None = None
    ip: IP | None = None
    port: Port | None = None
    download_port: Port | None = None
    object_storage_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    state: Annotated[str, StringConstraints(pattern=STATES)] | None = None
    seed_peer_cluster_id: RowID | None = None


class SeedPeerOut(Row):
    hostname: str
    type: str
    idc: str
    location: str
    ip: str
    port: int
    download_port: int
    object_storage_port: int
    state: str
    last_keep_alive_at: dt.datetime | None
    seed_peer_cluster_id: int


class SeedPeerFilter(Filter):
    hostname: Hostname | None = None
    idc: ShortText | None = None
    location: ShortText | None = None
    ip: IP | None = None
    state: Annotated[str, StringConstraints(pattern=STATES)] | None = None
    seed_peer_cluster_id: RowID | None = None


# --- applications ---


class PriorityURL(Request):
    regex: Regex
    # common.v2.Priority: LEVEL0..LEVEL6
    value: int = Field(ge=0, le=6)


class Priority(Request):
    value: int = Field(ge=0, le=6)
    urls: list[PriorityURL] = Field(default_factory=list, max_length=1000)


class ApplicationCreate(Request):
    name: Name
    url: URLText = ""
    bio: Bio = ""
    priority: Priority


class ApplicationUpdate(Request):
    name: Name | None = None
    url: URLText | None = None
    bio: Bio | None = None
    priority: Priority | None = None


class ApplicationOut(Row):
    name: str
    url: str
    bio: str
    priority: dict[str, Any]
    user_id: int | None


# --- users, sessions, roles ---

Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
Email = Annotated[str, StringConstraints(max_length=255, pattern=r"^(|[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+)$")]


class SigninRequest(Request):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class SigninResponse(BaseModel):
    token: str
    expires_at: dt.datetime
    user_id: int


class UserCreate(Request):
    name: Name
    password: Password
    email: Email = ""
    bio: Bio = ""
    phone: Annotated[str, StringConstraints(max_length=64, pattern=r"^[0-9+() -]*$")] = ""
    location: ShortText = ""
    roles: list[Name] = Field(default_factory=lambda: ["guest"], max_length=100)


class UserUpdate(Request):
    email: Email | None = None
    bio: Bio | None = None
    phone: Annotated[str, StringConstraints(max_length=64, pattern=r"^[0-9+() -]*$")] | None = None
    location: ShortText | None = None
    avatar: URLText | None = None
    state: Annotated[str, StringConstraints(pattern=r"^(enable|disable)$")] | None = None


class UserOut(Row):
    name: str
    email: str
    state: str
    bio: str
    avatar: str
    phone: str
    location: str
    roles: list[str] = []

    @field_validator("roles", mode="before")
    @classmethod
    def _role_names(cls, value: Any) -> Any:
        return sorted(getattr(role, "name", role) for role in value)


class PasswordReset(Request):
    old_password: Annotated[str, StringConstraints(max_length=128)] | None = None
    new_password: Password


class PermissionIn(Request):
    object: Annotated[str, StringConstraints(pattern=r"^(\*|[a-z][a-z0-9-]{0,63})$")]
    action: Annotated[str, StringConstraints(pattern=r"^(\*|read|write)$")]


class RoleCreate(Request):
    name: Name
    description: Bio = ""
    permissions: list[PermissionIn] = Field(default_factory=list, max_length=1000)


class RoleOut(Row):
    name: str
    description: str
    permissions: list[dict[str, str]] = []

    @field_validator("permissions", mode="before")
    @classmethod
    def _grants(cls, value: Any) -> Any:
        return [p if isinstance(p, dict) else {"object": p.object, "action": p.action} for p in value]


# --- personal access tokens ---

Scope = Annotated[str, StringConstraints(pattern=r"^(cluster|job|application|user)$")]


class TokenCreate(Request):
    name: Name
    bio: Bio = ""
    scopes: list[Scope] = Field(min_length=1, max_length=4)
    expired_at: dt.datetime
    user_id: RowID | None = Field(default=None, description="owner; root only, default the caller")


class TokenUpdate(Request):
    bio: Bio | None = None
    state: Annotated[str, StringConstraints(pattern=STATES)] | None = None
    scopes: list[Scope] | None = Field(default=None, min_length=1, max_length=4)
    expired_at: dt.datetime | None = None


class TokenOut(Row):
    name: str
    bio: str
    token_prefix: str
    scopes: list[Any]
    state: str
    expired_at: dt.datetime
    last_used_at: dt.datetime | None
    user_id: int


class TokenCreated(TokenOut):
    """Returned once, at creation: ``token`` is the secret; only its digest is stored."""

    token: str


# --- configs (Dragonfly's name/value settings) ---


class ConfigCreate(Request):
    name: Name
    value: Annotated[str, StringConstraints(max_length=64 * 1024)] = ""
    bio: Bio = ""


class ConfigUpdate(Request):
    value: Annotated[str, StringConstraints(max_length=64 * 1024)] | None = None
    bio: Bio | None = None


class ConfigOut(Row):
    name: str
    value: str
    bio: str


# --- audit ---


class AuditOut(Response):
    id: int
    actor_type: str
    actor_name: str
    event_type: str
    operation: str
    path: str
    status_code: int
    state: str
    operated_at: dt.datetime
    detail: str


class AuditFilter(Filter):
    actor_type: Annotated[str, StringConstraints(pattern=r"^(USER|PAT|UNKNOWN)$")] | None = None
    actor_name: Name | None = None
    operation: Annotated[str, StringConstraints(pattern=r"^(POST|PUT|PATCH|DELETE)$")] | None = None
    state: Annotated[str, StringConstraints(pattern=r"^(SUCCESS|FAILURE)$")] | None = None
