"""Passwords, session tokens, personal access tokens, roles and permissions (``docs/manager.md#authentication``).

- Passwords: argon2id (argon2-cffi's defaults), verified off the event loop.
- Tokens: 32 random bytes, URL-safe, with a prefix that says what they are (``dfs_`` session, ``dfp_`` personal
  access token). The database keeps only their SHA-256: a token is a high-entropy secret, so a fast hash is enough
  and a stolen database yields no usable token.
- Permissions: a role grants ``read`` or ``write`` (``*`` both) on an object, the API resource name (``clusters``,
  ``schedulers``, ``users``…; ``*`` every one). root: ``*``/``*``; guest: ``*``/``read``.
- A personal access token carries scopes; each API object belongs to one scope (``cluster``, ``job``,
  ``application``, ``user``) and a token reaches only objects of its scopes, within its owner's permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import secrets
import weakref
from collections.abc import Iterable
from typing import NamedTuple

from dragonfly.manager.ratelimit import SlidingWindow

SESSION_PREFIX = "dfs_"
PAT_PREFIX = "dfp_"

ROLE_ROOT = "root"
ROLE_GUEST = "guest"
ACTION_READ = "read"
ACTION_WRITE = "write"
ACTIONS = (ACTION_READ, ACTION_WRITE, "*")

#: Scope of a personal access token → what it reaches. Dragonfly's scopes are ``job`` and ``cluster``.
SCOPES = ("cluster", "job", "application", "user")
#: API object → the token scope that reaches it; objects not listed need the ``user`` scope.
OBJECT_SCOPES: dict[str, str] = {
    "clusters": "cluster",
    "scheduler-clusters": "cluster",
    "schedulers": "cluster",
    "seed-peer-clusters": "cluster",
    "seed-peers": "cluster",
    "jobs": "job",
    "applications": "application",
    "configs": "cluster",
}


def register_object(name: str, scope: str) -> None:
    """Let an extension (preheat's ``jobs``…) declare the token scope of a new API object."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    OBJECT_SCOPES[name] = scope


def scope_of(obj: str) -> str:
    """Return the token scope that reaches ``obj``."""
    return OBJECT_SCOPES.get(obj, "user")


_hasher = None


def _password_hasher() -> object:
    global _hasher
    if _hasher is None:
        from argon2 import PasswordHasher

        _hasher = PasswordHasher()
    return _hasher


def hash_password_sync(password: str) -> str:
    """Return the argon2id hash of ``password`` (blocks for tens of milliseconds)."""
    from argon2 import PasswordHasher

    hasher = _password_hasher()
    assert isinstance(hasher, PasswordHasher)
    return hasher.hash(password)


def verify_password_sync(encoded: str, password: str) -> bool:
    """Return whether ``password`` matches ``encoded``."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    hasher = _password_hasher()
    assert isinstance(hasher, PasswordHasher)
    try:
        return hasher.verify(encoded, password)
    except (VerificationError, InvalidHashError):
        return False


#: Password hashes computed at once. Each argon2id costs 64 MiB and a core for tens of milliseconds and sign-in is
#: open to anyone: a flood of sign-ins queues here instead of taking the process's memory (and every thread of the
#: loop's default executor, which other blocking work shares).
KDF_CONCURRENCY = 2
# One per event loop: a semaphore that once made a task wait belongs to that loop.
_kdf_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _kdf() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _kdf_slots.get(loop)
    if slots is None:
        slots = _kdf_slots[loop] = asyncio.Semaphore(KDF_CONCURRENCY)
    return slots


async def hash_password(password: str) -> str:
    """Hash off the event loop."""
    async with _kdf():
        return await asyncio.to_thread(hash_password_sync, password)


#: Verified against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH: str | None = None


async def verify_password(encoded: str | None, password: str) -> bool:
    """Verify off the event loop; ``encoded`` None (no such user) still spends the time of one verification."""
    global _DUMMY_HASH
    if encoded is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = await hash_password(secrets.token_urlsafe(16))
        async with _kdf():
            await asyncio.to_thread(verify_password_sync, _DUMMY_HASH, password)
        return False
    async with _kdf():
        return await asyncio.to_thread(verify_password_sync, encoded, password)


def new_token(prefix: str) -> str:
    """Return a fresh random token with its kind prefix."""
    return prefix + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Return the SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def generate_password() -> str:
    """Return a random password for the root user (printed once)."""
    return secrets.token_urlsafe(15)


def same(a: str, b: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


def permits(grants: Iterable[tuple[str, str]], obj: str, action: str) -> bool:
    """Return whether (object, action) ``grants`` allow ``action`` on ``obj``; write implies read."""
    for g_obj, g_action in grants:
        if g_obj not in ("*", obj):
            continue
        if g_action in ("*", action) or (g_action == ACTION_WRITE and action == ACTION_READ):
            return True
    return False


class SigninLimiter:
    """Failed sign-ins in a sliding window, per client address and user name and per client address alone.

    The pair limit stops guessing one user's password; the address limit stops one client from trying a few
    passwords on every user name (spraying), which the pair limit alone would let through. An attempt begins only
    while its failures and the attempts being verified stay under both limits, so concurrent guesses cannot all pass
    the check before the first failure is recorded; the others wait (up to ``patience`` seconds) for attempts to end,
    so a burst of right passwords is verified in turn, not refused.
    """

    __slots__ = ("_ended", "_failures", "_waiting", "max_address_failures", "max_failures", "patience")

    def __init__(
        self, max_failures: int, window: float, max_address_failures: int = 20, patience: float = 10.0
    ) -> None:
        self.max_failures = max_failures
        self.max_address_failures = max_address_failures
        self.patience = patience
        self._failures = SlidingWindow(window)
        # Set when an attempt of the client ends, then dropped: only the client's waiting attempts wake. Per event
        # loop too, as an Event belongs to the loop it waited on. Ends pop what waits create, so this stays as small
        # as the number of clients with attempts waiting.
        self._ended: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Event] = {}
        # Attempts waiting for room, per counted client. Each end makes all of its client's waiting attempts check
        # again: at most max_address_failures of them wait, so an end costs that many checks at most, however many
        # requests a client holds open (a valid account's successes are not counted, so their ends never stop).
        self._waiting: dict[str, int] = {}

    async def begin(self, address: str, name: str) -> SigninRefusal | None:
        """Begin an attempt of ``name`` from ``address`` (``end`` ends it), or return why and for how long not."""
        limits = ((_pair_key(address, name), self.max_failures), (_address_key(address), self.max_address_failures))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patience
        while True:
            wait = max(self._failures.wait(key, limit) for key, limit in limits)
            if wait > 0:
                return SigninRefusal(wait, verifying=False)
            if all(self._failures.room(key, limit) > 0 for key, limit in limits):
                for key, _limit in limits:
                    self._failures.begin(key)
                return None
            left = deadline - loop.time()
            counted = _counted(address)
            waiting = self._waiting.get(counted, 0)
            if left <= 0 or waiting >= self.max_address_failures:
                return SigninRefusal(1.0, verifying=True)
            self._waiting[counted] = waiting + 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ended.setdefault((loop, counted), asyncio.Event()).wait(), left)
            finally:
                waiting = self._waiting[counted] - 1
                if waiting:
                    self._waiting[counted] = waiting
                else:
                    del self._waiting[counted]

    def end(self, address: str, name: str, *, failed: bool | None) -> None:
        """End an attempt that ``begin`` started: record a failure (True), or forget the failures of ``name`` from
        ``address`` after a success (False); None (an error, the client gone) records nothing.

        After a success the address's own count stays: one valid account must not reset an attacker's budget for the
        others.
        """
        pair, per_address = _pair_key(address, name), _address_key(address)
        self._failures.end(pair)
        self._failures.end(per_address)
        if failed:
            self._failures.add(pair, self.max_failures)
            self._failures.add(per_address, self.max_address_failures)
        elif failed is not None:
            self._failures.forget(pair)
        # Wake the client's attempts waiting for room; they check again.
        event = self._ended.pop((asyncio.get_running_loop(), _counted(address)), None)
        if event is not None:
            event.set()


class SigninRefusal(NamedTuple):
    """Why a sign-in may not begin: ``seconds`` to wait; ``verifying``: attempts being verified, not failures, fill
    the limit (they did not end within the limiter's patience)."""

    seconds: float
    verifying: bool


def _counted(address: str) -> str:
    """Return what a client address is counted as: an IPv6 address by its /64, which one subscriber or LAN usually
    holds whole (2**64 addresses to spray from, as an IPv4 client behind NAT has one); an IPv4-mapped one as IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _pair_key(address: str, name: str) -> str:
    return f"p\x00{_counted(address)}\x00{name}"


def _address_key(address: str) -> str:
    return f"a\x00{_counted(address)}"
